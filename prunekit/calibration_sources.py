"""From the calibration data a user has to one :class:`~prunekit.calibration_set.CalibrationSet`.

:func:`calibration_set` is the one entry point (``prunekit.prune`` / ``prunekit.plan`` and the disk-to-disk
pipeline go through it).  Accepted sources and what each becomes, with ``n = settings.nsamples``,
``L = settings.seqlen``, ``seed = settings.seed`` and the text column ``settings.text_column`` ("text"):

* a ``CalibrationSet`` or a LongTensor (n, L): used exactly as given (no padding);
* one tokenized batch -- a ``BatchEncoding`` or a dict with ``input_ids`` (+ ``attention_mask``): its rows exactly
  as given, the mask marking padding (ragged lists are right-padded and masked);
* **text** -- a list of strings, the text column of a ``datasets.Dataset`` / ``IterableDataset``, the text field
  of a list of records or of a json / jsonl file, a DataLoader of strings: documents joined with ``"\\n\\n"``,
  tokenized once, then n random windows of L tokens (``prunekit.data.random_windows``, the SparseGPT/Wanda
  sampler);
* **pre-tokenized rows** -- an ``input_ids`` column / field, a DataLoader yielding LongTensors (b, L), dicts with
  ``input_ids`` (+ ``attention_mask``) or ``TensorDataset`` tuples, a list of 1-D tensors: the first n rows with
  a real token, padding stripped, each cut to its first L tokens, right-padded to the longest and masked;
* a string (recipes and the CLI): "wikitext2", "c4", "c4:PATH", "hf:NAME[:CONFIG][:SPLIT]", a text / json /
  jsonl (``.gz``) file path, or "self" -- see :mod:`prunekit.data` and :mod:`prunekit.corpora`.

Unbounded text streams (an ``IterableDataset`` or DataLoader of text) are read until the documents hold
``8 n L`` tokens (about WikiText-2's size for the default 128 x 2048), so an endless stream is fine.  Padding
never enters a statistic: :mod:`prunekit.models.calibration` masks padded keys in attention and drops padded
rows from every Gram accumulator.  Every problem is a :class:`~prunekit.errors.DataError` naming the fix.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Optional

import torch

from .calibration_set import CalibrationSet
from .data import (check_data_dir, encode, random_windows, read_text_file, sample_from_model,
                   wikitext2_calibration_text)
from .errors import DataError

STREAM_TOKENS_PER_WINDOW_TOKEN = 8
SOURCE_SYNTAX = ("'wikitext2', 'c4', 'c4:PATH', 'hf:NAME[:CONFIG][:SPLIT]', 'self', or a text / json / jsonl file "
                 "path")
_ACCEPTED = ("a LongTensor (n, L), a CalibrationSet, a list of strings, a tokenized BatchEncoding or dict with "
             "input_ids, a datasets.Dataset / IterableDataset, a torch DataLoader, a list of records (dicts with a "
             f"text field or input_ids), or a source name: {SOURCE_SYNTAX}")


def calibration_set(source: Any, tokenizer=None, settings=None, *, model=None,
                    data_dir: Optional[str | os.PathLike] = None) -> CalibrationSet:
    """The calibration windows of ``source`` (see the module docstring for every accepted kind).

    Parameters
    ----------
    source : the calibration data (tensor, batch, texts, dataset, DataLoader, records or a source string).
    tokenizer : turns text into ids (Hugging Face tokenizer or a callable ``text -> ids``); not needed for
        token sources.
    settings : :class:`~prunekit.models.recipe.CalibrationSettings` (nsamples, seqlen, seed, text_column);
        defaults to ``CalibrationSettings()``.
    model : needed by "self" (text sampled from the model).
    data_dir : folder of local data files for "wikitext2" and "c4" (only that folder is searched).

    Returns
    -------
    CalibrationSet -- deterministic in ``settings.seed``.
    """
    if settings is None:
        from .models.recipe import CalibrationSettings

        settings = CalibrationSettings()
    reader = _Reader(tokenizer, settings, model, data_dir)
    return reader.read(source)


class _Reader:
    def __init__(self, tokenizer, settings, model, data_dir):
        self.tokenizer, self.model, self.data_dir = tokenizer, model, data_dir
        self.n, self.seqlen, self.seed = int(settings.nsamples), int(settings.seqlen), int(settings.seed)
        self.column = getattr(settings, "text_column", "text") or "text"

    # ------------------------------------------------------------------ dispatch
    def read(self, source: Any) -> CalibrationSet:
        if isinstance(source, CalibrationSet):
            return source
        if isinstance(source, torch.Tensor):
            return CalibrationSet.coerce(source)
        if isinstance(source, (str, os.PathLike)):
            return self.named(os.fspath(source))
        ds = sys.modules.get("datasets")
        if ds is not None:
            if isinstance(source, (ds.DatasetDict, ds.IterableDatasetDict)):
                raise DataError(f"calibration got a DatasetDict with splits {sorted(source)}; pick one. "
                                f"Fix: pass e.g. dataset['train'].")
            if isinstance(source, ds.Dataset):
                return self.dataset(source)
            if isinstance(source, ds.IterableDataset):
                return self.records(iter(source), "the IterableDataset", bounded=True)
        if isinstance(source, torch.utils.data.DataLoader):
            return self.batches(iter(source))
        if isinstance(source, Mapping):
            return self.batch(source)
        if isinstance(source, (list, tuple)):
            return self.sequence(source)
        raise DataError(f"calibration data of type {type(source).__name__} is not understood. Fix: pass "
                        f"{_ACCEPTED}.")

    def named(self, source: str) -> CalibrationSet:
        from . import corpora

        if source == "self":
            if self.model is None:
                raise DataError("calibration source 'self' samples text from the model: pass model=.")
            return CalibrationSet(sample_from_model(self.model, self.n, self.seqlen, self.seed, self.tokenizer))
        if source == "wikitext2":
            return self.text(wikitext2_calibration_text(self.data_dir))
        if source == "c4":
            return self.documents(corpora.c4_documents(self.data_dir))
        if source.startswith("c4:"):
            path = source[3:]
            return self.documents(corpora.record_texts(corpora.read_json_records(path), "text", path))
        if source.startswith("hf:"):
            return self.dataset(corpora.HubSource.parse(source).load(), label=source)
        path = Path(source)
        if path.is_file():
            if corpora.is_json_path(path):
                return self.records(iter(corpora.read_json_records(path)), str(path), bounded=False)
            return self.text(read_text_file(path))
        if path.is_dir():
            raise DataError(f"calibration source {source!r} is a folder, not a file. Fix: pass a text / json / "
                            f"jsonl file (or a folder of local data files as --data-dir with 'wikitext2' / 'c4').")
        raise DataError(f"calibration source {source!r} is neither 'wikitext2', 'self' nor an existing text file. "
                        f"Fix: pass one of {SOURCE_SYNTAX} (a file path must exist).")

    # ------------------------------------------------------------------ text
    def text(self, text: str) -> CalibrationSet:
        if not text.strip():
            raise DataError("the calibration text is empty. Fix: pass a source with text in it.")
        return CalibrationSet(random_windows(encode(self.tokenizer, text), self.n, self.seqlen, self.seed))

    def texts(self, texts: Iterable[Any], where: str, bounded: bool) -> CalibrationSet:
        docs: list[str] = []
        budget, seen = STREAM_TOKENS_PER_WINDOW_TOKEN * self.n * self.seqlen, 0
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise DataError(f"item {i} of {where} is {type(t).__name__}, not text. Fix: pass strings only "
                                f"(or token ids as input_ids).")
            docs.append(t)
            if bounded:
                seen += int(encode(self.tokenizer, t).numel()) if t else 0
                if seen >= budget:
                    break
        if not any(d.strip() for d in docs):
            raise DataError(f"{where} holds no text (empty or only whitespace). Fix: pass a source with text.")
        return self.text("\n\n".join(docs))

    def documents(self, documents) -> CalibrationSet:
        from .corpora import document_windows

        return CalibrationSet(document_windows(documents, self.tokenizer, self.n, self.seqlen, self.seed))

    # ------------------------------------------------------------------ datasets and records
    def dataset(self, ds, label: str = "the Dataset") -> CalibrationSet:
        columns = list(ds.column_names or [])
        if self.column in columns:
            return self.texts(ds[self.column], f"column {self.column!r} of {label}", bounded=False)
        if "input_ids" in columns:
            return self.records(iter(ds), label, bounded=True)
        raise DataError(f"{label} has no text column {self.column!r} and no 'input_ids' column (columns: {columns}). "
                        f"Fix: set calibration text_column to the column holding the text (recipe calibration: "
                        f"{{text_column: NAME}}), or tokenize it into an 'input_ids' column.")

    def records(self, rows, where: str, bounded: bool) -> CalibrationSet:
        first = next(rows, None)
        if first is None:
            raise DataError(f"{where} is empty. Fix: pass a source with at least one record.")
        if not isinstance(first, Mapping):
            raise DataError(f"the records of {where} are {type(first).__name__}, not dicts. Fix: records like "
                            f"{{'{self.column}': '...'}} or {{'input_ids': [...]}}.")
        rest = _chain(first, rows)
        if self.column in first:
            return self.texts((_field(r, self.column, where) for r in rest), f"field {self.column!r} of {where}",
                              bounded=bounded)
        if "input_ids" in first:
            return self.rows(((_field(r, "input_ids", where), r.get("attention_mask")) for r in rest), where)
        raise DataError(f"the records of {where} have no text field {self.column!r} and no 'input_ids' (fields: "
                        f"{sorted(first)}). Fix: set calibration text_column to the field holding the text "
                        f"(recipe calibration: {{text_column: NAME}}), or add 'input_ids'.")

    def sequence(self, items) -> CalibrationSet:
        if len(items) == 0:
            raise DataError("calibration data is an empty list. Fix: pass at least one text or window.")
        if all(isinstance(x, str) for x in items):
            return self.texts(items, "the list of strings", bounded=False)
        if all(isinstance(x, Mapping) for x in items):
            return self.records(iter(items), "the list of records", bounded=False)
        if all(isinstance(x, torch.Tensor) for x in items):
            return self.rows(((x, None) for x in items), "the list of tensors")
        try:
            return CalibrationSet.coerce(items)
        except DataError:
            kinds = sorted({type(x).__name__ for x in items})
            raise DataError(f"calibration list mixes or holds unsupported items ({kinds}). Fix: pass {_ACCEPTED}.")

    # ------------------------------------------------------------------ token batches
    def batch(self, batch: Mapping) -> CalibrationSet:
        """One tokenized batch used exactly as given."""
        if "input_ids" not in batch:
            if self.column in batch and isinstance(batch[self.column], (list, tuple)):
                return self.texts(batch[self.column], f"field {self.column!r}", bounded=False)
            raise DataError(f"the calibration dict has no 'input_ids' (keys: {sorted(map(str, batch))}). Fix: pass "
                            f"tokenizer(texts, return_tensors='pt', padding=True), or a dict with input_ids.")
        ids, mask = batch["input_ids"], batch.get("attention_mask")
        try:
            return CalibrationSet(torch.as_tensor(ids), None if mask is None else torch.as_tensor(mask))
        except DataError:
            raise
        except (ValueError, TypeError, RuntimeError):  # ragged lists (tokenized without padding)
            if isinstance(ids, (list, tuple)) and all(isinstance(r, (list, tuple, torch.Tensor)) for r in ids):
                masks = list(mask) if isinstance(mask, (list, tuple)) else [None] * len(ids)
                return CalibrationSet.from_rows([torch.as_tensor(r, dtype=torch.long) for r in ids],
                                                [None if m is None else torch.as_tensor(m) for m in masks])
            raise DataError(f"the calibration batch's input_ids could not be read as token rows (type "
                            f"{type(ids).__name__}). Fix: pass tokenizer(texts, return_tensors='pt', padding=True).")

    def batches(self, loader) -> CalibrationSet:
        first = next(loader, None)
        if first is None:
            raise DataError("the calibration DataLoader yields no batch. Fix: give it a non-empty dataset.")
        if isinstance(first, (list, tuple)) and first and all(isinstance(x, str) for x in first):
            texts = (t for b in _chain(first, loader) for t in b)
            return self.texts(texts, "the DataLoader's text batches", bounded=True)
        if isinstance(first, Mapping) and "input_ids" not in first and self.column in first:
            texts = (t for b in _chain(first, loader) for t in b[self.column])
            return self.texts(texts, f"the DataLoader's {self.column!r} field", bounded=True)
        return self.rows((row for b in _chain(first, loader) for row in _batch_rows(b)), "the DataLoader")

    def rows(self, pairs, where: str) -> CalibrationSet:
        """The first n rows with a real token: padding stripped, cut to seqlen, right-padded and masked."""
        rows = []
        for ids, mask in pairs:
            ids = _ids_row(ids, where)
            if mask is not None:
                mask = torch.as_tensor(mask).reshape(-1)
                if mask.numel() != ids.numel():
                    raise DataError(f"a row of {where} has {ids.numel()} input_ids but {mask.numel()} attention_mask "
                                    f"entries. Fix: pass the mask the tokenizer returned with these ids.")
                ids = ids[mask.to(torch.bool)]
            if ids.numel() == 0:
                continue
            rows.append(ids[:self.seqlen])
            if len(rows) == self.n:
                break
        if not rows:
            raise DataError(f"{where} holds no token (every row is empty or fully padded). Fix: pass token rows.")
        return CalibrationSet.from_rows(rows, pad_id=0)


def _chain(first, rest):
    yield first
    yield from rest


def _field(record, column: str, where: str):
    if not isinstance(record, Mapping) or column not in record:
        keys = sorted(record) if isinstance(record, Mapping) else type(record).__name__
        raise DataError(f"a record of {where} has no field {column!r} (it has {keys}). Fix: give every record a "
                        f"{column!r} field.")
    return record[column]


def _ids_row(ids, where: str) -> torch.Tensor:
    try:
        row = torch.as_tensor(ids)
    except (ValueError, TypeError, RuntimeError) as exc:
        raise DataError(f"input_ids of {where} are not a row of token ids ({type(ids).__name__}). Fix: pass lists "
                        f"or tensors of ints.") from exc
    if row.is_floating_point() or row.dtype == torch.bool or row.dim() > 1 and row.shape[0] != 1:
        raise DataError(f"input_ids of {where} must be one row of integer token ids, got dtype {row.dtype} shape "
                        f"{tuple(row.shape)}. Fix: one 1-D row of ints per record.")
    return row.reshape(-1).to(torch.long)


def _batch_rows(batch):
    """(ids, mask) rows of one DataLoader batch: a tensor (b, L), a dict with input_ids (+ attention_mask), or a
    TensorDataset tuple (ids,) / (ids, mask)."""
    if isinstance(batch, torch.Tensor):
        ids, mask = batch, None
    elif isinstance(batch, Mapping) and "input_ids" in batch:
        ids, mask = batch["input_ids"], batch.get("attention_mask")
    elif isinstance(batch, (list, tuple)) and batch and isinstance(batch[0], torch.Tensor) and len(batch) <= 2:
        ids, mask = batch[0], batch[1] if len(batch) == 2 else None
    else:
        raise DataError(f"a DataLoader batch of type {type(batch).__name__} is not token ids. Fix: yield LongTensors "
                        f"(batch, L), dicts with input_ids (+ attention_mask), or lists of strings.")
    ids = torch.as_tensor(ids)
    if ids.dim() == 1:
        ids = ids.reshape(1, -1)
    masks = [None] * len(ids) if mask is None else list(torch.as_tensor(mask).reshape(ids.shape))
    return list(zip(list(ids), masks))


def check_source(source: str, data_dir: Optional[str | os.PathLike] = None) -> None:
    """Cheap up-front check of a string source (before any model is loaded): syntax, file existence and the data
    folder.  Raises :class:`DataError`; whether a corpus is reachable is only known when it is read."""
    from .corpora import HubSource

    if not isinstance(source, str) or not source.strip():
        raise DataError(f"calibration source must be a non-empty string, got {source!r}. Fix: use {SOURCE_SYNTAX}.")
    if source in ("self",):
        return
    if source in ("wikitext2", "c4"):
        check_data_dir(data_dir)
        return
    if source.startswith("hf:"):
        HubSource.parse(source)
        return
    path = Path(source[3:] if source.startswith("c4:") else source)
    if not path.is_file():
        raise DataError(f"calibration source {source!r} is neither 'wikitext2', 'self' nor an existing text file. "
                        f"Fix: pass one of {SOURCE_SYNTAX} (a file path must exist).")


__all__ = ["SOURCE_SYNTAX", "calibration_set", "check_source"]
