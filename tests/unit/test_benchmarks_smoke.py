"""Smoke tests of the benchmark harnesses (benchmarks/models.py --smoke, benchmarks/gpu_scale.py at a tiny scale).

They check that the scripts run end to end on a tiny random model and write the JSON and markdown with the
expected fields; the numbers themselves mean nothing here.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from prunekit.models.records import LayerRecord, RunReport

pytestmark = pytest.mark.hf

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


def _load(name: str):
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_scale_tiny_cpu(tmp_path):
    gpu_scale = _load("gpu_scale")
    out = tmp_path / "GPU_SCALE.md"
    rc = gpu_scale.main(["--device", "cpu", "--blocks", "1", "--scale", "0.015625", "--tokens", "256",
                         "--seqlen", "128", "--out", str(out), "--json", "--quiet",
                         "--solvers", "MultipleRemoval", "CoupledStructuredRemoval"])
    assert rc == 0
    data = json.loads(out.with_suffix(".json").read_text())
    assert data["device"] == "cpu" and data["full_size"] is False
    assert data["dims"] == {"hidden": 64, "mlp": 172, "heads": 2, "kv_heads": 1, "head_dim": 32}
    assert data["runs"], "no solver was timed"
    for run in data["runs"]:
        assert run["status"] == "ok", run
        assert run["block_time_s"] >= 0 and run["memory"]["peak_mib"] > 0
        for mod in run["modules"].values():
            assert mod["time_s"] >= 0 and 0 <= mod["rel_error"] < 1
    settings = {(r["formulation"], r["setting"]) for r in data["runs"]}
    assert ("MultipleRemoval", "2:4") in settings
    assert ("CoupledStructuredRemoval", "channels30") in settings
    assert ("CoupledStructuredRemoval", "2:4") not in settings  # declined, listed as skipped
    assert any(s["solver"].endswith("CoupledRemoval") or "Coupled" in s["reason"] for s in data["skipped"])
    md = out.read_text()
    assert "REDUCED SIZE" in md and "Not run on a GPU" in md and "| formulation |" in md


def test_gpu_scale_deadline_then_resume(tmp_path):
    """A run past its --deadline-s lists the rest as not run; --resume keeps earlier entries and runs the rest."""
    gpu_scale = _load("gpu_scale")
    out = tmp_path / "G.md"
    base = ["--device", "cpu", "--scale", "0.015625", "--tokens", "128", "--seqlen", "64", "--out", str(out),
            "--json", "--quiet", "--solvers", "WandaPruning", "MagnitudePruning", "--settings", "unstructured50"]
    assert gpu_scale.main(base + ["--blocks", "1"]) == 0
    first = json.loads(out.with_suffix(".json").read_text())
    assert [(r["block"], r["solver"]) for r in first["runs"]] == [(0, "TorchWanda"), (0, "TorchMagnitude")]  # --solvers order
    assert gpu_scale.main(base + ["--blocks", "2", "--deadline-s", "1e-9", "--resume", str(out.with_suffix(".json"))]) == 0
    cut = json.loads(out.with_suffix(".json").read_text())
    assert cut["runs"] == first["runs"]  # kept, not re-run
    assert {(n["block"], n["solver"]) for n in cut["not_run"]} == {(1, "TorchWanda"), (1, "TorchMagnitude")}
    assert "Not run (the `--deadline-s" in out.read_text()
    assert gpu_scale.main(base + ["--blocks", "2", "--resume", str(out.with_suffix(".json"))]) == 0
    done = json.loads(out.with_suffix(".json").read_text())
    assert len(done["runs"]) == 4 and not done["not_run"] and len(done["commands"]) == 3
    md = out.read_text()
    assert "**Commands**" in md and "| 2 |" in md  # both solvers measured on 2 blocks
    with pytest.raises(SystemExit, match="differs"):
        gpu_scale.main(base + ["--tokens", "256", "--resume", str(out.with_suffix(".json"))])
    rebuilt = tmp_path / "R.md"
    assert gpu_scale.main(["--report-only", str(out.with_suffix(".json")), "--out", str(rebuilt)]) == 0
    assert rebuilt.read_text() == md


def test_report_gpu_section_names_the_device(tmp_path):
    """A full-size CUDA result is summarized in RESULTS.md with the GPU's name, a table and the commands."""
    report = _load("_report")
    data = json.loads((BENCH / "GPU_SCALE_cpu_reduced.json").read_text())
    data.update(device="cuda", full_size=True, commands=["cmd-one", "cmd-two"])
    data["machine"] = {**data["machine"], "gpu": "Fake GPU 80GB", "gpu_memory_gib": 79.2, "cuda": "13.0"}
    path = tmp_path / "GPU_SCALE.json"
    path.write_text(json.dumps(data))
    text = "\n".join(report.gpu_scale_section(path))
    assert "Device: **Fake GPU 80GB**" in text and "| formulation | setting | blocks |" in text
    assert "`cmd-one`; `cmd-two`" in text and "Not run on a GPU" not in text
    data.update(device="cpu", full_size=False)
    path.write_text(json.dumps(data))
    assert "Not run on a GPU" in "\n".join(report.gpu_scale_section(path))


