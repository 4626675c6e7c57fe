"""Calibration windows and evaluation token streams (methods.md §2).

Every calibration source a user brings (lists of strings, ``datasets`` objects, tokenized batches, DataLoaders,
C4, ``hf:`` hub datasets ...) goes through :func:`prunekit.calibration_sources.calibration_set`; this module holds
the WikiText-2 files, text files, tokenization, the window sampler and the "self" sampler it builds on.

Sources
-------
``"wikitext2"``
    WikiText-2 raw v1.  Offline: the local raw files ``<data_dir>/wikitext-2-raw/wiki.{valid,test}.raw``.
    The folders searched (:func:`default_data_dirs`) are exactly the ``data_dir`` argument when one is given,
    else ``$PRUNEKIT_DATA_DIR`` when set, else ``../shared/data`` beside the working directory or the checkout:
    a folder the user names is never silently replaced by another one.  Online (hub reachable and not
    ``HF_HUB_OFFLINE``): ``datasets.load_dataset("wikitext", "wikitext-2-raw-v1")``.
    Calibration uses the **train** split (a local ``wiki.train.raw`` first, else ``datasets``), falling back to
    the local **valid** file when no local train file exists (train is not shipped; valid is disjoint from test).  Evaluation uses the **test** split.
a file path
    Any UTF-8 text file, optionally gzip-compressed (``.gz``) (a file that is not UTF-8 is a :class:`~prunekit.errors.DataError` naming the byte).
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
from typing import Any, Callable, Optional

import torch

from .errors import DataError

_SPLIT_FILES = {"train": "wiki.train.raw", "validation": "wiki.valid.raw", "test": "wiki.test.raw"}


def default_data_dirs(data_dir: Optional[str | os.PathLike] = None) -> list[Path]:
    """Folders searched for local data files, in order.

    Exactly ``[data_dir]`` when given, else ``[$PRUNEKIT_DATA_DIR]`` when set, else ``../shared/data`` beside the
    working directory and beside the checkout.  A folder the user names (argument or environment) is the only
    one searched, so a wrong ``--data-dir`` is reported, never replaced by another folder's files.
    """
    if data_dir:
        return [Path(data_dir)]
    env = os.environ.get("PRUNEKIT_DATA_DIR")
    if env:
        return [Path(env)]
    out: list[Path] = []
    for d in (Path.cwd().parent / "shared" / "data", Path(__file__).resolve().parents[1].parent / "shared" / "data"):
        if d not in out:
            out.append(d)
    return out


def check_data_dir(data_dir: Optional[str | os.PathLike] = None) -> None:
    """Raise :class:`DataError` when a data folder the user named (argument or ``$PRUNEKIT_DATA_DIR``) is not a
    folder; nothing to check when none was named."""
    named, how = (data_dir, "--data-dir") if data_dir else (os.environ.get("PRUNEKIT_DATA_DIR"), "PRUNEKIT_DATA_DIR")
    if named and not Path(named).is_dir():
        raise DataError(f"the data folder {how}={str(named)!r} does not exist or is not a folder. Fix: pass the "
                        f"folder that holds the data files (e.g. the one containing wikitext-2-raw/), or leave "
                        f"{how} out.")


def read_text_file(path: str | os.PathLike) -> str:
    """The text of a UTF-8 file (``.gz`` decompressed); :class:`DataError` naming the file and the first bad byte
    otherwise."""
    path = Path(path)
    try:
        raw = path.read_bytes()
        if path.suffix.lower() == ".gz":
            import gzip

            raw = gzip.decompress(raw)
    except (OSError, EOFError) as exc:  # gzip.BadGzipFile is an OSError
        raise DataError(f"cannot read data file {path}: {getattr(exc, 'strerror', None) or exc}. Fix: check the "
                        f"path, its permissions, and that a .gz file is complete gzip data.") from exc
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(
            f"data file {path} is not UTF-8 text: byte 0x{raw[exc.start]:02x} at offset {exc.start} cannot be "
            f"decoded ({exc.reason}). Fix: convert the file to UTF-8 (e.g. iconv -f latin1 -t utf-8 "
            f"{path.name} > {path.stem}.utf8{path.suffix}) and pass the converted file.") from exc


def hub_offline() -> bool:
    """True when the Hugging Face hub must not be contacted (``HF_HUB_OFFLINE`` / ``HF_DATASETS_OFFLINE``),
    read at call time, so that an offline run fails at once instead of after the hub client's retries."""
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        if os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on"):
            return True
    return False


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


