"""Tests of prunekit.models.output: the ``--out`` folder lifecycle never loses a user's file."""

from __future__ import annotations

import collections
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

import prunekit
from prunekit.errors import ModelError
from prunekit.models.output import OUTPUT_MARKER, OutputFolder, is_prunekit_output

FP = {"model": "tiny", "recipe": {"sparsity": 0.5, "method": "wanda"}}
PKG_DIR = str(Path(prunekit.__file__).parent)


@pytest.fixture
def env(tmp_path, monkeypatch):
    """cwd = tmp/work/sub, HOME = tmp/home, umask 022; returns tmp_path."""
    work = tmp_path / "work" / "sub"
    home = tmp_path / "home"
    for d in (work, home, tmp_path / "outs"):
        d.mkdir(parents=True)
    (work / "notes.txt").write_text("my notes")
    (home / ".bashrc").write_text("export X=1")
    monkeypatch.chdir(work)
    monkeypatch.setenv("HOME", str(home))
    old = os.umask(0o022)
    yield tmp_path
    os.umask(old)


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def make_output(folder: Path, content: str = "old weights") -> None:
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_text(content)
    (folder / OUTPUT_MARKER).write_text(json.dumps({"kind": "old"}))


def hidden(out: Path, suffix: str) -> Path:
    return out.parent / f".{out.name}.{suffix}"


# ---------------------------------------------------------------------------------------------- refusals
@pytest.mark.parametrize("which", ["cwd", "dot", "cwd_parent", "home", "home_parent", "root"])
def test_refuses_precious_folders_even_with_overwrite(env, which):
    target = {"cwd": Path.cwd(), "dot": ".", "cwd_parent": env / "work", "home": env / "home",
              "home_parent": env, "root": "/"}[which]
    before = snapshot(env)
    with pytest.raises(ModelError, match="refusing --out .*Fix:"):
        OutputFolder.open(target, overwrite=True, resume=True, fingerprint=FP)
    assert snapshot(env) == before
    assert not list(env.rglob("*.prunekit*"))


@pytest.mark.parametrize("rel", ["model", "model/sub/out", "."])
def test_refuses_protected_input_folder_its_inside_and_its_parent(env, rel):
    model = env / "outs" / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    before = snapshot(env)
    with pytest.raises(ModelError, match="protected folder"):
        OutputFolder.open(env / "outs" / rel, overwrite=True, fingerprint=FP, protected=[model])
    assert snapshot(env) == before


def test_refuses_non_prunekit_folder_even_with_overwrite(env):
    out = env / "outs" / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("years of work")
    before = snapshot(env)
    for kw in ({}, {"overwrite": True}, {"overwrite": True, "resume": True}):
        with pytest.raises(ModelError, match="not written by prunekit .*never deletes folders it did not write.*Fix"):
            OutputFolder.open(out, fingerprint=FP, **kw)
    assert snapshot(env) == before
    assert not hidden(out, "prunekit.lock").exists()


def test_refuses_a_file_and_a_symlink(env):
    f = env / "outs" / "file.bin"
    f.write_bytes(b"\x00data")
    link = env / "outs" / "link"
    link.symlink_to(env / "home")
    with pytest.raises(ModelError, match="not a folder"):
        OutputFolder.open(f, overwrite=True, fingerprint=FP)
    with pytest.raises(ModelError, match="symbolic link"):
        OutputFolder.open(link, overwrite=True, fingerprint=FP)
    assert f.read_bytes() == b"\x00data" and link.is_symlink() and (env / "home" / ".bashrc").exists()


def test_prunekit_output_replaced_only_with_overwrite(env):
    out = env / "outs" / "pruned"
    make_output(out)
    with pytest.raises(ModelError, match="exists; pass --overwrite to replace this prunekit output"):
        OutputFolder.open(out, fingerprint=FP)
    assert (out / "model.safetensors").read_text() == "old weights"
    with OutputFolder.open(out, overwrite=True, fingerprint=FP) as o:
        assert (out / "model.safetensors").read_text() == "old weights"  # untouched until finish
        o.write_file("model.safetensors", b"new weights")
        assert o.finish({"kind": "new"}) == out
    assert (out / "model.safetensors").read_text() == "new weights"
    assert json.loads((out / OUTPUT_MARKER).read_text())["kind"] == "new"
    assert sorted(p.name for p in out.parent.iterdir()) == ["pruned"]


def test_empty_folder_is_replaced(env):
    out = env / "outs" / "empty"
    out.mkdir()
    with OutputFolder.open(out, fingerprint=FP) as o:
        o.write_file("a.txt", "a")
        o.finish({})
    assert (out / "a.txt").read_text() == "a" and is_prunekit_output(out)


def test_finish_rechecks_out_and_keeps_partial(env):
    out = env / "outs" / "late"
    o = OutputFolder.open(out, fingerprint=FP)
    o.write_file("w.bin", b"w")
    out.mkdir()
    (out / "user.txt").write_text("added meanwhile")
    with pytest.raises(ModelError, match="not written by prunekit"):
        o.finish({})
    o.close()
    assert (out / "user.txt").read_text() == "added meanwhile" and sorted(os.listdir(out)) == ["user.txt"]
    assert (o.partial / "w.bin").read_bytes() == b"w"