def test_llama_dims_scale_one_is_llama7b():
    dims = _load("gpu_scale").llama_dims(1.0)
    assert dims == {"hidden": 4096, "mlp": 11008, "heads": 32, "kv_heads": 8, "head_dim": 128}
    assert _load("gpu_scale").llama_dims(0.125) == {"hidden": 512, "mlp": 1376, "heads": 4, "kv_heads": 1,
                                                    "head_dim": 128}


def test_models_plan_order_and_filters():
    models = _load("models")
    runs = models.plan_runs(None, None)
    ids = [models.run_id(m, s) for m, s in runs]
    assert ids[0] == "dense"
    assert ids.index("fasp-channels30") < ids.index("fasp-channels20") < ids.index("wanda-unstructured50")
    assert ids.index("fista-unstructured50") < ids.index("wanda-2-4")
    for m in ("magnitude", "wanda", "sparsegpt", "mrp", "fista"):
        assert f"{m}-unstructured50" in ids and f"{m}-2-4" in ids
    for m in ("fasp", "flap", "spap", "admm"):
        assert f"{m}-channels30" in ids and f"{m}-channels20" in ids
    sub = models.plan_runs(["wanda"], ["2:4"])
    assert [models.run_id(m, s) for m, s in sub] == ["dense", "wanda-2-4"]


def test_models_smoke_inline_and_resume(tmp_path, capsys):
    models = _load("models")
    out = tmp_path / "results"
    md = tmp_path / "RESULTS.md"
    argv = ["--smoke", "--isolation", "inline", "--out-dir", str(out), "--md", str(md),
            "--methods", "magnitude", "wanda", "fasp", "--settings", "unstructured50", "channels30",
            "--speed-reps", "1", "--gpu-scale-json", str(tmp_path / "no_gpu_run.json")]
    assert models.main(argv) == 0
    for rid in ("dense", "magnitude-unstructured50", "wanda-unstructured50", "fasp-channels30"):
        rec = json.loads((out / f"{rid}.json").read_text())
        assert rec["status"] == "ok", rec.get("error")
        assert rec["perplexity"]["ppl"] > 1 and rec["perplexity"]["seqlen"] == 64
        assert rec["perplexity"]["windows"] == 2
        assert rec["protocol"]["calibration"]["nsamples"] == 2
        for key in ("machine", "versions", "params_before", "params_after", "wall_time_s"):
            assert key in rec, key
        if rid != "dense":
            assert rec["prune_time_s"] > 0 and rec["prune_memory"]["peak_mib"] > 0
            assert rec["report"]["layers"], "per-layer report missing"
            assert set(rec["report"]) == set(RunReport.__dataclass_fields__)  # RunReport.to_dict()
            assert rec["recipe"]["options"] == {} and "method_options" not in rec["recipe"]
            rows = _load("_report").layer_rows(rec)
            assert len(rows) == len(rec["report"]["layers"]) and all(isinstance(r, LayerRecord) for r in rows)
            assert all(0 <= r.relative_error < 1 for r in rows if r.status != "skipped")
    fasp = json.loads((out / "fasp-channels30.json").read_text())
    assert fasp["physically_smaller"] and fasp["params_after"]["total"] < fasp["params_before"]["total"]
    assert fasp["speedup"] > 0 and fasp["speed"]["pruned"]["batch"] == [1, 64]
    mag = json.loads((out / "magnitude-unstructured50.json").read_text())
    assert mag["params_after"]["block_linear_nonzero"] <= 0.51 * mag["params_before"]["block_linear"]
    text = md.read_text()
    for needle in ("SMOKE RUN", "## Protocol", "## Results", "## Targets", "| fasp |", "Machine:", "Versions:",
                   "Commands that wrote", "MET", "NOT RUN", "Not run on a GPU"):
        assert needle in text, needle
    targets = json.loads((out / "_targets.json").read_text())
    assert {t["status"] for t in targets} <= {"MET", "MISSED", "NOT RUN"}
    by_id = {t["id"]: t for t in targets}
    assert by_id["wanda<<magnitude@unstructured50"]["status"] in ("MET", "MISSED")
    assert by_id["mrp<=sparsegpt@2:4"]["status"] == "NOT RUN"
    assert (out / "ppl_vs_sparsity.png").exists() and (out / "per_layer.png").exists()
    capsys.readouterr()
    assert models.main(argv + ["--no-plots"]) == 0  # resumable: finished runs are skipped
    assert capsys.readouterr().out.count("exists (ok), skipped") == 4


