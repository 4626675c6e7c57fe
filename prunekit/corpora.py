"""Named text corpora for calibration: C4 with the papers' sampling, ``hf:`` hub datasets, JSON / JSON-lines files.

C4 (``"c4"``)
    SparseGPT and Wanda calibrate on the first shard of C4's English training set,
    ``en/c4-train.00000-of-01024.json.gz`` of ``allenai/c4`` (356,317 documents).  Sampling
    (:func:`document_windows`, identical draws to their ``get_c4`` with ``random.seed(seed)``): repeat ``nsamples``
    times -- draw a random document index until the document has **more than** ``seqlen`` tokens, then cut a random
    window ``[s, s + seqlen)`` with ``s = randint(0, T - seqlen - 1)``.  The shard is looked up locally first
    (:data:`C4_FILE` in the data folder, or in its ``c4/`` / ``c4/en/`` / ``en/`` subfolders), then downloaded with
    ``datasets`` when the hub is reachable.  ``"c4:PATH"`` samples the same way from a local JSON-lines file.
``"hf:NAME[:CONFIG][:SPLIT]"``
    Any dataset of the Hugging Face hub, ``datasets.load_dataset(NAME, CONFIG, split=SPLIT)``; SPLIT defaults to
    ``train`` and may carry a slice (``train[:2000]``).  To give a split without a config leave CONFIG empty:
    ``hf:NAME::SPLIT``.  Examples: ``hf:wikitext:wikitext-2-raw-v1:train``, ``hf:roneneldan/TinyStories::train[:5000]``.
JSON / JSON-lines files (``.json``, ``.jsonl``, optionally ``.gz``)
    A JSON array of objects, or one object per line; each object a record with a text field or ``input_ids``.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch

from .data import check_data_dir, default_data_dirs, encode, from_hub, hub_offline
from .errors import DataError

C4_FILE = "c4-train.00000-of-01024.json.gz"
C4_HUB = "allenai/c4"
JSON_SUFFIXES = (".json", ".jsonl", ".json.gz", ".jsonl.gz")
MAX_FAILED_DRAWS = 100_000


def is_json_path(path: str | os.PathLike) -> bool:
    return str(path).lower().endswith(JSON_SUFFIXES)


# ---------------------------------------------------------------------------------------------- JSON files
def read_json_records(path: str | os.PathLike) -> list[Any]:
    """The records of a JSON array file or a JSON-lines file (``.gz`` decompressed), streamed line by line.

    Raises :class:`DataError` naming the file and line for non-UTF-8 bytes, invalid JSON or a broken gzip stream.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file {path} does not exist. Fix: check the path.")
    lineno = 0
    try:
        with _open_text(path) as stream:
            head = stream.read(1)
            while head.isspace():
                head = stream.read(1)
            if head == "[":  # one JSON array
                records = json.loads(head + stream.read())
                return records if isinstance(records, list) else [records]
            records = []
            for lineno, line in enumerate(_prefixed(head, stream), start=1):
                if line.strip():
                    records.append(json.loads(line))
            return records
    except UnicodeDecodeError as exc:
        raise DataError(f"data file {path} is not UTF-8 text (near line {lineno + 1}: {exc.reason}). Fix: convert "
                        f"it to UTF-8 and pass the converted file.") from exc
    except json.JSONDecodeError as exc:
        where = f"line {lineno}" if lineno else f"line {exc.lineno}"
        raise DataError(f"data file {path} is not valid JSON / JSON lines at {where}: {exc.msg}. Fix: one JSON "
                        f"object per line (jsonl) or one JSON array of objects, e.g. {{\"text\": \"...\"}}.") from exc
    except (OSError, EOFError) as exc:  # gzip.BadGzipFile is an OSError
        raise DataError(f"cannot read data file {path}: {exc}. Fix: check that the file is complete (a .gz file "
                        f"must be gzip-compressed).") from exc


def _open_text(path: Path):
    raw = gzip.open(path, "rb") if path.name.lower().endswith(".gz") else open(path, "rb")
    return io.TextIOWrapper(raw, encoding="utf-8")


def _prefixed(head: str, stream):
    first = True
    for line in stream:
        yield (head + line) if first else line
        first = False
    if first and head:
        yield head


def record_texts(records: Sequence[Any], column: str, where: str) -> list[str]:
    """The ``column`` field of every record (each a dict with a string there)."""
    texts = []
    for i, record in enumerate(records):
        if not isinstance(record, dict) or column not in record:
            keys = sorted(record) if isinstance(record, dict) else type(record).__name__
            raise DataError(f"record {i} of {where} has no text field {column!r} (it has {keys}). Fix: give every "
                            f"record a {column!r} field, or set calibration text_column to the field that holds "
                            f"the text.")
        value = record[column]
        if not isinstance(value, str):
            raise DataError(f"record {i} of {where}: field {column!r} is {type(value).__name__}, not text. "
                            f"Fix: store the text as a string.")
        texts.append(value)
    return texts


# ---------------------------------------------------------------------------------------------- C4
def find_local_c4(data_dir=None) -> tuple[Optional[Path], list[Path]]:
    """The local C4 shard :data:`C4_FILE` in the data folders (:func:`prunekit.data.default_data_dirs`)."""
    tried: list[Path] = []
    for d in default_data_dirs(data_dir):
        for candidate in (d / C4_FILE, d / "c4" / C4_FILE, d / "c4" / "en" / C4_FILE, d / "en" / C4_FILE):
            tried.append(candidate)
            if candidate.is_file():
                return candidate, tried
    return None, tried


