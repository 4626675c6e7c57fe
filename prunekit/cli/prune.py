"""``prunekit prune``: prune a causal LM checkpoint block by block into an output folder that stock loaders read.

.. code-block:: console

    prunekit prune --model smollm2-135m --method fasp --structure channels --sparsity 0.3 \\
        --calib wikitext2 --nsamples 16 --seqlen 256 --eval --out OUT
    prunekit prune --model ./llama --method my_pkg.my_mod:MyFormulation --structure channels --sparsity 0.3 --out OUT

``--method`` takes a built-in method name or ``package.module:Class`` / ``file.py:Class`` -- any Formulation with a
``sparsity`` field and a registered torch solver.  The model is streamed from its safetensors shards (hub id, local
folder, GGUF or built-in name), so host memory stays O(one block); each finished block is committed, and
``--resume`` continues a killed run.  ``torchrun --nproc_per_node N -m prunekit prune ...`` (any torch.distributed
launcher, multi-node included) splits the calibration windows and the layer problems of each block across the N
processes (``--device cuda``: one GPU each) and gives the single-process result; rank 0 writes.  ``OUT`` appears
only when the run is complete: the model (safetensors in the checkpoint's dtype, a config stock ``from_pretrained``
reads), ``report.json`` (recipe, per-layer records, parameters, time, perplexity before/after with ``--eval``),
``plan/plan.json`` (kept units, provenance) and ``plot.png``.  Flags override the fields of ``--recipe FILE`` (JSON or
YAML).

Every flag is checked before the model is read: a value of the wrong type or out of range (``--nsamples 0``,
``--sparsity 1.5``) is a one-line argparse error naming the flag, the recipe is validated as a whole, a
``--round-to`` that would prune nothing from the model's widths (read from its ``config.json``) is refused, and a
data path that does not exist is reported; all with exit status 2.  At the end a summary is printed: per block
the achieved sparsity, the mean relative error and the solver time, then the totals and the perplexities.
"""

from __future__ import annotations

import argparse
import json
import math
import re
from pathlib import Path

from .eval import add_data_args, limit_arg

# flag -> Recipe field (flags default to None so that an explicit flag overrides the recipe file)
_RECIPE_FLAGS = ("method", "structure", "sparsity", "allocation", "temperature", "owl_m", "owl_lambda", "attention",
                 "backend", "round_to", "damping", "dtype", "targets", "ignore", "unrouted")
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
    refit = _block_refit(args, fields.get("block_refit", "auto"), fields.get("method"))
    if refit is not None:
        fields["block_refit"] = refit
    return Recipe.from_dict(fields)


def _block_refit(args: argparse.Namespace, current, method=None):
    """``--block-refit auto|on|off`` with ``--block-refit-epochs`` / ``-lr`` / ``-scope`` / ``-targets`` on top
    (None: no flag).  Tuning flags over ``auto`` start from the method's own settings (``fasp_refit``'s
    ``{scope: block, ...}``), over a recipe file's mapping from that mapping."""
    choice = getattr(args, "block_refit", None)
    tuned = {k: v for k, v in (("epochs", getattr(args, "block_refit_epochs", None)),
                               ("lr", getattr(args, "block_refit_lr", None)),
                               ("scope", getattr(args, "block_refit_scope", None)),
                               ("targets", getattr(args, "block_refit_targets", None))) if v is not None}
    if choice is None and not tuned:
        return None
    if choice == "off":
        if tuned:
            raise SystemExit("prunekit prune: --block-refit off contradicts --block-refit-epochs / -lr / -scope / "
                             "-targets. Fix: drop one of them.")
        return False
    if choice == "auto" and not tuned:
        return "auto"
    base = current if isinstance(current, dict) else _method_refit_settings(method) if current == "auto" else {}
    return {**base, **tuned}


def _method_refit_settings(method) -> dict:
    """The block-refit fields a method's ``block_refit="auto"`` stands for (``models.block_refit.method_block_refit``;
    {} when off or for a bad name: the recipe reports a bad name itself)."""
    from ..errors import FormulationError
    from ..models.block_refit import method_block_refit
    from ..models.methods import resolve_method
    from ..models.recipe import Recipe

    try:
        settings = method_block_refit(resolve_method(method if method is not None else Recipe.method))
    except FormulationError:
        return {}
    return settings.to_dict() if settings is not None else {}


