"""Resumable runs (prunekit.models.pipeline + sinks): kill -9 at any moment, then --resume gives tensors identical to
an uninterrupted run, solving only the blocks that were not committed; different settings refuse to resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from _checkpoints import calibration_file, recipe_dict, tensors_of, write_checkpoint
from prunekit.errors import ModelError
from prunekit.models.pipeline import prune_checkpoint

pytestmark = pytest.mark.hf

LAYERS = 5
RUN = """
import json, os, signal, sys
from prunekit.models.pipeline import prune_checkpoint
src, recipe, out, kill_after = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3], int(sys.argv[4])
def on_block(index, seconds):
    if index == kill_after:
        os.kill(os.getpid(), signal.SIGKILL)
prune_checkpoint(src, recipe, out, progress=False, echo=None, on_block=on_block)
"""


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    src = write_checkpoint(root / "src", layers=LAYERS, dtype=torch.bfloat16)
    recipe = recipe_dict(calibration_file(root), method="sparsegpt", structure="unstructured", sparsity=0.5)
    reference = root / "reference"
    prune_checkpoint(src, recipe, reference, progress=False, echo=None)
    return root, src, recipe, tensors_of(reference)


def _spawn(src, recipe, out, kill_after=-1, threads=None) -> subprocess.Popen:
    env = None if threads is None else {**os.environ, "OMP_NUM_THREADS": str(threads)}
    return subprocess.Popen([sys.executable, "-c", RUN, str(src), json.dumps(recipe), str(out), str(kill_after)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)


def _count_solved_blocks(monkeypatch) -> list[int]:
    from prunekit.models import runner

    solved = []
    original = runner.prune_block

    def counting(store, index, *args, **kwargs):
        solved.append(index)
        return original(store, index, *args, **kwargs)

    monkeypatch.setattr(runner, "prune_block", counting)
    return solved


def _assert_identical(a: dict, b: dict) -> None:
    assert set(a) == set(b)
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_kill_after_a_committed_block_then_resume_is_identical_and_solves_only_the_rest(setup, monkeypatch):
    root, src, recipe, reference = setup
    out = root / "killed"
    proc = _spawn(src, recipe, out, kill_after=2)
    assert proc.wait(timeout=120) == -signal.SIGKILL
    assert not out.exists(), "a killed run must leave nothing that looks finished at --out"
    solved = _count_solved_blocks(monkeypatch)
    report = prune_checkpoint(src, recipe, out, resume=True, progress=False, echo=None)
    assert report.resumed_from_block == 3 and solved == [3, 4]
    assert len(report.layers) == 7 * LAYERS  # records of the committed blocks are kept
    _assert_identical(tensors_of(out), reference)


@pytest.mark.parametrize("delay", [0.0, 1.5, 3.0])
def test_kill_at_an_arbitrary_moment_then_resume_is_identical(setup, delay):
    """kill -9 after ``delay`` seconds, wherever the run is (start-up, mid block, writing a shard, finishing)."""
    root, src, recipe, reference = setup
    out = root / f"killed-{delay}"
    proc = _spawn(src, recipe, out)
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    if out.exists():  # the run finished before the kill: it must then be complete
        _assert_identical(tensors_of(out), reference)
        return
    prune_checkpoint(src, recipe, out, resume=True, progress=False, echo=None)
    _assert_identical(tensors_of(out), reference)


def test_resume_with_other_settings_is_refused_and_says_why(setup):
    root, src, recipe, _ = setup
    out = root / "other-settings"
    assert _spawn(src, recipe, out, kill_after=1).wait(timeout=120) == -signal.SIGKILL
    changed = dict(recipe, sparsity=0.6)
    with pytest.raises(ModelError, match=r"recipe\.sparsity"):
        prune_checkpoint(src, changed, out, resume=True, progress=False, echo=None)
    with pytest.raises(ModelError, match="--resume"):  # without --resume, the unfinished run is not discarded
        prune_checkpoint(src, recipe, out, progress=False, echo=None)
    partial = Path(out.parent) / f".{out.name}.prunekit-partial"
    assert partial.is_dir(), "the unfinished run must survive refused attempts"


def test_second_run_on_the_same_out_is_locked_out(setup):
    root, src, recipe, _ = setup
    out = root / "locked"
    proc = _spawn(src, recipe, out)
    deadline = time.time() + 60
    lock = out.parent / f".{out.name}.prunekit.lock"
    while not lock.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    try:
        if proc.poll() is None:
            with pytest.raises(ModelError, match="another prunekit run"):
                prune_checkpoint(src, recipe, out, progress=False, echo=None)
    finally:
        proc.kill()
        proc.wait()
    assert os.path.exists(out.parent)


def _generic_checkpoint(folder: Path, kind: str, layers: int = 4) -> Path:
    """A tiny model with no family adapter (channels come from groups derived during the run), ``layers`` blocks."""
    from _hf_tiny import save_config_checkpoint
    from test_generic_adapter import tiny_config

    config = tiny_config(kind)
    config.num_hidden_layers = layers
    if getattr(config, "layer_types", None):
        config.layer_types = [config.layer_types[0]] * layers
    return save_config_checkpoint(folder, config)


@pytest.mark.parametrize("kind, allocation", [("phi3", "softmax"), ("mixtral", "uniform")])
def test_channels_of_a_model_without_adapter_resume_identically(tmp_path, monkeypatch, one_thread, kind, allocation):
    """Property: a channel run through the generic adapter (groups derived block by block; MoE experts pruned one
    by one and fused back) killed after block 1 resumes to the uninterrupted run's tensors and config, solving only
    blocks 2 and 3 (before: the committed blocks' groups did not exist in the resumed process and it stopped).
    One torch thread in both processes: MoE routing in float32 is bitwise-reproducible only at equal thread counts."""
    src = _generic_checkpoint(tmp_path / "src", kind)
    recipe = recipe_dict(calibration_file(tmp_path), method="fasp", structure="channels", sparsity=0.3,
                         allocation=allocation)
    prune_checkpoint(src, recipe, tmp_path / "reference", progress=False, echo=None)
    out = tmp_path / "killed"
    assert _spawn(src, recipe, out, kill_after=1, threads=1).wait(timeout=300) == -signal.SIGKILL
    solved = _count_solved_blocks(monkeypatch)
    report = prune_checkpoint(src, recipe, out, resume=True, progress=False, echo=None)
    assert report.resumed_from_block == 2 and solved == [2, 3]
    _assert_identical(tensors_of(out), tensors_of(tmp_path / "reference"))
    config = json.loads((out / "config.json").read_text())
    assert config == json.loads((tmp_path / "reference" / "config.json").read_text())


@pytest.mark.parametrize("fields", [
    dict(method="fasp", structure="channels", sparsity=0.3, attention="vo_channels"),
    dict(method="sparsegpt", structure="unstructured", sparsity=0.5,
         block_refit={"epochs": 2, "lr": 1e-3, "targets": "block"}),
    dict(method="sparsegpt", structure="unstructured", sparsity=0.5,
         block_refit={"epochs": 2, "lr": 1e-3, "targets": "dense_model"}),
], ids=["channels", "block_refit", "block_refit_dense_model"])
def test_a_family_model_run_resumes_identically_reading_each_committed_block_once(tmp_path, monkeypatch, one_thread,
                                                                                   fields):
    """Property: a LLaMA run killed after block 1 resumes to the uninterrupted run's tensors, config and records; the
    resumed process reads each committed block once (to rebuild it).  Channels: the groups need no extra read (the
    probe takes a kept calibration sample).  Block refit: the refitted blocks are committed as refitted and their
    records survive the kill; with the dense model's targets the dense stream reads each committed block's dense
    weights once more (twice in all), and the resumed stream is the uninterrupted one (identical tensors)."""
    from prunekit.models import stores

    src = write_checkpoint(tmp_path / "src", layers=4)
    recipe = recipe_dict(calibration_file(tmp_path), **fields)
    reference = prune_checkpoint(src, recipe, tmp_path / "reference", progress=False, echo=None)
    out = tmp_path / "killed"
    assert _spawn(src, recipe, out, kill_after=1, threads=1).wait(timeout=300) == -signal.SIGKILL
    solved = _count_solved_blocks(monkeypatch)
    reads: list[int] = []
    loaders = [c for c in vars(stores).values() if isinstance(c, type) and "load" in vars(c)]
    for cls in loaders:
        original = cls.load
        monkeypatch.setattr(cls, "load", lambda self, index, _o=original: reads.append(index) or _o(self, index))
    report = prune_checkpoint(src, recipe, out, resume=True, progress=False, echo=None)
    assert report.resumed_from_block == 2 and solved == [2, 3]
    once = 2 if "dense_model" in str(fields) else 1
    assert reads.count(0) == once and reads.count(1) == once, reads
    _assert_identical(tensors_of(out), tensors_of(tmp_path / "reference"))
    assert json.loads((out / "config.json").read_text()) == json.loads(
        (tmp_path / "reference" / "config.json").read_text())
    refitted = [0, 1, 2, 3] if "block_refit" in fields else []
    assert [x.block for x in report.refits] == [x.block for x in reference.refits] == refitted
    saved = json.loads((out / "report.json").read_text())["refits"]
    assert [x["block"] for x in saved] == refitted and all(x["kept"] for x in saved)
