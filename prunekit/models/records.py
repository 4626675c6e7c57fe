"""Typed records of a pruning run: one :class:`LayerRecord` per layer problem, one :class:`RunReport` per run.

Every number the pipeline reports has one name here; readers (the CLI summary, the plot, benchmarks) read these
fields instead of guessing among spellings.  ``to_dict``/``from_dict`` give the JSON form (``report.json``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional


@dataclass(frozen=True)
class LayerRecord:
    """The outcome of one layer problem (a linear module, or a coupled group stated on its downstream module).

    Attributes
    ----------
    block, module, group : where (``group`` is the CoupledGroup name for channels, else None).
    formulation, backend, status : what solved it; ``status`` is the Solution's, or "skipped" (nothing pruned).
    shape : (out, in) of the downstream weight.
    target_sparsity, sparsity : asked for / achieved fraction of pruned weights of that module.
    objective : 1/2 ||W_hat X - W X||_F^2 on the statistics the method collected (``statistics``).
    relative_error : objective / (1/2 ||W X||_F^2).
    statistics : what ``objective`` is measured on: "gram" (the full G = X X^T), "diagonal" (only diag G was
        collected -- Wanda, FLAP -- so the objective is that of the diagonal model G := diag(||X_j||^2)) or
        "none" (no calibration -- magnitude -- so it is 1/2 ||W_hat - W||_F^2).
    kept_units, num_units : for coupled groups, units kept of units in all.
    time_s : solver wall time.
    """

    block: int
    module: str
    group: Optional[str] = None
    formulation: Optional[str] = None
    backend: Optional[str] = None
    status: str = "skipped"
    shape: tuple[int, int] = (0, 0)
    target_sparsity: float = 0.0
    sparsity: float = 0.0
    objective: float = 0.0
    relative_error: float = 0.0
    mask_violations: float = 0.0
    kept_units: Optional[int] = None
    num_units: Optional[int] = None
    time_s: float = 0.0
    statistics: str = "gram"

    @property
    def key(self) -> str:
        """The allocation key: the group name for channels, the module name otherwise."""
        return self.group or self.module

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["shape"] = list(self.shape)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "LayerRecord":
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in names}
        values["shape"] = tuple(values.get("shape", (0, 0)))
        return cls(**values)


@dataclass
class RunReport:
    """What one ``prune`` run did: the recipe, the model, parameters, times, per-layer records, perplexities and
    zero-shot task scores (``zero_shot_*``: :func:`prunekit.zero_shot.evaluate_tasks` dicts) before and after."""

    recipe: dict[str, Any]
    model: str = ""
    family: str = ""
    mode: str = ""
    device: str = "cpu"
    calibration_shape: tuple[int, int] = (0, 0)
    params_before: int = 0
    params_after: int = 0
    nonzero_params_before: int = 0
    nonzero_params_after: int = 0
    time_prune_s: float = 0.0
    time_total_s: float = 0.0
    resumed_from_block: int = 0
    output_format: Optional[str] = None
    output_dtype: Optional[str] = None
    ppl_before: Optional[dict[str, Any]] = None
    ppl_after: Optional[dict[str, Any]] = None
    zero_shot_before: Optional[dict[str, Any]] = None
    zero_shot_after: Optional[dict[str, Any]] = None
    layers: list[LayerRecord] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    versions: dict[str, str] = field(default_factory=dict)
    refits: list = field(default_factory=list)  # block_refit.RefitRecord per block (block_refit runs only)

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["calibration_shape"] = list(self.calibration_shape)
        out["layers"] = [r.to_dict() for r in self.layers]
        out["refits"] = [r.to_dict() for r in self.refits]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RunReport":
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in names}
        values["layers"] = [LayerRecord.from_dict(r) for r in values.get("layers", [])]
        if values.get("refits"):
            from .block_refit import RefitRecord

            values["refits"] = [RefitRecord.from_dict(r) for r in values["refits"]]
        values["calibration_shape"] = tuple(values.get("calibration_shape", (0, 0)))
        return cls(**values)


def versions() -> dict[str, str]:
    """Library versions recorded with every plan and report."""
    import platform

    import torch

    from .. import __version__

    out = {"prunekit": __version__, "torch": torch.__version__, "python": platform.python_version()}
    try:
        import transformers

        out["transformers"] = transformers.__version__
    except ImportError:  # pragma: no cover
        pass
    return out


__all__ = ["LayerRecord", "RunReport", "versions"]