def _calibration_source(source: str, data_dir) -> str:
    """``auto``: WikiText-2 when its local file is found, else text sampled from the model (offline default)."""
    if source != "auto":
        return source
    from ..data import find_local_wikitext

    return "wikitext2" if find_local_wikitext("validation", data_dir)[0] is not None else "self"


# ---------------------------------------------------------------------------------------------- flag types
def _number(text: str, kind, what: str):
    try:
        value = kind(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """argparse type: an int >= 1."""
    value = _number(text, int, "a positive integer")
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def round_to_arg(text: str):
    """argparse type: 'auto' or an int >= 1."""
    return "auto" if text.strip() == "auto" else positive_int(text)


def patterns_arg(text: str) -> list[str]:
    """argparse type: comma-separated module patterns (a comma inside a ``re:`` braces/brackets is kept)."""
    from ..models.targets import split_patterns

    return split_patterns(text)


def fraction(text: str) -> float:
    """argparse type: a sparsity in [0, 1)."""
    value = _number(text, float, "a fraction in [0, 1), e.g. 0.5")
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"expected a fraction in [0, 1) (the share of weights pruned), got {text!r}")
    return value


def non_negative(text: str) -> float:
    """argparse type: a finite float >= 0."""
    value = _number(text, float, "a finite number >= 0")
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text!r}")
    return value


def positive(text: str) -> float:
    """argparse type: a finite float > 0."""
    value = _number(text, float, "a finite number > 0")
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text!r}")
    return value


# ---------------------------------------------------------------------------------------------- checks
def _looks_like_path(source: str) -> bool:
    """A file path rather than a data set name: an explicit path prefix or a data-file suffix ("allenai/c4",
    "hf:owner/name" and "wikitext2" are names)."""
    if re.match(r"^[A-Za-z][\w.+-]+:", source):  # a scheme such as hf: (a Windows drive letter has one letter)
        return False
    return source.startswith(("/", "./", "../", ".\\")) or \
        Path(source).suffix.lower() in (".txt", ".json", ".jsonl", ".parquet", ".csv", ".gz")


def check_data_path(source, flag: str) -> None:
    """A data flag that names a file must name an existing file (checked before the model is read)."""
    from ..errors import DataError

    if not isinstance(source, str) or not _looks_like_path(source):
        return
    path = Path(source)
    if path.is_dir() and not _looks_like_path(path.name):
        return  # a dataset folder: the data module decides
    if not path.is_file():
        raise DataError(f"{flag} {source!r}: no such file. Fix: pass an existing UTF-8 text file, or a data set "
                        f"name such as 'wikitext2'.")
    if path.suffix.lower() in (".txt", ".json", ".jsonl"):
        _check_text_start(path, flag)


def _check_text_start(path: Path, flag: str, size: int = 1 << 16) -> None:
    """The file is readable, not empty, and its first ``size`` bytes are UTF-8 (the loader reads the rest)."""
    import codecs

    from ..errors import DataError

    with open(path, "rb") as fh:  # PermissionError: the CLI reports it as one line
        head = fh.read(size)
    if not head.strip():
        raise DataError(f"{flag} {str(path)!r} is empty. Fix: pass a file with text in it.")
    try:
        codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
    except UnicodeDecodeError as exc:
        raise DataError(f"{flag} {str(path)!r} is not UTF-8 text (byte {head[exc.start]:#04x} at offset "
                        f"{exc.start}). Fix: convert it to UTF-8 (e.g. iconv -t utf-8) and pass the converted "
                        f"file.") from None


def model_config(model: str):
    """The model's ``config.json`` as a dict when ``model`` is a local folder holding one, else None (cheap)."""
    path = Path(str(model))
    config = path / "config.json"
    if not config.is_file():
        return None
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None  # the loader reports a damaged config with its own error
    return data if isinstance(data, dict) else None


def preflight(args: argparse.Namespace, recipe) -> None:
    """Checks that need no model weights: data paths, and the recipe against the model's config.json widths."""
    from ..distributed import is_main_process
    from ..models.recipe import check_recipe_fits

    if is_main_process():  # under torchrun rank 0 alone reads the calibration and evaluation data
        check_data_path(recipe.calibration.source, "calibration source")
        if args.eval:
            check_data_path(args.eval_data, "--eval-data")
    config = model_config(args.model)
    if config is not None:
        check_recipe_fits(recipe, config)


