"""``prunekit eval``: perplexity, or zero-shot lm-eval tasks, of a model (a pruned folder in any format prunekit
writes, an HF folder, a .gguf file, a built-in name or a hub id) as JSON on stdout.

.. code-block:: console

    prunekit eval --model OUT --data wikitext2 --seqlen 256 --windows 20
    {"ppl": 27.1, "seqlen": 256, "windows": 20, ...}
    prunekit eval --model OUT --tasks hellaswag,arc_easy --limit 200
    {"tasks": {"hellaswag": {"acc": 0.41, "acc_norm": 0.52, "samples": 200, ...}, ...}, ...}
    prunekit eval --model OUT --tasks my_task --include-path ./my_tasks

Perplexity follows methods.md §2: non-overlapping windows of ``seqlen`` tokens, tail dropped, mean of the
window losses; the window count and seqlen are printed with the number.  ``--tasks`` runs lm-evaluation-harness
instead (``pip install 'prunekit[eval]'``) on the loaded model object, so every output format works; task names,
the include path and the task datasets are checked before the model is loaded.  Progress bars with ETA go to
stderr (``--no-progress`` turns them off).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

_DTYPES = ("float32", "bfloat16", "float16", "float64")
DEFAULT_SEQLEN = 2048


def default_data_dir() -> str | None:
    """``$PRUNEKIT_DATA_DIR``, else ``../shared/data`` when it exists."""
    env = os.environ.get("PRUNEKIT_DATA_DIR")
    if env:
        return env
    candidate = Path.cwd().parent / "shared" / "data"
    return str(candidate) if candidate.is_dir() else None


def load_model_and_tokenizer(name: str, dtype: str = "float32", device: str = "cpu"):
    """``(model, tokenizer)`` from a pruned folder, an HF folder, a .gguf file, a built-in name or a hub id
    (``prunekit.models.sources.load_model``)."""
    import torch

    from ..errors import ModelError
    from ..models.sources import load_model

    model, tokenizer = load_model(name, dtype=getattr(torch, dtype), device=device)
    if tokenizer is None:
        raise ModelError(f"no tokenizer found for {name!r}. Fix: save the tokenizer next to the model.")
    return model.eval(), tokenizer


def add_data_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", default=None,
                        help="folder holding wikitext-2-raw/ (default: $PRUNEKIT_DATA_DIR or ../shared/data)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")


_PPL_FLAGS = (("data", "--data"), ("seqlen", "--seqlen"), ("windows", "--windows"), ("data_dir", "--data-dir"))
_TASK_FLAGS = (("include_path", "--include-path"), ("limit", "--limit"), ("num_fewshot", "--num-fewshot"))


def check_args(args: argparse.Namespace) -> None:
    """Every number and flag combination, before anything is loaded (one :class:`DataError` naming the flag)."""
    from ..errors import DataError
    from ..evaluate import check_window_args

    if args.tasks is not None:
        given = [flag for name, flag in _PPL_FLAGS if getattr(args, name) is not None]
        if given:
            raise DataError(f"{', '.join(given)} set(s) perplexity, which does not run with --tasks. Fix: drop "
                            f"{', '.join(given)}, or run perplexity in a separate 'prunekit eval' without --tasks.")
        if args.batch_size < 1:
            raise DataError(f"--batch-size must be an integer >= 1, got {args.batch_size}. Fix: pass 1 (or more when "
                            f"memory allows).")
        return
    given = [flag for name, flag in _TASK_FLAGS if getattr(args, name) is not None]
    if given:
        raise DataError(f"{', '.join(given)} only apply(ies) to zero-shot tasks. Fix: add --tasks NAME[,NAME...] or "
                        f"drop {', '.join(given)}.")
    check_window_args(args.seqlen if args.seqlen is not None else DEFAULT_SEQLEN, args.windows, args.batch_size,
                      names=("--seqlen", "--windows", "--batch-size"))


def run(args: argparse.Namespace) -> int:
    check_args(args)
    if args.tasks is not None:
        return run_tasks(args)
    from ..data import evaluation_tokens
    from ..evaluate import perplexity

    data_dir = args.data_dir or default_data_dir()
    data = args.data or "wikitext2"
    seqlen = args.seqlen if args.seqlen is not None else DEFAULT_SEQLEN
    model, tokenizer = load_model_and_tokenizer(args.model, args.model_dtype, args.device)
    tokens = evaluation_tokens(tokenizer, data, data_dir)
    result = perplexity(model, tokens, seqlen, windows=args.windows, device=args.device,
                        batch_size=args.batch_size, progress=not args.no_progress)
    result.update(model=str(args.model), data=data, device=args.device)
    print(json.dumps(result, indent=2))
    return 0


def run_tasks(args: argparse.Namespace) -> int:
    """``--tasks``: check the tasks (names, include path, datasets), then load the model and run lm-eval."""
    from ..zero_shot import ZeroShotSettings, check_tasks, evaluate_tasks

    settings = ZeroShotSettings(tasks=args.tasks, include_path=args.include_path, limit=args.limit,
                                num_fewshot=args.num_fewshot if args.num_fewshot is not None else 0,
                                batch_size=args.batch_size)
    check_tasks(settings)
    model, tokenizer = load_model_and_tokenizer(args.model, args.model_dtype, args.device)
    result = evaluate_tasks(model, tokenizer, settings, device=args.device, progress=not args.no_progress)
    result.update(model=str(args.model), device=args.device, model_dtype=args.model_dtype)
    print(json.dumps(result, indent=2))
    return 0


def limit_arg(text: str):
    """``--limit`` / ``--eval-limit``: a document count (int) or a fraction in (0, 1) (float); range checked by ZeroShotSettings."""
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number (a document count, or a fraction in (0, 1))")


def register(subparsers) -> None:
    p = subparsers.add_parser("eval", help="perplexity or zero-shot lm-eval tasks of a (pruned) model, as JSON",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True,
                   help="a folder written by 'prunekit prune' (any format), an HF folder, a .gguf file or a name")
    p.add_argument("--data", default=None, help="perplexity text: 'wikitext2' (test split, default) or a text file")
    p.add_argument("--seqlen", type=int, default=None, help=f"perplexity window length in tokens "
                                                            f"(default {DEFAULT_SEQLEN})")
    p.add_argument("--windows", type=int, default=None, help="perplexity: evaluate the first K windows (default: all)")
    p.add_argument("--batch-size", type=int, default=1, help="windows (perplexity) or requests (tasks) per forward")
    p.add_argument("--tasks", default=None,
                   help="zero-shot instead of perplexity: lm-eval task names or YAML files, comma-separated "
                        "(e.g. hellaswag,arc_easy); needs pip install 'prunekit[eval]'")
    p.add_argument("--include-path", default=None, help="folder of extra lm-eval task YAML definitions")
    p.add_argument("--limit", type=limit_arg, default=None,
                   help="tasks: score the first N documents of each (or a fraction in (0, 1)); default all")
    p.add_argument("--num-fewshot", type=int, default=None, help="tasks: in-context examples (default 0)")
    p.add_argument("--model-dtype", choices=_DTYPES, default="float32", help="dtype to load the model in")
    p.add_argument("--no-progress", action="store_true", help="no progress bars on stderr")
    add_data_args(p)
    p.set_defaults(func=run)
