"""What benchmark scripts need, so that they reduce to their experiment matrix (issue 10).

* :func:`timed_prune` -- ``prunekit.prune`` of a model in memory, timed (device synchronized), with the RunReport;
* :func:`calibration_forward_time` -- one plain forward pass of the calibration windows through the model (the
  denominator of "prune time / one calibration forward");
* :func:`timed_cli_prune` -- ``prunekit prune ...`` in a fresh process, or under ``torchrun --nproc_per_node N`` for
  N > 1 (many processes / GPUs), timed from outside, with the ``report.json`` it wrote.

Every timing is wall-clock seconds from :func:`time.perf_counter`; on CUDA the device is synchronized before the
clock starts and stops.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import torch


@dataclass(frozen=True)
class Timed:
    """A timed run: ``wall_s`` seconds; ``report`` (a RunReport, or the ``report.json`` dict of a CLI run, None when
    it failed); ``peak_device_bytes`` (CUDA high-water mark during the run in this process, else 0); for CLI runs
    the exit status and the end of stderr."""

    wall_s: float
    report: Any = None
    peak_device_bytes: int = 0
    returncode: int = 0
    stderr_tail: str = ""


def sync(device) -> None:
    """Wait for the device's queued work (CUDA); a no-op elsewhere."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _tokens(model, recipe, calibration, tokenizer, data_dir):
    from .api import calibration_tokens
    from .models.recipe import Recipe

    return calibration_tokens(Recipe.coerce(recipe), calibration, tokenizer=tokenizer, data_dir=data_dir, model=model)


def timed_prune(model, recipe, calibration, *, device="cpu", tokenizer=None, data_dir=None) -> Timed:
    """``prunekit.prune(model, recipe, calibration)`` (the model is pruned in place), timed.  The calibration windows
    are built before the clock starts, so the time is the pruning alone."""
    from . import prune

    tokens = _tokens(model, recipe, calibration, tokenizer, data_dir)
    cuda = torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    sync(device)
    t0 = time.perf_counter()
    result = prune(model, recipe, tokens, device=device, progress=False)
    sync(device)
    wall = time.perf_counter() - t0
    return Timed(wall, result.report, torch.cuda.max_memory_allocated(device) if cuda else 0)


@torch.no_grad()
def calibration_forward_time(model, recipe, calibration, *, device="cpu", tokenizer=None, data_dir=None,
                             batch_size: int = 1, warmup: int = 1) -> float:
    """Seconds of one plain forward pass of the recipe's calibration windows through ``model`` (on ``device``, in
    batches of ``batch_size`` windows, no cache, after ``warmup`` untimed batches); the model is left where it was."""
    from .calibration_set import CalibrationSet

    calib = CalibrationSet.coerce(_tokens(model, recipe, calibration, tokenizer, data_dir))
    original = next(model.parameters()).device
    model.to(device)
    try:
        batches = [(calib.input_ids[i:i + batch_size].to(device),
                    None if calib.attention_mask is None else calib.attention_mask[i:i + batch_size].long().to(device))
                   for i in range(0, len(calib), batch_size)]
        for ids, mask in batches[:warmup]:
            model(input_ids=ids, attention_mask=mask, use_cache=False)
        sync(device)
        t0 = time.perf_counter()
        for ids, mask in batches:
            model(input_ids=ids, attention_mask=mask, use_cache=False)
        sync(device)
        return time.perf_counter() - t0
    finally:
        model.to(original)


def timed_cli_prune(args: Sequence[str], out, *, nproc: int = 1, timeout: Optional[float] = None,
                    env: Optional[dict[str, str]] = None) -> Timed:
    """``prunekit prune ARGS --out OUT`` in a fresh process (``nproc`` 1) or under ``torchrun --standalone
    --nproc_per_node nproc`` (add ``--device cuda`` to ARGS for one GPU per process), timed from outside; the
    report is ``OUT/report.json`` when the run succeeded.  A timeout kills the launcher and returns code 124."""
    prune = ["-m", "prunekit", "prune", *args, "--out", str(out), "--no-progress"]
    launcher = [] if nproc <= 1 else ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc)]
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, *launcher, *prune], env={**os.environ, **(env or {})},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        _, err = proc.communicate(timeout=timeout)
        code = proc.returncode
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)  # torchrun stops its workers on SIGTERM
        _, err = proc.communicate()
        code = 124
    wall = time.perf_counter() - t0
    report_path = Path(out) / "report.json"
    report = json.loads(report_path.read_text()) if code == 0 and report_path.is_file() else None
    return Timed(wall, report, 0, code, err[-4000:])


__all__ = ["Timed", "calibration_forward_time", "sync", "timed_cli_prune", "timed_prune"]