# ---------------------------------------------------------------------------------------------- summary
def summary_lines(report) -> list[str]:
    """The end-of-run summary of a :class:`~prunekit.models.records.RunReport`: one row per block (achieved
    sparsity weighted by weight count, mean relative error over its layer problems, solver time), then totals
    (parameters before -> after, prune and total time) and the perplexities when evaluated."""
    blocks: dict[int, list] = {}
    for record in report.layers:
        blocks.setdefault(record.block, []).append(record)
    lines = []
    if blocks:
        lines.append(f"{'block':>5}  {'layers':>6}  {'sparsity':>8}  {'rel.error':>9}  {'time':>8}")
        for index in sorted(blocks):
            records = blocks[index]
            sizes = [max(1, r.shape[0] * r.shape[1]) for r in records]
            sparsity = sum(r.sparsity * n for r, n in zip(records, sizes)) / sum(sizes)
            errors = [r.relative_error for r in records if r.status != "skipped" and math.isfinite(r.relative_error)]
            error = f"{sum(errors) / len(errors):9.4g}" if errors else f"{'-':>9}"
            lines.append(f"{index:>5}  {len(records):>6}  {sparsity:>8.3f}  {error}  "
                         f"{sum(r.time_s for r in records):>7.2f}s")
    before, after = report.params_before, report.params_after
    change = f" ({(after - before) / before:+.1%})" if before else ""
    resumed = f"; resumed at block {report.resumed_from_block}" if report.resumed_from_block else ""
    lines.append(f"parameters: {before:,} -> {after:,}{change}; format {report.output_format} "
                 f"({report.output_dtype}); prune {_seconds(report.time_prune_s)}, total "
                 f"{_seconds(report.time_total_s)}"
                 f"{resumed}")
    if report.ppl_before or report.ppl_after:
        def ppl(result):
            return f"{result['ppl']:.3f}" if result and "ppl" in result else "-"

        shape = report.ppl_after or report.ppl_before
        lines.append(f"perplexity: {ppl(report.ppl_before)} -> {ppl(report.ppl_after)} "
                     f"(seqlen {shape.get('seqlen')}, {shape.get('windows')} windows)")
    return lines


def _seconds(value: float) -> str:
    return f"{value:.2f}s" if value < 10 else f"{value:.1f}s" if value < 600 else f"{value / 60:.1f}min"


def run(args: argparse.Namespace) -> int:
    from ..distributed import is_main_process
    from ..models.pipeline import EvalSettings, prune_checkpoint

    data_dir = args.data_dir  # None: the default folders of prunekit.data (a named folder is the only one searched)
    recipe = build_recipe(args, data_dir)
    preflight(args, recipe)
    evaluate = None
    if args.eval or args.eval_tasks or args.eval_include_path or args.eval_limit is not None:
        evaluate = EvalSettings(args.eval_data, args.eval_seqlen, args.eval_windows, tasks=args.eval_tasks or (),
                                include_path=args.eval_include_path, limit=args.eval_limit, perplexity=args.eval,
                                progress=not args.no_progress)
        if is_main_process():  # under torchrun rank 0 alone evaluates (prune_checkpoint checks it for every rank)
            evaluate.prepare()  # lm-eval installed, task names known, datasets cached: before any pruning
    report = prune_checkpoint(args.model, recipe, args.out, overwrite=args.overwrite, resume=args.resume,
                              device=args.device, progress=not args.no_progress, data_dir=data_dir,
                              evaluate=evaluate)
    if is_main_process():
        print("\n".join(summary_lines(report)))
        print(f"saved to {args.out}")
    return 0


