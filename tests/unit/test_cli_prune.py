"""``prunekit prune`` / ``prunekit eval`` end to end on tiny random models saved to a temporary folder.

``prunekit prune`` streams the checkpoint through ``prunekit.models.pipeline.prune_checkpoint``: the output holds
the model, ONE report (``report.json`` = ``RunReport.to_dict()``, ``layers`` = LayerRecord dicts),
``plan/plan.json`` (no weights), ``plot.png`` and the marker ``prunekit_output.json``.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from prunekit.cli import main
from prunekit.models.records import LayerRecord, RunReport
from prunekit.models.saving import load_pruned

LAYER_FIELDS = set(LayerRecord.__dataclass_fields__)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    from _hf_tiny import TEXT

    root = tmp_path_factory.mktemp("cli")
    (root / "calib.txt").write_text(TEXT * 4)
    (root / "eval.txt").write_text(TEXT[::-1] * 4)
    return root


def model_folder(workdir, family):
    from _hf_tiny import save_tiny

    folder = workdir / family
    return folder if folder.exists() else save_tiny(workdir, family)


def prune_args(workdir, family, out, *extra):
    return ["prune", "--model", str(model_folder(workdir, family)), "--calib", str(workdir / "calib.txt"),
            "--nsamples", "4", "--seqlen", "32", "--out", str(out), "--no-progress", *extra]


def run_eval(capsys, folder, data, *extra):
    capsys.readouterr()
    assert main(["eval", "--model", str(folder), "--data", str(data), "--seqlen", "32", *extra]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("family", ["llama", "opt", "gpt2"])
def test_fasp_channels_gives_a_smaller_model_that_reloads_and_evaluates(workdir, family, capsys):
    out = workdir / f"fasp-{family}"
    args = prune_args(workdir, family, out, "--method", "fasp", "--structure", "channels", "--sparsity", "0.3",
                      "--eval", "--eval-data", str(workdir / "eval.txt"), "--eval-windows", "3")
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "perplexity before" in printed and "perplexity after" in printed
    report = json.loads((out / "report.json").read_text())
    assert report["params_after"] < report["params_before"]
    assert report["ppl_before"]["seqlen"] == 32 and report["ppl_after"]["windows"] == 3
    assert report["recipe"]["method"] == "fasp" and report["layers"]
    assert set(report) == set(RunReport.__dataclass_fields__)
    assert all(set(r) == LAYER_FIELDS for r in report["layers"])
    typed = RunReport.from_dict(report)
    assert typed.to_dict() == report and typed.output_format == "stock"
    assert all(r.group and 0 < r.kept_units < r.num_units and 0 <= r.relative_error < 1 for r in typed.layers)
    assert (out / "plot.png").stat().st_size > 1000
    assert not (out / "prunekit_report.json").exists()  # one report only
    assert (out / "plan" / "plan.json").is_file() and not (out / "plan" / "plan.safetensors").exists()
    assert json.loads((out / "prunekit_output.json").read_text())["method"] == "fasp"
    assert "prunekit" not in json.loads((out / "config.json").read_text())  # stock config
    model, _ = load_pruned(out)
    assert sum(p.numel() for p in model.parameters()) == report["params_after"]
    result = run_eval(capsys, out, workdir / "eval.txt", "--windows", "3")
    assert result["ppl"] == pytest.approx(report["ppl_after"]["ppl"], rel=1e-4)
    assert result["seqlen"] == 32 and result["windows"] == 3


def test_sparsegpt_2_4_is_saved_with_exact_2_4_zeros(workdir):
    out = workdir / "sgpt"
    assert main(prune_args(workdir, "llama", out, "--method", "sparsegpt", "--structure", "2:4")) == 0
    model, _ = load_pruned(out)
    checked = 0
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and ".layers." in name:
            zeros = (module.weight.reshape(module.weight.shape[0], -1, 4) == 0).sum(-1)
            assert bool((zeros >= 2).all()), name
            checked += 1
    assert checked == 14


def test_recipe_file_is_used_and_flags_override_it(workdir):
    from prunekit.models.recipe import CalibrationSettings, Recipe

    path = Recipe(method="magnitude", structure="4:8", calibration=CalibrationSettings(nsamples=2, seqlen=16)).save(
        workdir / "recipe.yaml")
    out = workdir / "from-recipe"
    args = ["prune", "--model", str(model_folder(workdir, "opt")), "--recipe", str(path), "--calib",
            str(workdir / "calib.txt"), "--seqlen", "24", "--out", str(out), "--no-progress"]
    assert main(args) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["recipe"]["method"] == "magnitude" and report["recipe"]["structure"] == "4:8"
    assert report["recipe"]["calibration"]["nsamples"] == 2 and report["calibration_shape"] == [2, 24]
    assert report["recipe"]["sparsity"] == 0.5 and {r["target_sparsity"] for r in report["layers"]} == {0.5}


def test_out_folder_it_did_not_write_is_refused_even_with_overwrite(workdir, capsys):
    mine = workdir / "users-folder"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    assert main(prune_args(workdir, "llama", mine, "--method", "wanda", "--overwrite")) == 2
    err = capsys.readouterr().err
    assert "not written by prunekit" in err and "Fix:" in err
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"] and (mine / "notes.txt").read_text() == "keep me"


def test_errors_are_reported_not_raised(workdir, capsys):
    code = main(prune_args(workdir, "llama", workdir / "bad", "--method", "fasp", "--structure", "2:4"))
    assert code == 2
    assert "supports: channels" in capsys.readouterr().err


def test_eval_reads_wikitext_test_split(workdir, capsys, shared_data_dir):
    result = run_eval(capsys, model_folder(workdir, "gpt2"), "wikitext2", "--windows", "2", "--data-dir",
                      shared_data_dir)
    assert result["windows"] == 2 and result["windows_available"] > 1000 and result["ppl"] > 1


def test_python_dash_m_entry_point():
    out = subprocess.run([sys.executable, "-m", "prunekit", "prune", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "--sparsity" in out.stdout and "--data-dir" in out.stdout


@pytest.mark.slow
def test_smollm2_fasp_channels_prunes_reloads_and_evaluates(tmp_path, shared_data_dir, capsys):
    out = tmp_path / "smollm2"
    args = ["prune", "--model", "smollm2-135m", "--method", "fasp", "--structure", "channels", "--sparsity", "0.3",
            "--calib", "wikitext2", "--data-dir", shared_data_dir, "--nsamples", "4", "--seqlen", "128",
            "--out", str(out), "--no-progress"]
    assert main(args) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["params_after"] < report["params_before"]
    model, tokenizer = load_pruned(out)
    assert sum(p.numel() for p in model.parameters()) == report["params_after"]
    result = run_eval(capsys, out, "wikitext2", "--windows", "2", "--data-dir", shared_data_dir)
    assert 1 < result["ppl"] < 1000