# ---------------------------------------------------------------------------------------------- lock
def test_second_open_fails_while_locked_then_succeeds_after_close(env):
    out = env / "outs" / "pruned"
    first = OutputFolder.open(out, fingerprint=FP)
    lock = hidden(out, "prunekit.lock")
    assert lock.read_text().strip() == str(os.getpid())
    with pytest.raises(ModelError, match=rf"another prunekit run \(pid {os.getpid()}\) is writing .*pruned"):
        OutputFolder.open(out, resume=True, fingerprint=FP)
    first.close()
    assert not lock.exists()
    with OutputFolder.open(out, resume=True, fingerprint=FP) as second:
        assert second.resumed


def test_lock_released_when_process_is_killed(env):
    out = env / "outs" / "pruned"
    code = (  # loads output.py without importing torch, to stay fast
        "import os, sys, types\n"
        f"pkg = types.ModuleType('prunekit'); pkg.__path__ = [{PKG_DIR!r}]; pkg.__version__ = 'test'\n"
        "sys.modules['prunekit'] = pkg\n"
        "from prunekit.models.output import OutputFolder\n"
        f"o = OutputFolder.open({str(out)!r}, fingerprint={FP!r})\n"
        "o.write_file('block0.bin', b'done')\n"
        "o.write_state({'done': 1})\n"
        "os.kill(os.getpid(), 9)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert proc.returncode == -9, proc.stderr
    lock = hidden(out, "prunekit.lock")
    assert lock.exists() and lock.read_text().strip() != str(os.getpid())  # stale lock file of the dead pid
    assert not out.exists()
    with OutputFolder.open(out, resume=True, fingerprint=FP) as o:
        assert o.resumed and o.read_state() == {"done": 1}
        assert o.path("block0.bin").read_bytes() == b"done"


# ---------------------------------------------------------------------------------------------- resume
def _killed_run(out: Path, fp=FP) -> OutputFolder:
    o = OutputFolder.open(out, fingerprint=fp)
    o.write_file("blocks/0.bin", b"block zero")
    o.write_state({"next_block": 1})
    o.close()
    return o


def test_resume_same_fingerprint(env):
    out = env / "outs" / "pruned"
    _killed_run(out)
    with OutputFolder.open(out, resume=True, fingerprint=json.loads(json.dumps(FP))) as o:
        assert o.resumed and o.read_state() == {"next_block": 1}
        assert (o.partial / "blocks" / "0.bin").read_bytes() == b"block zero"
        o.write_file("blocks/1.bin", b"block one")
        o.finish({"n": 2})
    assert sorted(p.name for p in (out / "blocks").iterdir()) == ["0.bin", "1.bin"]


def test_resume_different_fingerprint_names_keys(env):
    out = env / "outs" / "pruned"
    o = _killed_run(out)
    before = snapshot(o.partial)
    fp = {"model": "tiny", "recipe": {"sparsity": 0.3, "method": "wanda"}, "seed": 1}
    with pytest.raises(ModelError) as e:
        OutputFolder.open(out, resume=True, fingerprint=fp)
    msg = str(e.value)
    assert "recipe.sparsity: 0.5 (partial) != 0.3 (now)" in msg and "seed: <absent> (partial) != 1 (now)" in msg
    assert "method" not in msg and "Fix:" in msg and "--overwrite" in msg
    assert snapshot(o.partial) == before


def test_existing_partial_without_resume_is_an_error(env):
    out = env / "outs" / "pruned"
    o = _killed_run(out)
    before = snapshot(o.partial)
    with pytest.raises(ModelError, match=r"an unfinished run exists at .*\(started 20.*Fix: --resume .*--overwrite"):
        OutputFolder.open(out, fingerprint=FP)
    assert snapshot(o.partial) == before


def test_overwrite_discards_partial(env):
    out = env / "outs" / "pruned"
    _killed_run(out)
    with OutputFolder.open(out, overwrite=True, fingerprint={"other": True}) as o:
        assert not o.resumed and o.read_state() == {}
        assert not (o.partial / "blocks").exists()
        assert any("discarded" in n for n in o.notes)


def test_resume_without_partial_starts_fresh(env):
    with OutputFolder.open(env / "outs" / "new", resume=True, fingerprint=FP) as o:
        assert not o.resumed and o.partial.is_dir() and o.notes == []


def test_partial_looking_folder_without_marker_is_never_deleted(env):
    out = env / "outs" / "pruned"
    fake = hidden(out, "prunekit-partial")
    fake.mkdir()
    (fake / "data.txt").write_text("not prunekit's")
    before = snapshot(env)
    for kw in ({}, {"resume": True}, {"overwrite": True}, {"overwrite": True, "resume": True}):
        with pytest.raises(ModelError, match=r"no prunekit_partial\.json.*Fix"):
            OutputFolder.open(out, fingerprint=FP, **kw)
    assert snapshot(env) == before


def test_leftover_old_outputs_cleaned_only_if_prunekit(env):
    out = env / "outs" / "pruned"
    make_output(hidden(out, "prunekit-old-123"))
    foreign = hidden(out, "prunekit-old-456")
    foreign.mkdir()
    (foreign / "keep.txt").write_text("keep")
    with OutputFolder.open(out, fingerprint=FP) as o:
        assert len(o.notes) == 1 and "prunekit-old-123" in o.notes[0]
    assert not hidden(out, "prunekit-old-123").exists() and (foreign / "keep.txt").read_text() == "keep"


# ---------------------------------------------------------------------------------------------- writing/finish
def test_finish_publishes_with_marker_and_normal_permissions(env):
    out = env / "outs" / "deep" / "pruned"  # parent created
    with OutputFolder.open(out, fingerprint=FP) as o:
        assert oct(stat.S_IMODE(o.partial.stat().st_mode)) == oct(0o755)
        o.write_file("model.safetensors", b"\x01\x02")
        o.write_json("sub/config.json", {"b": 1, "a": [1, 2]})
        o.write_state({"next": 3})
        o.path("own.bin").write_bytes(b"own")
        assert not out.exists() and not is_prunekit_output(o.partial.parent / "pruned")
        o.finish({"model": "tiny", "sparsity": 0.5})
    assert not o.partial.exists() and not hidden(out, "prunekit.lock").exists()
    marker = json.loads((out / OUTPUT_MARKER).read_text())
    assert marker["model"] == "tiny" and marker["prunekit_version"] == prunekit.__version__
    assert marker["finished"].startswith("20") and marker["fingerprint"] == FP
    names = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    assert names == ["model.safetensors", "own.bin", OUTPUT_MARKER, "sub", "sub/config.json"]
    assert json.loads((out / "sub" / "config.json").read_text()) == {"a": [1, 2], "b": 1}
    for p in [out, *out.rglob("*")]:
        want = 0o755 if p.is_dir() else 0o644
        assert stat.S_IMODE(p.stat().st_mode) == want, p
    assert sorted(p.name for p in out.parent.iterdir()) == ["pruned"]
    with pytest.raises(ModelError, match="already finished"):
        o.write_file("late.txt", "x")


def test_write_rejects_escaping_and_reserved_paths(env):
    with OutputFolder.open(env / "outs" / "p", fingerprint=FP) as o:
        for bad in ("../escape.txt", "/abs.txt", OUTPUT_MARKER, "prunekit_progress.json"):
            with pytest.raises(ModelError):
                o.write_file(bad, "x")
        o.write_file("a.txt", "one")
        o.write_file("a.txt", "two")
        assert sorted(os.listdir(o.partial)) == ["a.txt", "prunekit_partial.json"]  # no temp files left
        assert (o.partial / "a.txt").read_text() == "two"
    assert not (env / "outs" / "escape.txt").exists()


def test_free_space_check(env, monkeypatch):
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10 * 2**30, 9 * 2**30, 2**30))
    out = env / "outs" / "pruned"
    with pytest.raises(ModelError, match=r"1\.00 GiB free, 3\.00 GiB needed.*Fix"):
        OutputFolder.open(out, fingerprint=FP, needed_bytes=3 * 2**30)
    assert not hidden(out, "prunekit-partial").exists() and not hidden(out, "prunekit.lock").exists()
    OutputFolder.open(out, fingerprint=FP, needed_bytes=2**29).close()


