"""The per-layer plot of a run: sparsity (top) and relative reconstruction error (bottom, log scale)."""

from __future__ import annotations

from pathlib import Path


def plot_layers(records, path: Path, title: str) -> Path:
    """PNG of ``records`` (:class:`~prunekit.models.records.LayerRecord`, in block order) at ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r.block} " + ".".join((r.group or r.module).split(".")[-2:]) for r in records]
    xs = list(range(len(records)))
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(max(6.0, 0.18 * len(xs) + 2), 6), sharex=True)
    ax1.bar(xs, [r.sparsity for r in records], color="tab:blue")
    ax1.set_ylabel("sparsity")
    ax1.set_title(title)
    ax2.bar(xs, [max(float(r.relative_error or 0.0), 1e-12) for r in records], color="tab:red")
    ax2.set_yscale("log")
    ax2.set_ylabel("relative error")
    ax2.set_xlabel("layer problem (block order)")
    if len(xs) <= 40:
        ax2.set_xticks(xs)
        ax2.set_xticklabels(labels, rotation=90, fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


__all__ = ["plot_layers"]
