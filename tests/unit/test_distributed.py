"""Many processes through torch.distributed (prunekit.distributed, runner, pipeline): `torchrun --nproc_per_node 2
-m prunekit prune ...` on CPU (gloo) writes the single-process output -- same zero patterns and widths, weights
within float tolerance -- resumes a single-process run, and stops every rank with the message when one rank fails.

Cost: two torchrun launches (one `-m prunekit prune`, one driver running several CLI calls in the same two
processes) and one `torch.multiprocessing.spawn` pair for the collective helpers.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.hf

REPO = Path(__file__).resolve().parents[2]
COMMON = ["--calib", "CALIB", "--nsamples", "6", "--seqlen", "24", "--no-progress"]
CASES = {  # name -> method flags
    "wanda": ["--method", "wanda", "--structure", "unstructured", "--sparsity", "0.5"],
    "sparsegpt24": ["--method", "sparsegpt", "--structure", "2:4"],
    "fasp": ["--method", "fasp", "--structure", "channels", "--sparsity", "0.3", "--attention", "vo_channels"],
}
DRIVER = """
import faulthandler, json, os, sys
faulthandler.dump_traceback_later(120, exit=True)  # a hanging rank shows where, then exits
from prunekit.cli import main
codes = [main(argv) for argv in json.loads(open(sys.argv[1]).read())]
open(sys.argv[2] + "." + os.environ["RANK"], "w").write(json.dumps(codes))
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(args: list[str], cwd: Path) -> subprocess.Popen:
    """Start two CPU processes under torchrun (gloo), each with one thread and a free master port."""
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    env = dict(os.environ, OMP_NUM_THREADS="1", MASTER_PORT=str(_free_port()), PYTHONPATH=path)
    env.pop("WORLD_SIZE", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args]
    return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen, timeout: float = 150) -> subprocess.CompletedProcess:
    """Wait for a torchrun; on a timeout it gets SIGTERM, which stops its workers too, and the test fails."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
        pytest.fail(f"torchrun did not finish in {timeout}s (a rank hangs?): {err[-3000:]}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _common(root: Path, out: Path) -> list[str]:
    return [str(root / "calib.txt") if a == "CALIB" else a for a in COMMON] + ["--out", str(out)]


def _argv(root: Path, case: str, out: Path, *extra: str) -> list[str]:
    return ["prune", "--model", str(root / "src"), *CASES[case], *_common(root, out), *extra]


def _rank_one_fails_module(folder: Path) -> Path:
    """A user formulation (the one of _checkpoints) whose solver raises on rank 1 only."""
    from _checkpoints import CUSTOM_FORMULATION

    text = CUSTOM_FORMULATION.replace(
        "    def run(self, f, options):\n",
        "    def run(self, f, options):\n"
        "        import os\n"
        "        from prunekit.errors import NumericalError\n"
        "        if os.environ.get('RANK') == '1':\n"
        "            raise NumericalError('deliberate failure on rank 1. Fix: none, this is a test.')\n")
    path = folder / "rank_one_fails.py"
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The distributed runs (two torchrun launches, started first) and the single-process references (in this
    process, one thread, while the launches run)."""
    from _checkpoints import calibration_file, write_checkpoint
    from prunekit.cli import build_parser, main
    from prunekit.cli.prune import build_recipe
    from prunekit.models.pipeline import prune_checkpoint

    root = tmp_path_factory.mktemp("dist")
    write_checkpoint(root / "src", layers=3)
    calibration_file(root)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        # a single-process run stopped after block 0 (committed), resumed below by two processes
        recipe = build_recipe(build_parser().parse_args(_argv(root, "wanda", root / "resumed")), None)

        def stop(index, seconds):
            if index == 0:
                raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            prune_checkpoint(root / "src", recipe, root / "resumed", progress=False, echo=None, on_block=stop)
        foreign = root / "foreign"
        foreign.mkdir()
        (foreign / "notes.txt").write_text("mine")
        failing = _rank_one_fails_module(root)
        batch = [_argv(root, "sparsegpt24", root / "dist_sparsegpt24"),
                 _argv(root, "fasp", root / "dist_fasp"),
                 _argv(root, "wanda", root / "resumed", "--resume"),
                 _argv(root, "wanda", foreign),  # rank 0's output check fails: every rank stops with its message
                 ["prune", "--model", str(root / "src"), "--method", f"{failing}:EnergyChannelDrop", "--structure",
                  "channels", "--sparsity", "0.25", "--attention", "vo_channels", *_common(root, root / "failed")]]
        (root / "batch.json").write_text(json.dumps(batch))
        (root / "driver.py").write_text(DRIVER)
        launches = [_torchrun(["-m", "prunekit", *_argv(root, "wanda", root / "dist_wanda")], cwd=root),
                    _torchrun([str(root / "driver.py"), str(root / "batch.json"), str(root / "codes")], cwd=root)]
        try:
            for case in CASES:
                assert main(_argv(root, case, root / f"single_{case}")) == 0
        finally:
            single, driven = (_finish(p) for p in launches)
    finally:
        torch.set_num_threads(threads)
    return root, single, driven