def test_failure_before_finish_leaves_out_absent(env):
    out = env / "outs" / "pruned"
    with pytest.raises(RuntimeError):
        with OutputFolder.open(out, fingerprint=FP) as o:
            o.write_file("model.safetensors", b"half")
            raise RuntimeError("solver crashed")
    assert not out.exists() and (o.partial / "model.safetensors").read_bytes() == b"half"
    assert not hidden(out, "prunekit.lock").exists()


def test_run_killed_inside_finish_is_recognized_and_empty_partial_is_harmless(env):
    out = env / "outs" / "pruned"
    partial = hidden(out, "prunekit-partial")
    partial.mkdir()  # killed between mkdir and writing the marker: empty, nothing to lose
    with OutputFolder.open(out, fingerprint=FP) as o:
        assert not o.resumed
        o.write_file("w.bin", b"w")
    (partial / "prunekit_partial.json").unlink()  # killed inside finish(): only the output marker is left
    (partial / OUTPUT_MARKER).write_text(json.dumps({"fingerprint": FP}))
    with OutputFolder.open(out, resume=True, fingerprint=FP) as o:
        assert o.resumed and not (partial / OUTPUT_MARKER).exists() and (partial / "w.bin").exists()
    with OutputFolder.open(out, resume=True, overwrite=True, fingerprint={"new": 1}) as o:
        assert not o.resumed and not (partial / "w.bin").exists()
