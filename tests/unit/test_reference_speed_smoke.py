"""benchmarks/reference_speed.py without the refbench: the run plan, the prunekit-side runner on a tiny model, and
the report written from fake reference records (the references themselves run only where a refbench exists)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.hf

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture(scope="module")
def rs():
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location("_bench_reference_speed", BENCH / "reference_speed.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module


def _kinds(jobs):
    return [(j.rep, j.side, j.key) for j in jobs]


def test_plan_interleaves_pairs_and_shares_prunekit_runs(rs):
    jobs = rs.plan_jobs(["wanda-unstructured50", "flap-channels30", "flap-channels30-AL-MM"], reps=2)
    assert _kinds(jobs) == [
        (0, "forward", "forward"),
        (0, "reference", "wanda-unstructured50"), (0, "prunekit", "wanda-unstructured50"),
        (0, "reference", "flap-channels30"), (0, "prunekit", "flap-channels30"),
        (0, "reference", "flap-channels30-AL-MM"),
        (1, "forward", "forward"),
        (1, "prunekit", "wanda-unstructured50"), (1, "reference", "wanda-unstructured50"),
        (1, "prunekit", "flap-channels30"), (1, "reference", "flap-channels30"),
        (1, "reference", "flap-channels30-AL-MM"),
    ]
    assert len({j.name for j in jobs}) == len(jobs)  # one output file per job


def test_every_row_names_a_prunekit_run_and_a_buildable_recipe(rs):
    for row in rs.ROWS.values():
        run = rs.PRUNEKIT_RUNS[row.prunekit]
        recipe = rs.build_recipe(run, 4, 32)
        assert recipe.method.name == run.method and recipe.calibration.nsamples == 4


def test_smoke_defaults_and_unknown_rows(rs, tmp_path):
    args = rs.parse_args(["--smoke", "--work-dir", str(tmp_path)])
    assert (args.nsamples, args.seqlen, args.reps, args.rows) == (2, 64, 1, ["wanda-unstructured50"])
    assert Path(args.out).parent == tmp_path  # a smoke run never overwrites benchmarks/REFERENCE_SPEED.md
    with pytest.raises(SystemExit):
        rs.parse_args(["--rows", "nosuch"])


def test_missing_refbench_is_one_clear_error(rs, tmp_path):
    args = rs.parse_args(["--refbench", str(tmp_path), "--rows", "sparsegpt-2:4"])
    with pytest.raises(SystemExit) as err:
        rs.check_refbench(args)
    assert "glue_sparsegpt.py" in str(err.value) and "Fix:" in str(err.value)
    args = rs.parse_args(["--rows", "wanda-2:4"])
    args.refbench = None
    with pytest.raises(SystemExit, match="Fix:"):
        rs.check_refbench(args)


def test_what_else_ran_names_programs_never_their_arguments(rs):
    assert rs.describe_command('/opt/tool --env {"TOKEN": "secret"}') == "tool"
    assert rs.describe_command("/x/.venv/bin/python -u -m pytest -q tests") == "python -m pytest"
    assert rs.describe_command("python3 /tmp/job/run.py --key secret") == "python3 run.py"
    assert all("secret" not in line for line in rs.busy_processes())


def _fake_launch(times):
    """A launcher that answers each job from its command line with a made-up record."""
    seen = []

    def launch(argv, out, *, threads, timeout):
        seen.append(argv)
        if "--forward-one" in argv:
            rec = {"forward_s": times["forward"]}
        elif "--prunekit-one" in argv:
            rec = {"prune_s": times["prunekit"].pop(0), "achieved_sparsity": 0.5}
        else:
            rec = {"prune_s": times["reference"].pop(0), "commit": "abc123", "transformers": "4.36.2",
                   "reference": "locuslab/wanda lib.prune.prune_wanda", "glue_patches": ["get_loaders"]}
        Path(out).write_text(json.dumps(rec))
        return {"status": "ok", "wall_s": 1.0, "record": rec, "load_avg_before": [0.1], "load_avg_after": [0.2]}

    return launch, seen


def test_run_benchmark_with_fake_references_writes_the_table(rs, tmp_path, monkeypatch):
    monkeypatch.setattr(rs, "versions", lambda: {"prunekit": "test", "git": "test"})  # no git calls: fast
    refbench = tmp_path / "refbench"
    out = tmp_path / "REFERENCE_SPEED.md"
    args = rs.parse_args(["--refbench", str(refbench), "--ref-python", "/x/python", "--rows", "wanda-unstructured50",
                          "--reps", "2", "--threads", "3", "--out", str(out), "--work-dir", str(tmp_path / "w")])
    launch, seen = _fake_launch({"forward": 2.0, "prunekit": [4.0, 6.0], "reference": [10.0, 12.0]})
    prepare = lambda a, work: (tmp_path / "model", tmp_path / "calib.pt", None)  # noqa: E731
    data = rs.run_benchmark(args, launch=launch, prepare=prepare)

    ref_argv = next(a for a in seen if "--prunekit-one" not in a and "--forward-one" not in a)
    assert ref_argv[:2] == ["/x/python", str(refbench / "glue_wanda.py")]
    assert ref_argv[ref_argv.index("--threads") + 1] == "3" and "--windows" in ref_argv
    assert all(a[a.index("--threads") + 1] == "3" for a in seen)
    (row,) = data["summary"]
    assert (row["prunekit_s"], row["reference_s"], row["forward_s"]) == (5.0, 11.0, 2.0)
    assert row["ratio"] == pytest.approx(5 / 11) and row["ratio_verdict"].startswith("MET")
    assert row["prune_per_forward"] == pytest.approx(2.5) and row["forward_verdict"].startswith("MET")
    saved = json.loads(out.with_suffix(".json").read_text())
    assert [r["name"] for r in saved["runs"]] == ["rep0-forward-forward", "rep0-reference-wanda-unstructured50",
                                                   "rep0-prunekit-wanda-unstructured50", "rep1-forward-forward",
                                                   "rep1-prunekit-wanda-unstructured50",
                                                   "rep1-reference-wanda-unstructured50"]
    text = out.read_text()
    assert "| Wanda 50% |" in text and "MET (0.45 vs <= 1)" in text and "get_loaders" in text


def test_summary_marks_missed_and_not_run(rs):
    runs = [{"side": "forward", "key": "forward", "status": "ok", "record": {"forward_s": 1.0}},
            {"side": "prunekit", "key": "sparsegpt-2:4", "status": "ok", "record": {"prune_s": 9.0}},
            {"side": "reference", "key": "sparsegpt-2:4", "status": "ok", "record": {"prune_s": 3.0}},
            {"side": "reference", "key": "wanda-2:4", "status": "timeout", "name": "rep0-reference-wanda-2-4"}]
    missed, not_run = rs.summarize(runs, ["sparsegpt-2:4", "wanda-2:4"])
    assert missed["ratio"] == pytest.approx(3.0) and missed["ratio_verdict"].startswith("MISSED")
    assert missed["forward_verdict"] is None  # no forward target for SparseGPT
    assert not_run["ratio_verdict"] == "NOT RUN" and not_run["failed"] == ["rep0-reference-wanda-2-4"]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=64,
                         tie_word_embeddings=True)
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny_llama")
    LlamaForCausalLM(config).save_pretrained(folder)
    windows = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(0))
    torch.save(windows, folder / "windows.pt")
    return folder


def test_prunekit_runner_times_the_prune_on_a_tiny_model(rs, tiny_model, tmp_path):
    out = tmp_path / "pk.json"
    rec = rs.prunekit_one("wanda-unstructured50", tiny_model / "windows.pt", out, model=str(tiny_model), threads=1,
                          eval_path=tiny_model / "windows.pt")
    assert json.loads(out.read_text())["prune_s"] == rec["prune_s"] > 0
    assert rec["achieved_sparsity"] == pytest.approx(0.5, abs=0.01) and rec["threads"] == 1
    assert (rec["nsamples"], rec["seqlen"], rec["mlp_channels_removed"]) == (2, 16, 0)
    assert rec["ppl"] > 1.0


def test_prunekit_runner_removes_mlp_channels_and_times_a_forward(rs, tiny_model, tmp_path):
    rec = rs.prunekit_one("flap-channels30", tiny_model / "windows.pt", tmp_path / "f.json", model=str(tiny_model),
                          threads=1)
    assert rec["mlp_kept_per_layer"] == [64 - 19, 64 - 19]  # floor(0.3 * 64) channels removed per block
    assert rec["mlp_channels_removed"] == 2 * 19
    fwd = rs.forward_one(tiny_model / "windows.pt", tmp_path / "fwd.json", model=str(tiny_model), threads=1)
    assert fwd["forward_s"] > 0 and json.loads((tmp_path / "fwd.json").read_text())["forward_s"] == fwd["forward_s"]