def _tensors(folder: Path) -> dict[str, torch.Tensor]:
    from _checkpoints import tensors_of

    return tensors_of(folder)


def _assert_same_model(a: Path, b: Path) -> None:
    """Same tensor names, shapes, zero patterns and config widths; values within float tolerance."""
    ta, tb = _tensors(a), _tensors(b)
    assert set(ta) == set(tb)
    for name in ta:
        x, y = ta[name], tb[name]
        assert x.shape == y.shape, name
        assert torch.equal(x == 0, y == 0), f"{name}: zero patterns differ"
        scale = float(x.abs().max()) or 1.0
        # float32 statistics summed in another order (windows split across ranks): the restorations differ at
        # float32 rounding times the conditioning of G, measured up to 2.1e-5 * max|W| on these V/O channels
        torch.testing.assert_close(y, x, rtol=1e-4, atol=1e-4 * scale, msg=name)
    config = [json.loads((f / "config.json").read_text()) for f in (a, b)]
    for key in ("intermediate_size", "num_attention_heads", "num_key_value_heads", "hidden_size", "head_dim"):
        assert config[0].get(key) == config[1].get(key), key


def test_torchrun_prunekit_prune_equals_the_single_process_run(runs):
    """Property: `torchrun --nproc_per_node 2 -m prunekit prune` (wanda 50%) writes the single-process model; rank 0
    alone prints the summary and the plan records the two processes."""
    root, single, _ = runs
    assert single.returncode == 0, single.stderr[-3000:]
    assert single.stdout.count("saved to") == 1  # rank 0 alone prints
    _assert_same_model(root / "single_wanda", root / "dist_wanda")
    plan = json.loads((root / "dist_wanda" / "plan" / "plan.json").read_text())
    assert plan["provenance"]["processes"] == 2
    report = json.loads((root / "dist_wanda" / "report.json").read_text())
    assert len(report["layers"]) == 7 * 3 and report["calibration_shape"] == [6, 24]


@pytest.mark.parametrize("case", ["sparsegpt24", "fasp"])
def test_two_processes_equal_one_for_nm_and_channels(runs, case):
    """Property: sparsegpt 2:4 and fasp channels (MLP + V/O channels) in two processes give the single-process masks,
    widths and weights (the statistics of all windows reach the solving rank)."""
    root, _, driven = runs
    assert driven.returncode == 0, driven.stderr[-3000:]
    _assert_same_model(root / f"single_{case}", root / f"dist_{case}")
    if case == "fasp":
        widths = [json.loads((root / f / "config.json").read_text())["intermediate_size"] for f in
                  ("src", f"dist_{case}")]
        assert widths[1] < widths[0]


def test_two_processes_resume_a_single_process_run(runs):
    """Property: --resume under torchrun continues a run killed after block 0 (rank 0 reads the resume point and
    the committed block) and writes the uninterrupted model."""
    root, _, driven = runs
    codes = [json.loads((root / f"codes.{r}").read_text()) for r in (0, 1)]
    assert codes[0][2] == codes[1][2] == 0, driven.stderr[-3000:]
    assert json.loads((root / "resumed" / "report.json").read_text())["resumed_from_block"] == 1
    _assert_same_model(root / "single_wanda", root / "resumed")


def test_an_error_on_one_rank_stops_every_rank_with_its_message(runs):
    """Property: rank 0's output check (a folder prunekit did not write) and a solver failure on rank 1 each end
    both processes with exit status 2 and the message -- no hang, the group stays usable, nothing is written."""
    root, _, driven = runs
    codes = [json.loads((root / f"codes.{r}").read_text()) for r in (0, 1)]
    assert codes[0][3:] == codes[1][3:] == [2, 2], driven.stderr[-3000:]
    assert driven.stderr.count("deliberate failure on rank 1") == 2  # printed by both ranks
    assert "foreign" in driven.stderr and (root / "foreign" / "notes.txt").read_text() == "mine"
    assert not (root / "failed").exists()


