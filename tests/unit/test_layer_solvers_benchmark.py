"""Smoke test of benchmarks/layer_solvers.py: ``--quick`` on a tiny shape writes the markdown and JSON.

The numbers mean nothing here; the test checks that every registered torch solver is visited, that each
entry has a status, and that the markdown names the device and the command line.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "layer_solvers.py"


def _load():
    spec = importlib.util.spec_from_file_location("_bench_layer_solvers", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_quick_run_writes_table(tmp_path):
    bench = _load()
    out, js = tmp_path / "LS.md", tmp_path / "ls.json"
    solvers = "TorchADMM,TorchMagnitude,TorchAllocation,TorchSparseLLM"
    result = bench.main(["--quick", "--shapes", "16x32", "--tokens", "64", "--solvers", solvers,
                         "--out", str(out), "--json", str(js)])
    rows = result["rows"]
    assert {r["solver"] for r in rows} == set(solvers.split(","))
    assert all(r["status"] == "ok" for r in rows), [r for r in rows if r["status"] != "ok"]
    assert all(r["mask_violations"] == 0 for r in rows)
    admm = [r for r in rows if r["solver"] == "TorchADMM"]
    assert {r["spec"] for r in admm} == {"unstructured50", "2:4", "channels30"}
    assert all(abs(r["gap_to_restored"]) < 1e-4 for r in admm)  # ADMM ends with a restoration on its mask
    text = out.read_text()
    assert "device: **CPU" in text and "--quick" in text and "| TorchADMM |" in text
    assert json.loads(js.read_text())["meta"]["device"] == "cpu"


def test_registry_is_covered():
    bench = _load()
    names = {c.__name__ for c in bench.torch_solvers()}
    assert {"TorchADMM", "TorchSparseLLM", "TorchAllocation"} <= names


def test_merge_combines_runs(tmp_path):
    bench = _load()
    paths = []
    for shape in ("8x16", "16x16"):
        js = tmp_path / f"{shape}.json"
        bench.main(["--quick", "--shapes", shape, "--tokens", "32", "--solvers", "TorchMagnitude",
                    "--out", str(tmp_path / f"{shape}.md"), "--json", str(js)])
        paths.append(str(js))
    merged = bench.main(["--merge", ",".join(paths), "--out", str(tmp_path / "all.md")])
    assert {r["shape"] for r in merged["rows"]} == {"8x16", "16x16"}
    text = (tmp_path / "all.md").read_text()
    assert "| 8x16 | TorchMagnitude |" in text and "| 16x16 | TorchMagnitude |" in text
