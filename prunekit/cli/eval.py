"""``prunekit eval``: perplexity of a model (a pruned folder, an HF folder or a built-in name) as JSON.

.. code-block:: console

    prunekit eval --model OUT --data wikitext2 --seqlen 256 --windows 20
    {"ppl": 27.1, "seqlen": 256, "windows": 20, ...}

Perplexity follows methods.md §2: non-overlapping windows of ``seqlen`` tokens, tail dropped, mean of the
window losses; the window count and seqlen are printed with the number.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

_DTYPES = ("float32", "bfloat16", "float16", "float64")


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


def run(args: argparse.Namespace) -> int:
    from ..data import evaluation_tokens
    from ..evaluate import perplexity

    data_dir = args.data_dir or default_data_dir()
    model, tokenizer = load_model_and_tokenizer(args.model, args.model_dtype, args.device)
    tokens = evaluation_tokens(tokenizer, args.data, data_dir)
    result = perplexity(model, tokens, args.seqlen, windows=args.windows, device=args.device,
                        batch_size=args.batch_size)
    result.update(model=str(args.model), data=args.data, device=args.device)
    print(json.dumps(result, indent=2))
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("eval", help="perplexity of a (pruned) model on non-overlapping windows",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="a folder written by 'prunekit prune', an HF folder or a name")
    p.add_argument("--data", default="wikitext2", help="'wikitext2' (test split) or a text file")
    p.add_argument("--seqlen", type=int, default=2048, help="window length in tokens (default 2048)")
    p.add_argument("--windows", type=int, default=None, help="evaluate the first K windows (default: all)")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--model-dtype", choices=_DTYPES, default="float32", help="dtype to load the model in")
    add_data_args(p)
    p.set_defaults(func=run)