def from_hub(load: Callable[[Any], Any]) -> tuple[Any, str]:
    """``(load(datasets), "")`` when the ``datasets`` package can reach the hub, else ``(None, why not)``."""
    try:
        import datasets
    except ImportError:
        return None, "the 'datasets' package is not installed"
    if hub_offline():
        return None, "the hub is switched off (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE)"
    try:
        return load(datasets), ""
    except Exception as exc:  # noqa: BLE001 -- offline, hub unreachable, missing dataset ...
        return None, f"datasets.load_dataset failed: {type(exc).__name__}: {str(exc)[:200]}"


def wikitext2_rows(split: str, data_dir=None) -> list[str]:
    """The rows of WikiText-2 raw ``split`` ("train"/"validation"/"test"): local file first, then ``datasets``."""
    check_data_dir(data_dir)
    path, tried = find_local_wikitext(split, data_dir)
    if path is not None:
        return wikitext_rows(read_text_file(path))
    rows, why = from_hub(lambda datasets: list(datasets.load_dataset("wikitext", "wikitext-2-raw-v1",
                                                                     split=split)["text"]))
    if rows is not None:
        return rows
    raise DataError(
        f"WikiText-2 {split} split not found. Tried the local files {[str(p) for p in tried]}; {why}. "
        f"Fix: pass --data-dir (or set PRUNEKIT_DATA_DIR) to the folder holding wikitext-2-raw/{_SPLIT_FILES[split]}, "
        f"or go online so that datasets can download 'wikitext-2-raw-v1'."
    )


def encode(tokenizer: Any, text: str) -> torch.Tensor:
    """Tokenize ``text`` once into a 1-D LongTensor (HF tokenizers: ``tokenizer(text).input_ids``; or a callable)."""
    if tokenizer is None:
        raise DataError("this calibration source is text, and no tokenizer was given to turn it into token ids. "
                        "Fix: pass tokenizer=... (e.g. AutoTokenizer.from_pretrained(model_name)), or pass token "
                        "ids (a LongTensor or a tokenized batch).")
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
        return read_text_file(path)
    raise DataError(
        f"data source {source!r} is neither 'wikitext2', 'self' nor an existing text file (nor 'c4' or "
        f"'hf:NAME[:CONFIG][:SPLIT]' for calibration). "
        f"Fix: pass a path to a UTF-8 text file, 'wikitext2' (with --data-dir for offline use) or 'self'."
    )


def random_windows(tokens: torch.Tensor, nsamples: int, seqlen: int, seed: int = 0) -> torch.Tensor:
    """``nsamples`` windows (nsamples, seqlen) at offsets ``random.randint(0, T - seqlen - 1)`` after ``random.seed``.

    Uses a private ``random.Random(seed)``, which draws the same offsets as SparseGPT's global
    ``random.seed(seed)`` without touching global state.
    """
    total = int(tokens.numel())
    if total == 0:
        raise DataError("calibration text is empty (0 tokens). Fix: pass a source with text in it.")
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

    ``source``: any string source of :func:`prunekit.calibration_sources.calibration_set` -- "wikitext2" (train
    split via ``datasets``; offline, the local valid file), "c4", "hf:NAME[:CONFIG][:SPLIT]", a text / json /
    jsonl file path, or "self" (sampled from ``model``).  Deterministic in ``seed``.  Sources that pad windows
    need the mask: use ``calibration_set`` for those.
    """
    from .calibration_sources import calibration_set
    from .models.recipe import CalibrationSettings

    settings = CalibrationSettings(source=str(source), nsamples=nsamples, seqlen=seqlen, seed=seed)
    return calibration_set(source, tokenizer, settings, model=model, data_dir=data_dir).input_ids


def wikitext2_calibration_text(data_dir=None) -> str:
    """The WikiText-2 calibration text: train rows joined with " " (SparseGPT), the local valid file when no
    local train file exists."""
    check_data_dir(data_dir)
    train, _ = find_local_wikitext("train", data_dir)
    valid, _ = find_local_wikitext("validation", data_dir)
    split = "validation" if train is None and valid is not None else "train"
    return _text_of("wikitext2", split, data_dir, " ")


def evaluation_tokens(tokenizer, source: str = "wikitext2", data_dir: Optional[str | os.PathLike] = None) -> torch.Tensor:
    """The evaluation stream (1-D long): WikiText-2 test rows joined with ``"\\n\\n"``, or a text file, tokenized once."""
    if source == "self":
        raise DataError("evaluation needs real text: use 'wikitext2' or a text file, not 'self'.")
    return encode(tokenizer, _text_of(source, "test", data_dir, "\n\n"))


__all__ = ["calibration_windows", "check_data_dir", "default_data_dirs", "encode", "evaluation_tokens",
           "find_local_wikitext", "from_hub", "hub_offline", "random_windows", "read_text_file", "sample_from_model",
           "wikitext2_calibration_text", "wikitext2_rows", "wikitext_rows"]
