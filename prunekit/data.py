"""Calibration windows and evaluation token streams (methods.md §2).

Sources
-------
``"wikitext2"``
    WikiText-2 raw v1.  Offline: the local raw files ``<data_dir>/wikitext-2-raw/wiki.{valid,test}.raw``
    (``data_dir`` = the argument, else ``$PRUNEKIT_DATA_DIR``, else ``../shared/data`` beside the working
    directory or the checkout).  Online: ``datasets.load_dataset("wikitext", "wikitext-2-raw-v1")``.
    Calibration uses the **train** split (a local ``wiki.train.raw`` first, else ``datasets``), falling back to
    the local **valid** file when no local train file exists (train is not shipped; valid is disjoint from test).  Evaluation uses the **test** split.
a file path
    Any UTF-8 text file.
``"self"``
    Token sequences sampled from the model itself with a fixed seed: an offline default needing no data.

Calibration (SparseGPT ``datautils``): the text (rows joined with ``" "``) is tokenized once, then
``random.seed(seed)`` and ``nsamples`` windows of ``seqlen`` tokens start at ``random.randint(0, T - seqlen - 1)``.
Evaluation: the test rows joined with ``"\\n\\n"`` and tokenized once; :func:`prunekit.evaluate.perplexity`
cuts non-overlapping windows.

The local ``.raw`` files are the Hugging Face rows written back one per line, with empty rows as ``" \\n"``
(``../shared/data/SOURCES.md``); :func:`wikitext_rows` inverts that exactly (4358 test rows, 3760 valid rows).
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from collections.abc import Mapping
from typing import Any, Optional

import torch

from .errors import DataError

_SPLIT_FILES = {"train": "wiki.train.raw", "validation": "wiki.valid.raw", "test": "wiki.test.raw"}


def default_data_dirs(data_dir: Optional[str | os.PathLike] = None) -> list[Path]:
    """Folders searched for ``wikitext-2-raw/``, in order."""
    dirs: list[Path] = []
    if data_dir:
        dirs.append(Path(data_dir))
    env = os.environ.get("PRUNEKIT_DATA_DIR")
    if env:
        dirs.append(Path(env))
    dirs.append(Path.cwd().parent / "shared" / "data")
    dirs.append(Path(__file__).resolve().parents[1].parent / "shared" / "data")
    out: list[Path] = []
    for d in dirs:
        if d not in out:
            out.append(d)
    return out


def wikitext_rows(text: str) -> list[str]:
    """Rebuild the Hugging Face rows of a WikiText ``.raw`` file: one row per line, ``" \\n"`` -> ``""``."""
    parts = text.split("\n")
    if parts and parts[-1] == "":
        parts = parts[:-1]
    return ["" if p == " " else p + "\n" for p in parts]


def find_local_wikitext(split: str, data_dir) -> tuple[Optional[Path], list[Path]]:
    name = _SPLIT_FILES[split]
    tried = []
    for d in default_data_dirs(data_dir):
        for candidate in (d / "wikitext-2-raw" / name, d / name):
            tried.append(candidate)
            if candidate.is_file():
                return candidate, tried
    return None, tried


def wikitext2_rows(split: str, data_dir=None) -> list[str]:
    """The rows of WikiText-2 raw ``split`` ("train"/"validation"/"test"): local file first, then ``datasets``."""
    path, tried = find_local_wikitext(split, data_dir)
    if path is not None:
        return wikitext_rows(path.read_text(encoding="utf-8"))
    why = "the 'datasets' package is not installed"
    try:
        import datasets

        return list(datasets.load_dataset("wikitext", "wikitext-2-raw-v1", split=split)["text"])
    except ImportError:
        pass
    except Exception as exc:  # offline, hub unreachable, ...
        why = f"datasets.load_dataset failed: {type(exc).__name__}: {str(exc)[:200]}"
    raise DataError(
        f"WikiText-2 {split} split not found. Tried the local files {[str(p) for p in tried]}; {why}. "
        f"Fix: pass --data-dir (or set PRUNEKIT_DATA_DIR) to the folder holding wikitext-2-raw/{_SPLIT_FILES[split]}, "
        f"or go online so that datasets can download 'wikitext-2-raw-v1'."
    )


def encode(tokenizer: Any, text: str) -> torch.Tensor:
    """Tokenize ``text`` once into a 1-D LongTensor (HF tokenizers: ``tokenizer(text).input_ids``; or a callable)."""
    if hasattr(tokenizer, "convert_tokens_to_ids"):  # a Hugging Face tokenizer
        ids = tokenizer(text, return_tensors="pt")["input_ids"]
    else:
        ids = tokenizer(text)
        if isinstance(ids, Mapping):
            ids = ids["input_ids"]
    return torch.as_tensor(ids, dtype=torch.long).reshape(-1)


def _text_of(source: str, split: str, data_dir, joiner: str) -> str:
    if source == "wikitext2":
        return joiner.join(wikitext2_rows(split, data_dir))
    path = Path(source)
    if path.is_file():
        return path.read_text(encoding="utf-8")
    raise DataError(
        f"data source {source!r} is neither 'wikitext2', 'self' nor an existing text file. "
        f"Fix: pass a path to a UTF-8 text file, 'wikitext2' (with --data-dir for offline use) or 'self'."
    )


def random_windows(tokens: torch.Tensor, nsamples: int, seqlen: int, seed: int = 0) -> torch.Tensor:
    """``nsamples`` windows (nsamples, seqlen) at offsets ``random.randint(0, T - seqlen - 1)`` after ``random.seed``.

    Uses a private ``random.Random(seed)``, which draws the same offsets as SparseGPT's global
    ``random.seed(seed)`` without touching global state.
    """
    total = int(tokens.numel())
    if total <= seqlen:
        raise DataError(f"calibration text has {total} tokens, fewer than seqlen + 1 = {seqlen + 1}. "
                        f"Fix: use a longer text or a smaller --seqlen.")
    rng = random.Random(seed)
    starts = [rng.randint(0, total - seqlen - 1) for _ in range(nsamples)]
    return torch.stack([tokens[s:s + seqlen] for s in starts])


def sample_from_model(model, nsamples: int, seqlen: int, seed: int = 0, tokenizer=None,
                      device: Optional[str | torch.device] = None) -> torch.Tensor:
    """(nsamples, seqlen) token ids sampled from ``model`` (temperature 1, fixed seed), starting at BOS.

    The "self" source: offline calibration data that needs no text at all.
    """
    config = model.config
    start = None
    for holder in (tokenizer, config):
        for attr in ("bos_token_id", "eos_token_id"):
            value = getattr(holder, attr, None) if holder is not None else None
            if isinstance(value, (list, tuple)):
                value = value[0] if value else None
            if start is None and value is not None:
                start = int(value)
    start = 0 if start is None else start
    device = torch.device(device) if device is not None else next(model.parameters()).device
    gen = torch.Generator(device="cpu").manual_seed(seed)
    ids = torch.full((nsamples, 1), start, dtype=torch.long)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        past = None
        step_input = ids
        for _ in range(seqlen - 1):
            out = model(input_ids=step_input.to(device), past_key_values=past, use_cache=True)
            past = out.past_key_values
            probs = torch.softmax(out.logits[:, -1, :].float().cpu(), dim=-1)
            nxt = torch.multinomial(probs, 1, generator=gen)
            ids = torch.cat([ids, nxt], dim=1)
            step_input = nxt
    model.train(was_training)
    return ids


def calibration_windows(tokenizer, source: str, nsamples: int, seqlen: int, seed: int = 0,
                        data_dir: Optional[str | os.PathLike] = None, model=None) -> torch.Tensor:
    """Calibration token windows, shape (nsamples, seqlen), dtype long (methods.md §2).

    ``source``: "wikitext2" (train split via ``datasets``; offline, the local valid file), a text-file path,
    or "self" (sampled from ``model``).  Deterministic in ``seed``.
    """
    if source == "self":
        if model is None:
            raise DataError("calibration source 'self' samples text from the model: pass model=.")
        return sample_from_model(model, nsamples, seqlen, seed, tokenizer)
    if source == "wikitext2":
        train, _ = find_local_wikitext("train", data_dir)
        valid, _ = find_local_wikitext("validation", data_dir)
        split = "validation" if train is None and valid is not None else "train"
        text = _text_of(source, split, data_dir, " ")
    else:
        text = _text_of(source, "train", data_dir, " ")
    return random_windows(encode(tokenizer, text), nsamples, seqlen, seed)


def evaluation_tokens(tokenizer, source: str = "wikitext2", data_dir: Optional[str | os.PathLike] = None) -> torch.Tensor:
    """The evaluation stream (1-D long): WikiText-2 test rows joined with ``"\\n\\n"``, or a text file, tokenized once."""
    if source == "self":
        raise DataError("evaluation needs real text: use 'wikitext2' or a text file, not 'self'.")
    return encode(tokenizer, _text_of(source, "test", data_dir, "\n\n"))


__all__ = ["calibration_windows", "default_data_dirs", "encode", "evaluation_tokens", "find_local_wikitext", "random_windows",
           "sample_from_model", "wikitext2_rows", "wikitext_rows"]
