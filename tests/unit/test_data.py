"""Calibration windows and evaluation streams (prunekit.data; methods.md §2)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from prunekit import data
from prunekit.errors import DataError


def chars(text: str) -> list[int]:
    """A character-level 'tokenizer': one id per character."""
    return [ord(c) % 256 for c in text]


def test_raw_reconstruction_gives_hf_row_counts(shared_data_dir):
    root = Path(shared_data_dir) / "wikitext-2-raw"
    for name, expected in (("wiki.test.raw", 4358), ("wiki.valid.raw", 3760)):
        text = (root / name).read_text(encoding="utf-8")
        rows = data.wikitext_rows(text)
        assert len(rows) == expected, f"{name}: {len(rows)} rows, Hugging Face has {expected}"
        if name == "wiki.test.raw":
            assert rows[:3] == ["", " = Robert Boulter = \n", ""]
        # the .raw file is the rows written back with empty rows as " \n" (SOURCES.md): exact inverse
        assert "".join(" \n" if r == "" else r for r in rows) == text
        assert all(r == "" or r.endswith("\n") for r in rows)


def test_evaluation_stream_joins_test_rows_with_blank_lines(shared_data_dir):
    rows = data.wikitext2_rows("test", shared_data_dir)
    tokens = data.evaluation_tokens(chars, "wikitext2", shared_data_dir)
    joined = "\n\n".join(rows)
    assert tokens.numel() == len(joined) == sum(map(len, rows)) + 2 * (len(rows) - 1)
    assert tokens[:3].tolist() == chars(joined[:3])


def test_random_windows_match_sparsegpt_offsets_and_are_deterministic():
    tokens = torch.arange(1000)
    windows = data.random_windows(tokens, nsamples=5, seqlen=16, seed=0)
    random.seed(0)
    starts = [random.randint(0, 1000 - 16 - 1) for _ in range(5)]
    assert windows.shape == (5, 16)
    assert windows[:, 0].tolist() == starts
    assert torch.equal(windows[:, 1:] - windows[:, :-1], torch.ones(5, 15, dtype=torch.long))
    assert torch.equal(windows, data.random_windows(tokens, 5, 16, seed=0))
    assert not torch.equal(windows, data.random_windows(tokens, 5, 16, seed=1))


def test_calibration_windows_from_text_file(tmp_path):
    path = tmp_path / "calib.txt"
    path.write_text("abcdefghij" * 50)
    w1 = data.calibration_windows(chars, str(path), nsamples=3, seqlen=20, seed=0)
    w2 = data.calibration_windows(chars, str(path), nsamples=3, seqlen=20, seed=0)
    assert w1.shape == (3, 20) and w1.dtype == torch.long
    assert torch.equal(w1, w2)
    with pytest.raises(DataError, match="fewer than seqlen"):
        data.calibration_windows(chars, str(path), nsamples=1, seqlen=600)


def test_calibration_from_local_wikitext_uses_valid_split(shared_data_dir):
    w = data.calibration_windows(chars, "wikitext2", nsamples=2, seqlen=64, seed=0, data_dir=shared_data_dir)
    valid = " ".join(data.wikitext2_rows("validation", shared_data_dir))
    assert w.shape == (2, 64)
    assert "".join(chr(i) for i in w[0].tolist()) in valid


def test_missing_data_names_paths_and_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(data, "default_data_dirs", lambda data_dir=None: [tmp_path])
    with pytest.raises(DataError) as info:
        data.evaluation_tokens(chars, "wikitext2", tmp_path)
    message = str(info.value)
    assert str(tmp_path / "wikitext-2-raw" / "wiki.test.raw") in message
    assert "--data-dir" in message


def test_unknown_source_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="neither 'wikitext2', 'self' nor an existing text file"):
        data.calibration_windows(chars, str(tmp_path / "nope.txt"), 1, 8)


def test_self_source_samples_from_the_model_deterministically():
    from _hf_tiny import tiny_model

    model = tiny_model("llama", vocab_size=50)
    a = data.calibration_windows(None, "self", nsamples=2, seqlen=12, seed=3, model=model)
    b = data.calibration_windows(None, "self", nsamples=2, seqlen=12, seed=3, model=model)
    c = data.calibration_windows(None, "self", nsamples=2, seqlen=12, seed=4, model=model)
    assert a.shape == (2, 12) and torch.equal(a, b) and not torch.equal(a, c)
    assert int(a.max()) < 50 and bool((a[:, 0] == model.config.bos_token_id).all())
    with pytest.raises(DataError, match="pass model="):
        data.calibration_windows(None, "self", 1, 4)


def test_local_train_file_is_preferred_for_calibration(tmp_path):
    raw = tmp_path / "wikitext-2-raw"
    raw.mkdir()
    (raw / "wiki.train.raw").write_text(" \n" + " = Train = \n" * 40)
    (raw / "wiki.valid.raw").write_text(" \n" + " = Valid = \n" * 40)
    w = data.calibration_windows(chars, "wikitext2", nsamples=2, seqlen=30, data_dir=tmp_path)
    assert "Train" in "".join(chr(i) for i in w.flatten().tolist())
    (raw / "wiki.train.raw").unlink()
    w = data.calibration_windows(chars, "wikitext2", nsamples=2, seqlen=30, data_dir=tmp_path)
    assert "Valid" in "".join(chr(i) for i in w.flatten().tolist())
