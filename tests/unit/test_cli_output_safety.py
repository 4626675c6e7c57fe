"""`prunekit prune --out` never deletes or changes what prunekit did not write, and output problems surface before
the model is loaded (one clear error, exit 2, no traceback)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from _checkpoints import calibration_file, write_checkpoint
from prunekit.cli import main

pytestmark = pytest.mark.hf


def _snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    src = write_checkpoint(tmp_path / "src")
    calib = calibration_file(tmp_path)
    (tmp_path / "notes.txt").write_text("the user's own file")
    monkeypatch.chdir(tmp_path)
    return tmp_path, src, calib


def _prune(src, calib, out, *extra) -> list[str]:
    return ["prune", "--model", str(src), "--method", "wanda", "--calib", str(calib), "--nsamples", "2",
            "--seqlen", "16", "--out", str(out), "--no-progress", *extra]


@pytest.fixture
def no_model_loading(monkeypatch):
    """Fail the test if the model would be opened (output checks must come first)."""
    from prunekit.models import stores

    def refuse(*args, **kwargs):
        raise AssertionError("the model was opened before the output location was checked")

    monkeypatch.setattr(stores.CheckpointBlocks, "__init__", refuse)


@pytest.mark.parametrize("out", [".", "..", "HOME", "/", "SRC"])
def test_protected_locations_are_refused_even_with_overwrite(workspace, out, capsys, no_model_loading, monkeypatch):
    root, src, calib = workspace
    monkeypatch.setenv("HOME", str(root))
    out = {"HOME": str(root), "SRC": str(src)}.get(out, out)
    before = _snapshot(root)
    assert main(_prune(src, calib, out, "--overwrite")) == 2
    err = capsys.readouterr().err
    assert "prunekit: error:" in err and "Fix:" in err and "Traceback" not in err
    assert _snapshot(root) == before


def test_a_folder_prunekit_did_not_write_is_never_replaced(workspace, capsys, no_model_loading):
    root, src, calib = workspace
    mine = root / "results"
    mine.mkdir()
    (mine / "thesis.tex").write_text("irreplaceable")
    before = _snapshot(root)
    assert main(_prune(src, calib, mine, "--overwrite")) == 2
    assert "was not written by prunekit" in capsys.readouterr().err
    assert _snapshot(root) == before


def test_overwrite_replaces_only_prunekits_own_output(workspace, capsys):
    root, src, calib = workspace
    out = root / "out"
    assert main(_prune(src, calib, out)) == 0
    first = _snapshot(out)
    assert main(_prune(src, calib, out)) == 2  # exists: refused without --overwrite
    assert "--overwrite" in capsys.readouterr().err and _snapshot(out) == first
    assert main(_prune(src, calib, out, "--sparsity", "0.6", "--overwrite")) == 0
    assert _snapshot(out) != first and (out / "prunekit_output.json").is_file()
    assert not list(root.glob(".out.prunekit-*")), "no temporary folder may be left behind"
    assert (root / "notes.txt").read_text() == "the user's own file"


def test_output_files_get_normal_permissions(workspace):
    root, src, calib = workspace
    old = os.umask(0o022)
    try:
        assert main(_prune(src, calib, root / "out")) == 0
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in (root / "out").rglob("*")}
    assert modes["config.json"] == 0o644 and modes["report.json"] == 0o644
    assert (root / "out").stat().st_mode & 0o777 == 0o755 and modes["plan"] == 0o755


def test_unwritable_parent_fails_before_loading(workspace, capsys, no_model_loading):
    root, src, calib = workspace
    if os.geteuid() == 0:  # root writes anywhere; use a parent that is a file instead
        blocker = root / "a-file"
        blocker.write_text("x")
        out = blocker / "out"
    else:
        locked = root / "locked"
        locked.mkdir(mode=0o500)
        out = locked / "out"
    assert main(_prune(src, calib, out)) == 2
    err = capsys.readouterr().err
    assert "prunekit: error:" in err and "Traceback" not in err