# ------------------------------------------------------------------------------------- collective helpers
def _helpers_worker(rank: int, world: int, store: str) -> None:
    import torch.distributed as dist

    from prunekit.distributed import current
    from prunekit.errors import DataError, ModelError
    from prunekit.formulations import GramAccumulator

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=60))
    try:
        ctx = current()
        assert ctx.active and ctx.rank == rank and ctx.world_size == world
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(5, 7, 6, generator=gen, dtype=torch.float64)
        xs = x + 0.1 * torch.randn(5, 7, 6, generator=gen, dtype=torch.float64)
        full = GramAccumulator(6, track_star=True)
        for i in range(5):
            full.update(x[i], xs[i])
        for dst in (None, 1):
            part = GramAccumulator(6, track_star=True)
            for i in range(5)[rank::world]:  # the windows local_windows gives this rank
                part.update(x[i], xs[i])
            ctx.reduce_statistics_(part, dst=dst)
            if dst is None or dst == rank:
                for name in ("gram", "sum", "gram_star", "cross_gram"):
                    torch.testing.assert_close(getattr(part, name), getattr(full, name), rtol=1e-12, atol=1e-12)
                assert part.num_tokens == full.num_tokens == 35
            else:
                assert part.num_tokens < 35  # only the owner receives the sum
        assert ctx.local_windows(torch.arange(5).reshape(5, 1)).flatten().tolist() == [[0, 2, 4], [1, 3]][rank]
        # bit-exact transport of any dtype, nested, from any rank
        sent = {"w": torch.randn(3, 4, generator=gen).to(torch.bfloat16), "m": torch.rand(4, generator=gen) > 0.5,
                "e": torch.empty(0, 3), "rest": (7, "x", None)}
        got = ctx.broadcast(sent if rank == 1 else None, src=1)
        for key in ("w", "m", "e"):
            assert got[key].dtype == sent[key].dtype and torch.equal(got[key], sent[key]), key
        assert got["rest"] == (7, "x", None)
        assert ctx.owners([5, 100, 7, 90]) == [1, 0, 1, 1]  # longest first to the least loaded rank
        # an error on rank 1 reaches rank 0 (same type and message); rank 0's from_main error reaches rank 1
        for fn, kind, text in ((lambda: ctx.checked(_fail_on, 1, DataError("bad rank 1 data. Fix: x")),
                                DataError, "bad rank 1 data"),
                               (lambda: ctx.from_main(lambda: _fail_on(0, ModelError("rank 0 output. Fix: y"))),
                                ModelError, "rank 0 output")):
            try:
                fn()
            except kind as exc:
                assert text in str(exc)
            else:
                raise AssertionError(f"rank {rank}: {kind.__name__} was not raised")
        assert ctx.checked(lambda: rank) == rank  # the group is still in step
    finally:
        dist.destroy_process_group()


def _fail_on(rank: int, exc: Exception) -> None:
    import torch.distributed as dist

    if dist.get_rank() == rank:
        raise exc


def test_collective_helpers_sum_statistics_move_tensors_and_errors(tmp_path):
    """Property: over two gloo processes the per-rank statistics sum to the single-process accumulator (all
    ranks, or the owner only); broadcasts are bit-exact for bf16/bool/empty tensors; an exception on one rank is
    raised on every rank and the group stays usable."""
    import torch.multiprocessing as mp

    mp.spawn(_helpers_worker, args=(2, str(tmp_path / "store")), nprocs=2, join=True)


def test_single_process_context_is_plain_calls():
    """Property: without a process group every helper is the identity / a plain call (today's code path)."""
    from prunekit.distributed import SINGLE, current, session

    assert current() is SINGLE and not SINGLE.active and SINGLE.is_main
    tokens = torch.zeros(3, 4, dtype=torch.long)
    assert SINGLE.local_windows(tokens) is tokens and SINGLE.owners([3, 1]) == [0, 0]
    payload = {"a": torch.ones(2)}
    assert SINGLE.broadcast(payload, src=0) is payload and SINGLE.from_main(lambda: 5) == 5
    t = torch.ones(3)
    assert SINGLE.reduce_(t) is t and float(t.sum()) == 3.0
    with session("cpu") as (ctx, device):
        assert ctx is SINGLE and device == torch.device("cpu")


# ------------------------------------------------------------------------------------- prunekit.bench
def test_bench_helpers_time_a_prune_and_a_calibration_forward():
    """Property: timed_prune prunes the model and returns its wall time and RunReport; calibration_forward_time
    times one forward pass of the recipe's windows and leaves the model unchanged."""
    from _hf_tiny import tiny_model

    from prunekit.bench import calibration_forward_time, timed_prune

    model = tiny_model("llama")
    recipe = dict(method="wanda", structure="unstructured", sparsity=0.5, calibration=dict(nsamples=2, seqlen=8))
    tokens = torch.randint(0, 300, (2, 8), generator=torch.Generator().manual_seed(0))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        forward = calibration_forward_time(model, recipe, tokens)
        assert forward > 0 and all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
        timed = timed_prune(model, recipe, tokens)
    finally:
        torch.set_num_threads(threads)
    assert timed.wall_s > 0 and timed.report.calibration_shape == (2, 8)
    assert timed.report.nonzero_params_after < timed.report.nonzero_params_before