def c4_documents(data_dir=None) -> Sequence[str]:
    """The documents of C4's first English training shard: the local file first, then ``datasets``."""
    check_data_dir(data_dir)
    path, tried = find_local_c4(data_dir)
    if path is not None:
        return record_texts(read_json_records(path), "text", str(path))
    ds, why = from_hub(lambda datasets: datasets.load_dataset(C4_HUB, data_files={"train": f"en/{C4_FILE}"},
                                                              split="train"))
    if ds is not None:
        return _Column(ds, "text")
    raise DataError(
        f"C4 calibration data not found. Tried the local files {[str(p) for p in tried]}; {why}. Fix: put "
        f"{C4_FILE} (from huggingface.co/datasets/{C4_HUB}, folder en/) in --data-dir, or pass source "
        f"'c4:/path/to/{C4_FILE}' (any JSON-lines file of {{\"text\": ...}} records, same sampling) or a local "
        f"json/jsonl/text file as the calibration source, or go online so that datasets can download it.")


class _Column:
    """A lazy, indexable view of one column of a map-style ``datasets.Dataset``."""

    def __init__(self, ds, column: str):
        self.ds, self.column = ds, column

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int) -> str:
        return self.ds[int(i)][self.column]


def document_windows(documents: Sequence[str], tokenizer, nsamples: int, seqlen: int, seed: int = 0,
                     *, encoder: Callable[[Any, str], torch.Tensor] = encode) -> torch.Tensor:
    """(nsamples, seqlen) windows with the SparseGPT/Wanda C4 sampling (see the module docstring).

    Uses a private ``random.Random(seed)``: the same draws as their global ``random.seed(seed)``.  Raises
    :class:`DataError` when no document (or too few among many draws) has more than ``seqlen`` tokens.
    """
    if len(documents) == 0:
        raise DataError("the document collection is empty. Fix: pass a source with documents in it.")
    rng = random.Random(seed)
    short: set[int] = set()
    windows = []
    for _ in range(nsamples):
        failed = 0
        while True:
            i = rng.randint(0, len(documents) - 1)
            if i not in short:
                ids = encoder(tokenizer, documents[i])
                if ids.numel() > seqlen:
                    break
                short.add(i)
            failed += 1
            if len(short) == len(documents) or failed >= MAX_FAILED_DRAWS:
                raise DataError(
                    f"no document has more than seqlen = {seqlen} tokens ({len(short)} of {len(documents)} "
                    f"documents checked are shorter). Fix: use a smaller --seqlen, or a source with longer documents.")
        start = rng.randint(0, ids.numel() - seqlen - 1)
        windows.append(ids[start:start + seqlen])
    return torch.stack(windows)


# ---------------------------------------------------------------------------------------------- hf: hub datasets
@dataclass(frozen=True)
class HubSource:
    """A parsed ``hf:NAME[:CONFIG][:SPLIT]`` source."""

    name: str
    config: Optional[str] = None
    split: str = "train"

    @classmethod
    def parse(cls, source: str) -> "HubSource":
        if not source.startswith("hf:"):
            raise DataError(f"{source!r} is not a hub source. Fix: write 'hf:NAME[:CONFIG][:SPLIT]'.")
        parts = source[3:].split(":", 2)
        name = parts[0].strip()
        config = parts[1].strip() if len(parts) > 1 else ""
        split = parts[2].strip() if len(parts) > 2 else ""
        if not name or (split and split.count("[") != split.count("]")) or "[" in config:
            raise DataError(f"calibration source {source!r} is not of the form 'hf:NAME[:CONFIG][:SPLIT]'. Fix: "
                            f"e.g. 'hf:wikitext:wikitext-2-raw-v1:train', or 'hf:NAME::train[:1000]' for a split "
                            f"without a config.")
        return cls(name, config or None, split or "train")

    def load(self):
        """``datasets.load_dataset(name, config, split=split)``; :class:`DataError` when it cannot be loaded."""
        label = f"hub dataset {self.name!r} (config {self.config!r}, split {self.split!r})"
        fix = ("Fix: go online (unset HF_HUB_OFFLINE) or, offline, save the data to a local text/json/jsonl file "
               "and pass its path as the calibration source.")
        try:
            import datasets
        except ImportError as exc:
            raise DataError(f"{label} needs the 'datasets' package. Fix: pip install datasets, or pass a local "
                            f"text/json/jsonl file as the calibration source.") from exc
        if hub_offline() and not Path(self.name).exists():  # a local dataset folder needs no hub
            raise DataError(f"cannot load {label}: the hub is switched off (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE). "
                            f"{fix}")
        try:
            return datasets.load_dataset(self.name, self.config, split=self.split)
        except Exception as exc:  # unreachable hub, unknown name/config/split, ...
            raise DataError(f"cannot load {label}: {type(exc).__name__}: {str(exc)[:300]}. {fix}") from exc


__all__ = ["C4_FILE", "HubSource", "c4_documents", "document_windows", "find_local_c4", "is_json_path",
           "read_json_records", "record_texts"]