def test_variant_rows_pass_formulation_options_and_modes():
    """Variant rows build ``Recipe(options=...)`` of a built-in method (names from ``builtin_methods()``)."""
    from argparse import Namespace

    from prunekit.models.methods import builtin_methods

    models = _load("models")
    args = Namespace(nsamples=2, seqlen=64)
    refit = models.build_recipe("fista_refit", "unstructured50", args)
    assert refit.method == builtin_methods()["fista"] and refit.options == {"refit": True}
    assert refit.to_dict()["options"] == {"refit": True} and refit.mode == "dense_sequential"
    seq = models.build_recipe("fista_seq", "2:4", args)
    assert seq.options == {} and seq.mode == "sequential" and str(seq.structure) == "2:4" and seq.sparsity == 0.5
    channels = models.build_recipe("fasp", "channels30_attn", args)
    assert channels.attention == "vo_channels" and channels.structure.kind == "channels"
    channel_methods = {n for n, m in builtin_methods().items() if "channels" in m.structures}
    assert set(models.channel_methods()) == channel_methods - set(models.MODEL_LEVEL_VARIANTS)
    for variant, base in models.MODEL_LEVEL_VARIANTS.items():  # only variants whose layer problem is a row's own
        assert issubclass(builtin_methods()[variant].formulation, builtin_methods()[base].formulation)
        assert base in models.channel_methods()
    with pytest.raises(SystemExit, match="unknown method"):
        models.plan_runs(["no_such_method"], None)


def test_report_reads_typed_records_and_committed_results(tmp_path):
    """The per-layer reader reads ``relative_error`` of the typed records; committed result files (their recipes
    say ``method_options``) still give the same notes and per-layer rows."""
    report = _load("_report")
    committed = json.loads((BENCH / "results" / "fista_refit-unstructured50.json").read_text())
    rows = report.layer_rows(committed)
    assert rows and [r.relative_error for r in rows] == [r["relative_error"] for r in committed["report"]["layers"]]
    new = json.loads(json.dumps(committed))
    new["recipe"]["options"] = new["recipe"].pop("method_options")
    notes = [report.table_rows({"x": rec}, ["x"])[0][-1] for rec in (committed, new)]
    assert notes[0] == notes[1] and "fista with refit=True" in notes[0]
    assert report.layer_rows({"status": "ok"}) == []


def test_models_subprocess_isolation(tmp_path):
    out = tmp_path / "results"
    cmd = [sys.executable, str(BENCH / "models.py"), "--smoke", "--methods", "dense", "--out-dir", str(out),
           "--md", str(tmp_path / "R.md"), "--no-plots"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rec = json.loads((out / "dense.json").read_text())
    assert rec["status"] == "ok" and rec["speed"]["dense"]["tokens_per_s"] > 0
    assert (out / "dense.log").exists()  # the worker's output, kept next to its JSON


def test_report_only_rebuilds_the_committed_results(tmp_path):
    """``models.py --report-only`` still reads every committed result file (written before the typed reports)."""
    import shutil

    models = _load("models")
    out = tmp_path / "results"
    shutil.copytree(BENCH / "results", out, ignore=shutil.ignore_patterns("*.log", "*.png"))
    md = tmp_path / "RESULTS.md"
    assert models.main(["--report-only", "--out-dir", str(out), "--md", str(md), "--no-plots",
                        "--gpu-scale-json", str(tmp_path / "none.json")]) == 0
    text = md.read_text()
    assert "| fista_refit | 50% unstr. | ok |" in text and "fista with refit=True" in text
    assert "## Runs not done or failed" not in text  # every committed run is read back as ok
    committed = json.loads((BENCH / "results" / "_targets.json").read_text())
    assert json.loads((out / "_targets.json").read_text()) == committed
