"""``prunekit prune``: prune a causal LM checkpoint block by block into an output folder that stock loaders read.

.. code-block:: console

    prunekit prune --model smollm2-135m --method fasp --structure channels --sparsity 0.3 \\
        --calib wikitext2 --nsamples 16 --seqlen 256 --eval --out OUT
    prunekit prune --model ./llama --method my_pkg.my_mod:MyFormulation --structure channels --sparsity 0.3 --out OUT

``--method`` takes a built-in method name or ``package.module:Class`` / ``file.py:Class`` -- any Formulation with a
``sparsity`` field and a registered torch solver.  The model is streamed from its safetensors shards (hub id, local
folder, GGUF or built-in name), so host memory stays O(one block); each finished block is committed, and
``--resume`` continues a killed run.  ``OUT`` appears only when the run is complete: the model (safetensors in the
checkpoint's dtype, a config stock ``from_pretrained`` reads), ``report.json`` (recipe, per-layer records,
parameters, time, perplexity before/after with ``--eval``), ``plan/plan.json`` (kept units, provenance) and
``plot.png``.  Flags override the fields of ``--recipe FILE`` (JSON or YAML).
"""

from __future__ import annotations

import argparse

from .eval import add_data_args, default_data_dir

# flag -> Recipe field (flags default to None so that an explicit flag overrides the recipe file)
_RECIPE_FLAGS = ("method", "structure", "sparsity", "allocation", "temperature", "attention", "backend", "round_to",
                 "damping", "dtype")
_CALIB_FLAGS = ("nsamples", "seqlen", "seed", "mode")


def build_recipe(args: argparse.Namespace, data_dir=None):
    """The recipe: ``--recipe`` file (or defaults) with every explicitly given flag applied on top."""
    from ..models.recipe import Recipe

    fields = Recipe.load(args.recipe).to_dict() if args.recipe else {}
    calib = dict(fields.get("calibration", {}))
    for name in _RECIPE_FLAGS:
        if getattr(args, name, None) is not None:
            fields[name] = getattr(args, name)
    if args.structure is not None and args.sparsity is None and args.recipe:
        fields.pop("sparsity", None)  # a new structure re-derives the sparsity unless one is given
    for name in _CALIB_FLAGS:
        if getattr(args, name, None) is not None:
            calib[name] = getattr(args, name)
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


def run(args: argparse.Namespace) -> int:
    from ..models.pipeline import EvalSettings, prune_checkpoint

    data_dir = args.data_dir or default_data_dir()
    recipe = build_recipe(args, data_dir)
    evaluate = EvalSettings(args.eval_data, args.eval_seqlen, args.eval_windows) if args.eval else None
    report = prune_checkpoint(args.model, recipe, args.out, overwrite=args.overwrite, resume=args.resume,
                              device=args.device, progress=not args.no_progress, data_dir=data_dir,
                              evaluate=evaluate)
    print(f"parameters: {report.params_before:,} -> {report.params_after:,}; format {report.output_format} "
          f"({report.output_dtype}); prune {report.time_prune_s:.1f}s, total {report.time_total_s:.1f}s; "
          f"saved to {args.out}")
    return 0


def register(subparsers) -> None:
    from ..models.methods import method_names

    p = subparsers.add_parser("prune", help="prune a causal LM checkpoint block by block into a loadable folder",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="hub id, HF folder, .gguf file or built-in name (smollm2-135m)")
    p.add_argument("--method", default=None,
                   help=f"built-in: {', '.join(method_names())}; or package.module:Class / file.py:Class")
    p.add_argument("--structure", default=None, help="unstructured | 2:4 | 4:8 | N:M | channels")
    p.add_argument("--sparsity", type=float, default=None, help="fraction pruned (N:M fixes it to N/M)")
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
    p.add_argument("--dtype", default=None, choices=("float32", "float64", "bfloat16", "float16"),
                   help="compute dtype of the block copies (float32); the output keeps the checkpoint's dtype")
    p.add_argument("--out", required=True, help="output folder (appears only when the run is complete)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an earlier prunekit output at --out, or discard its unfinished run")
    p.add_argument("--resume", action="store_true", help="continue an unfinished run at --out (same arguments)")
    p.add_argument("--eval", action="store_true", help="perplexity before and after (WikiText-2 test by default)")
    p.add_argument("--eval-data", default="wikitext2")
    p.add_argument("--eval-windows", type=int, default=None, help="evaluate the first K windows (default all)")
    p.add_argument("--eval-seqlen", type=int, default=None, help="default: the calibration seqlen")
    p.add_argument("--no-progress", action="store_true")
    add_data_args(p)
    p.set_defaults(func=run)
