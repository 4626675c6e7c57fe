"""``prunekit prune``: prune a Hugging Face causal LM layer by layer and save it with a report and a plot.

.. code-block:: console

    prunekit prune --model smollm2-135m --method fasp --structure channels --sparsity 0.3 \\
        --calib ../shared/data/wikitext-2-raw/wiki.valid.raw --nsamples 16 --seqlen 256 --eval --out OUT

Writes into ``--out``: the pruned model (``save_pruned``; reload with ``prunekit.load_pruned``), its plan,
``report.json`` (perplexity before/after with seqlen and windows when ``--eval``, parameters before/after,
time, per-layer sparsity and objective, the recipe, library versions) and ``plot.png`` (per-layer sparsity and
relative reconstruction error).  Flags override the fields of ``--recipe FILE`` (JSON or YAML).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from .eval import _DTYPES, add_data_args, default_data_dir, load_model_and_tokenizer

# flag -> Recipe field (flags default to None so that an explicit flag overrides the recipe file)
_RECIPE_FLAGS = {"method": "method", "structure": "structure", "sparsity": "sparsity", "allocation": "allocation",
                 "temperature": "temperature", "attention": "attention", "backend": "backend",
                 "round_to": "round_to", "damping": "damping", "dtype": "dtype"}
_CALIB_FLAGS = {"nsamples": "nsamples", "seqlen": "seqlen", "seed": "seed", "mode": "mode"}
METHODS = ("magnitude", "wanda", "sparsegpt", "mrp", "fista", "spap", "fasp", "flap", "admm")


def build_recipe(args: argparse.Namespace, data_dir=None):
    """The recipe: ``--recipe`` file (or defaults) with every explicitly given flag applied on top."""
    from ..models.recipe import Recipe

    fields = Recipe.load(args.recipe).to_dict() if args.recipe else {}
    calib = dict(fields.get("calibration", {}))
    for flag, name in _RECIPE_FLAGS.items():
        if getattr(args, flag, None) is not None:
            fields[name] = getattr(args, flag)
    for flag, name in _CALIB_FLAGS.items():
        if getattr(args, flag, None) is not None:
            calib[name] = getattr(args, flag)
    if args.calib is not None or "source" not in calib:
        calib["source"] = _calibration_source(args.calib or "auto", data_dir)
    fields["calibration"] = calib
    return Recipe.from_dict(fields)


def _calibration_source(source: str, data_dir) -> str:
    """``auto``: WikiText-2 when its local file is found, else text sampled from the model (offline default)."""
    if source != "auto":
        return source
    from ..data import find_local_wikitext

    return "wikitext2" if find_local_wikitext("validation", data_dir)[0] is not None else "self"


def plot_layers(layers: list[dict], path: Path, title: str) -> Path:
    """PNG with per-layer sparsity (top) and relative reconstruction error (bottom, log scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{row.get('block', '')} " + ".".join((row.get("group") or row["module"]).split(".")[-2:])
              for row in layers]
    xs = list(range(len(layers)))
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(max(6.0, 0.18 * len(xs) + 2), 6), sharex=True)
    ax1.bar(xs, [row.get("sparsity", 0.0) for row in layers], color="tab:blue")
    ax1.set_ylabel("sparsity")
    ax1.set_title(title)
    errors = [max(float(row.get("relative_error", 0.0) or 0.0), 1e-12) for row in layers]
    ax2.bar(xs, errors, color="tab:red")
    ax2.set_yscale("log")
    ax2.set_ylabel("relative error")
    ax2.set_xlabel("layer problem (block order)")
    if len(xs) <= 40:
        ax2.set_xticks(xs)
        ax2.set_xticklabels(labels, rotation=90, fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def run(args: argparse.Namespace) -> int:
    import torch

    from .. import api
    from ..data import calibration_windows, evaluation_tokens
    from ..evaluate import perplexity
    from ..errors import ModelError
    from ..models.saving import save_pruned

    start = time.perf_counter()
    data_dir = args.data_dir or default_data_dir()
    recipe = build_recipe(args, data_dir)
    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise ModelError(f"{out} already exists. Fix: choose another --out or pass --overwrite.")
    torch.manual_seed(recipe.calibration.seed)
    model, tokenizer = load_model_and_tokenizer(args.model, args.model_dtype, "cpu")
    c = recipe.calibration
    tokens = calibration_windows(tokenizer, c.source, c.nsamples, c.seqlen, c.seed, data_dir=data_dir, model=model)
    report: dict = {"model": str(args.model), "calibration": {"source": c.source, "shape": list(tokens.shape)}}
    eval_tokens = None
    if args.eval:
        eval_tokens = evaluation_tokens(tokenizer, args.eval_data, data_dir)
        eval_seqlen = args.eval_seqlen or c.seqlen
        report["ppl_before"] = perplexity(model, eval_tokens, eval_seqlen, args.eval_windows, device=args.device)
        print(f"perplexity before: {report['ppl_before']['ppl']:.3f} "
              f"(seqlen {eval_seqlen}, {report['ppl_before']['windows']} windows)", flush=True)
    result = api.prune(model, recipe, tokens, device=args.device, progress=not args.no_progress)
    report.update(result.report)
    if eval_tokens is not None:
        report["ppl_after"] = perplexity(model, eval_tokens, eval_seqlen, args.eval_windows, device=args.device)
        print(f"perplexity after:  {report['ppl_after']['ppl']:.3f} "
              f"(seqlen {eval_seqlen}, {report['ppl_after']['windows']} windows)", flush=True)
    report["time_total_s"] = time.perf_counter() - start
    folder = save_pruned(model, tokenizer, out, plan=result.plan, report=report, overwrite=args.overwrite)
    (folder / "report.json").write_text(json.dumps(report, indent=2, default=str))
    plot_layers(report["layers"], folder / "plot.png", f"{args.model}: {recipe.method} {recipe.structure} "
                f"{recipe.sparsity}")
    print(f"parameters: {report['params_before']:,} -> {report['params_after']:,} "
          f"(nonzero {report['nonzero_params_before']:,} -> {report['nonzero_params_after']:,}); "
          f"time {report['time_total_s']:.1f}s; saved to {folder}")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("prune", help="prune a Hugging Face causal LM and save it with a report",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="HF folder, pruned folder or built-in name (e.g. smollm2-135m)")
    p.add_argument("--method", choices=METHODS, default=None)
    p.add_argument("--structure", default=None, help="unstructured | 2:4 | 4:8 | N:M | channels")
    p.add_argument("--sparsity", type=float, default=None)
    p.add_argument("--calib", default=None,
                   help="wikitext2 | a text file | self | auto (default: wikitext2 when found locally, else self)")
    p.add_argument("--nsamples", type=int, default=None, help="calibration windows (default 128)")
    p.add_argument("--seqlen", type=int, default=None, help="calibration window length (default 2048)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--mode", default=None, choices=("auto", "propagated", "sequential", "dense", "dense_sequential"))
    p.add_argument("--recipe", default=None, help="recipe file (JSON or YAML); flags override its fields")
    p.add_argument("--allocation", default=None, choices=("uniform", "softmax", "global_threshold"))
    p.add_argument("--temperature", type=float, default=None)
    p.add_argument("--attention", default=None, choices=("none", "heads", "vo_channels"))
    p.add_argument("--round-to", dest="round_to", type=int, default=None, help="kept widths: multiples of this")
    p.add_argument("--backend", default=None, help="solver backend (auto, torch, ...)")
    p.add_argument("--damping", type=float, default=None)
    p.add_argument("--dtype", default=None, choices=_DTYPES, help="compute dtype of the block copies (float32)")
    p.add_argument("--model-dtype", choices=_DTYPES, default="float32", help="dtype to load the model in")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--eval", action="store_true", help="perplexity before and after (WikiText-2 test by default)")
    p.add_argument("--eval-data", default="wikitext2")
    p.add_argument("--eval-windows", type=int, default=None, help="evaluate the first K windows (default all)")
    p.add_argument("--eval-seqlen", type=int, default=None, help="default: the calibration seqlen")
    p.add_argument("--no-progress", action="store_true")
    add_data_args(p)
    p.set_defaults(func=run)