def register(subparsers) -> None:
    from ..models.methods import method_names
    from ..models.recipe import ALLOCATIONS

    p = subparsers.add_parser("prune", help="prune a causal LM checkpoint block by block into a loadable folder",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="hub id, HF folder, .gguf file or built-in name (smollm2-135m)")
    p.add_argument("--method", default=None,
                   help=f"built-in: {', '.join(method_names())}; or package.module:Class / file.py:Class")
    p.add_argument("--structure", default=None, help="unstructured | 2:4 | 4:8 | N:M | channels")
    p.add_argument("--sparsity", type=fraction, default=None, help="fraction pruned (N:M fixes it to N/M)")
    p.add_argument("--calib", default=None,
                   help="wikitext2 | c4 | c4:PATH | hf:NAME[:CONFIG][:SPLIT] | text/json/jsonl file | self | auto "
                        "(default: wikitext2 when found locally, else self)")
    p.add_argument("--nsamples", type=positive_int, default=None, help="calibration windows (default 128)")
    p.add_argument("--seqlen", type=positive_int, default=None, help="calibration window length (default 2048)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--mode", default=None, choices=("auto", "propagated", "sequential", "dense", "dense_sequential"))
    p.add_argument("--recipe", default=None, help="recipe file (JSON or YAML); flags override its fields")
    p.add_argument("--allocation", default=None, choices=ALLOCATIONS,
                   help="sparsity across layers, one global budget: auto (default: the measured best -- owl for "
                        "unstructured >= 60%%, else uniform); uniform; owl "
                        "(unstructured: outlier-weighted per block); adaptive (channels: FLAP's global threshold); "
                        "softmax, global_threshold")
    p.add_argument("--temperature", type=positive, default=None, help="softmax allocation temperature")
    p.add_argument("--owl-m", dest="owl_m", type=positive, default=None, help="OWL outlier threshold M (default 5)")
    p.add_argument("--owl-lambda", dest="owl_lambda", type=non_negative, default=None,
                   help="OWL spread lambda: block sparsities within S +- lambda (default 0.08)")
    p.add_argument("--attention", default=None, choices=("none", "heads", "vo_channels"))
    p.add_argument("--round-to", dest="round_to", type=round_to_arg, default=None,
                   help="kept widths: multiples of this, or 'auto' (default: 64 for groups of >= 1024 units, else 1)")
    p.add_argument("--backend", default=None, help="solver backend (auto, torch, ...)")
    p.add_argument("--damping", type=non_negative, default=None)
    p.add_argument("--targets", type=patterns_arg, default=None,
                   help="modules to prune, comma-separated: names (dotted suffixes), re:<regex>, Linear, Conv1D "
                        "(default: every linear layer of the decoder blocks)")
    p.add_argument("--ignore", type=patterns_arg, default=None,
                   help="modules left dense, same syntax (default: lm_head, re:.*router.*, gate, shared_expert_gate)")
    p.add_argument("--unrouted", default=None, choices=("dense", "magnitude"),
                   help="modules no calibration token reaches (MoE experts): left dense (default) or magnitude")
    p.add_argument("--block-refit", dest="block_refit", default=None, choices=("auto", "on", "off"),
                   help="after each block's solves, fit its kept weights to the dense block's outputs, masks fixed "
                        "([derived]; auto: the method's default)")
    p.add_argument("--block-refit-epochs", dest="block_refit_epochs", type=positive_int, default=None,
                   help="block refit: passes over the calibration windows (default 2; implies --block-refit on)")
    p.add_argument("--block-refit-lr", dest="block_refit_lr", type=positive, default=None,
                   help="block refit: Adam's initial step size (default 1e-3, cosine decay; implies --block-refit on)")
    p.add_argument("--block-refit-scope", dest="block_refit_scope", default=None, choices=("pruned", "block"),
                   help="block refit: train the pruned modules (default) or every linear module of the block "
                        "(implies --block-refit on)")
    p.add_argument("--block-refit-targets", dest="block_refit_targets", default=None, choices=("dense_model", "block"),
                   help="block refit: fit each block to the dense model's block outputs (default) or to the dense "
                        "block on the pruned model's inputs (implies --block-refit on)")
    p.add_argument("--dtype", default=None, choices=("float32", "float64", "bfloat16", "float16"),
                   help="compute dtype of the block copies (float32); the output keeps the checkpoint's dtype")
    p.add_argument("--out", required=True, help="output folder (appears only when the run is complete)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an earlier prunekit output at --out, or discard its unfinished run")
    p.add_argument("--resume", action="store_true", help="continue an unfinished run at --out (same arguments)")
    p.add_argument("--eval", action="store_true", help="perplexity before and after (WikiText-2 test by default)")
    p.add_argument("--eval-data", default="wikitext2")
    p.add_argument("--eval-windows", type=positive_int, default=None, help="evaluate the first K windows (default all)")
    p.add_argument("--eval-seqlen", type=positive_int, default=None, help="default: the calibration seqlen")
    p.add_argument("--eval-tasks", default=None,
                   help="zero-shot lm-eval tasks before and after, comma-separated (hellaswag,arc_easy,...) or YAML "
                        "files; needs pip install 'prunekit[eval]'")
    p.add_argument("--eval-include-path", default=None, help="folder of extra lm-eval task YAML definitions")
    p.add_argument("--eval-limit", type=limit_arg, default=None, help="documents per task (default all)")
    p.add_argument("--no-progress", action="store_true")
    add_data_args(p)
    p.set_defaults(func=run)
