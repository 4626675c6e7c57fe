"""Every bad input gets ONE clear error (the problem and the fix) before work starts; the CLI never prints a raw
traceback for a user error (exit 2), reports a prunekit bug in one line (exit 1), re-raises with ``--debug`` and
shows the runner's log with ``-v``; the end-of-run summary reads the RunReport; every methods.md / design.md
citation in the code names a section that exists in docs/.

Known cases of issue 12, each with a test: a bad ``--device``; ``--round-to`` larger than every prunable width;
wrongly typed / unknown solver options; allocation ratios outside [0, 1) or with unknown keys; ``apply_`` with
NaN/Inf plan tensors; ``--nsamples 0``, ``--seqlen 0``, a negative or >= 1 ``--sparsity``, non-numeric values.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import numpy as np
import pytest
import torch

import prunekit
from prunekit.cli import main
from prunekit.errors import (
    DataError,
    DeviceError,
    FormulationError,
    NonFiniteError,
    OptionsError,
    PrunekitError,
    SparsityError,
)
from prunekit.models.recipe import Recipe, check_recipe_fits, prunable_widths
from prunekit.solvers.options import SolverOptions, check_solver_options, option_fields, parse_device

ROOT = Path(__file__).resolve().parents[2]
LLAMA = {"model_type": "llama", "hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 4,
         "num_key_value_heads": 2}


def one_error_line(err: str) -> str:
    """The CLI's stderr for a user error: exactly one line 'prunekit: error: ...', no traceback."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("prunekit: error: ") and "Traceback" not in err, err
    return lines[0]


# ---------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from _checkpoints import calibration_file, write_checkpoint

    root = tmp_path_factory.mktemp("validation")
    return write_checkpoint(root / "model"), calibration_file(root)


@pytest.fixture
def never_loads(monkeypatch):
    """Fail loudly if `prunekit prune` reaches the pipeline (the check had to come first)."""
    from prunekit.models import pipeline

    def refuse(*args, **kwargs):
        raise AssertionError("the pipeline ran: the bad input was not caught up front")

    monkeypatch.setattr(pipeline, "prune_checkpoint", refuse)


def prune_argv(checkpoint, out, *extra) -> list[str]:
    model, calib = checkpoint
    return ["prune", "--model", str(model), "--calib", str(calib), "--nsamples", "2", "--seqlen", "16",
            "--out", str(out), "--no-progress", *extra]


# ---------------------------------------------------------------------------------------------- device
# ids avoid the word "gpu": conftest skips items whose keywords include the gpu marker name
@pytest.mark.parametrize("value", ["gpu", "", "cuda:x", "meta", "tpu"], ids=["name", "empty", "index", "meta", "tpu"])
def test_parse_device_refuses_what_is_not_a_usable_device(value):
    with pytest.raises(DeviceError, match="Fix: use 'cpu'"):
        parse_device(value)


def test_parse_device_accepts_cpu_and_checks_cuda_against_the_machine():
    assert parse_device("cpu") == torch.device("cpu") and parse_device(torch.device("cpu")).type == "cpu"
    if torch.cuda.is_available():
        assert parse_device("cuda").type == "cuda"
        with pytest.raises(DeviceError, match="CUDA device"):
            parse_device(f"cuda:{torch.cuda.device_count()}")
    else:
        with pytest.raises(DeviceError, match="CUDA is not available"):
            parse_device("cuda")


@pytest.mark.parametrize("device", ["gpu", "cuda:99"], ids=["unknown-name", "missing-index"])
def test_cli_bad_device_fails_before_the_model_is_loaded(checkpoint, tmp_path, never_loads, capsys, device):
    assert main(prune_argv(checkpoint, tmp_path / "out", "--device", device)) == 2
    line = one_error_line(capsys.readouterr().err)
    assert f"--device '{device}'" in line and "Fix:" in line
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------- round_to
def test_round_to_larger_than_every_width_is_refused_with_the_largest_useful_value():
    recipe = Recipe(method="fasp", structure="channels", sparsity=0.3, round_to=1000)
    with pytest.raises(FormulationError, match=r"round_to=1000 prunes nothing.*MLP channels 64.*round_to <= 63"):
        check_recipe_fits(recipe, LLAMA)
    check_recipe_fits(recipe.replace(round_to=8), LLAMA)  # 64 -> keep 48: prunes
    heads = Recipe(method="fasp", structure="channels", sparsity=0.5, attention="heads", round_to=64)
    assert prunable_widths(LLAMA, "heads") == {"MLP channels": 64, "KV heads": 2}
    with pytest.raises(FormulationError, match="KV heads 2"):
        check_recipe_fits(heads, LLAMA)
    gpt2 = {"model_type": "gpt2", "n_embd": 32, "n_head": 4, "n_inner": None}
    assert prunable_widths(gpt2, "vo_channels") == {"MLP channels": 128, "V/O channels": 32}


def test_cli_round_to_1000_fails_before_loading_naming_the_widths(checkpoint, tmp_path, never_loads, capsys):
    argv = prune_argv(checkpoint, tmp_path / "out", "--method", "fasp", "--structure", "channels",
                      "--round-to", "1000")
    assert main(argv) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "round_to=1000 prunes nothing" in line and "MLP channels 64" in line and "Fix:" in line


# ---------------------------------------------------------------------------------------------- solver options
@pytest.mark.parametrize("options, words", [
    ({"tol": "x"}, ["tol='x'", "expected float"]),
    ({"max_iter": 2.5}, ["max_iter=2.5", "expected int"]),
    ({"row_batch": "all"}, ["row_batch", "int or None"]),
    ({"seed": True}, ["seed=True", "expected int"]),
    ({"tols": 1e-6}, ["unknown solver option(s) ['tols']"]),
])
def test_wrong_solver_options_fail_at_recipe_construction_listing_fields_and_types(options, words):
    with pytest.raises(OptionsError) as info:
        Recipe(solver_options=options)
    msg = str(info.value)
    assert isinstance(info.value, FormulationError) and isinstance(info.value, TypeError)
    for word in words + ["tol (float)", "max_iter (int)", "device (str or None)", "Fix:"]:
        assert word in msg, msg


def test_solver_option_ranges_and_solve_overrides_are_checked():
    assert list(option_fields()) == [f for f in SolverOptions.__dataclass_fields__]
    for bad in ({"max_iter": -1}, {"tol": float("nan")}, {"dtype": "int8"}, {"device": "gpu"}):
        with pytest.raises(PrunekitError, match="Fix:"):
            check_solver_options(bad)
    check_solver_options({"tol": 1, "max_iter": 10, "device": "cpu", "row_batch": None})  # ints count as floats
    from prunekit.formulations import MultipleRemoval, Unstructured
    from prunekit.verification.toy import random_layer

    with pytest.raises(OptionsError, match="tol='x'"):
        prunekit.solve(MultipleRemoval(random_layer(np.random.default_rng(0), 3, 8), Unstructured(0.5)), tol="x")


def test_formulation_options_are_type_checked_against_the_method_fields():
    with pytest.raises(FormulationError, match=r"variant=3 .*expected bool.*variant \(bool\)"):
        Recipe(method="wanda", options={"variant": 3})
    with pytest.raises(FormulationError, match="warm_start='x'.*one of 'wanda'"):
        Recipe(method="fista", options={"warm_start": "x"})
    assert Recipe(method="fista", options={"warm_start": "dense", "K": 3}).options["K"] == 3


@pytest.mark.parametrize("fields, words", [
    (dict(damping=float("inf")), ["damping", "finite"]),
    (dict(damping=-1), ["damping"]),
    (dict(temperature=float("nan")), ["temperature"]),
    (dict(sparsity=float("nan")), ["sparsity", "[0, 1)"]),
    (dict(calibration=5), ["calibration must be a mapping"]),
    (dict(backend="nope"), ["unknown backend 'nope'"]),
    (dict(backend="cvxpy"), ["no solver for method 'wanda'"]),
    (dict(allocation=3), ["allocation must be one of"]),
    (dict(options={1: True}), ["keys must be strings"]),
])
def test_recipe_fields_fail_with_one_message_and_a_fix(fields, words):
    with pytest.raises(PrunekitError) as info:
        Recipe(**fields)
    msg = str(info.value)
    assert "Fix:" in msg and all(w in msg for w in words), msg


def test_recipe_files_broken_or_unknown_keys_or_not_utf8(tmp_path):
    cases = {"broken.yaml": b"method: [wanda\n", "broken.json": b'{"method": ', "keys.yaml": b"sparsty: 0.5\n",
             "latin1.yaml": b"method: wanda # caf\xe9\n", "list.yaml": b"- wanda\n"}
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(DataError) as info:
            Recipe.load(tmp_path / name)
        assert "Fix:" in str(info.value) and "\n" not in str(info.value).strip() or name == "list.yaml", name
    with pytest.raises(DataError, match=r"rename 'sparsty' -> 'sparsity'"):
        Recipe.load(tmp_path / "keys.yaml")
    with pytest.raises(DataError, match="is a folder"):
        Recipe.load(tmp_path)


# ---------------------------------------------------------------------------------------------- ratios
@pytest.fixture(scope="module")
def tiny_llama():
    from _hf_tiny import tiny_model

    return tiny_model("llama")


def test_ratios_outside_0_1_or_with_unknown_keys_are_refused_listing_valid_keys(tiny_llama):
    from prunekit.models.allocate import check_ratios, target_keys

    recipe = Recipe(method="wanda")
    keys = target_keys(tiny_llama, recipe)
    assert len(keys) == 14 and keys[0] == "model.layers.0.self_attn.q_proj"
    assert check_ratios({keys[0]: 0.25, keys[3]: 0}, tiny_llama, recipe) == {keys[0]: 0.25, keys[3]: 0.0}
    for value in (1.5, -0.5, 1.0, float("nan"), "0.5", True):
        with pytest.raises(SparsityError, match=r"not a sparsity in \[0, 1\)"):
            check_ratios({keys[0]: value}, tiny_llama, recipe)
    with pytest.raises(SparsityError, match=r"\['model.layers.0.mlp.down'\].*valid keys.*q_proj") as info:
        check_ratios({"model.layers.0.mlp.down": 0.5}, tiny_llama, recipe)
    assert "Fix:" in str(info.value)
    with pytest.raises(SparsityError, match="N:M"):
        check_ratios({keys[0]: 0.5}, tiny_llama, Recipe(method="wanda", structure="2:4"))
    channels = Recipe(method="fasp", structure="channels")
    assert target_keys(tiny_llama, channels) == [f"model.layers.{i}.mlp:glu_channel" for i in range(2)]


# ---------------------------------------------------------------------------------------------- apply_
@pytest.mark.parametrize("value, what", [(float("nan"), "weight"), (float("inf"), "bias")])
def test_apply_refuses_non_finite_plan_tensors_naming_the_module(tiny_llama, value, what):
    import copy

    from prunekit.models.plan import ModuleEdit, PruningPlan

    model = copy.deepcopy(tiny_llama)
    name = "model.layers.1.mlp.down_proj"
    module = model.get_submodule(name)
    weight = module.weight.detach().clone()
    bias = torch.zeros(weight.shape[0])
    (weight if what == "weight" else bias)[0, ...] = value
    plan = PruningPlan(module_edits={name: ModuleEdit(module=name, weight=weight, bias=bias)})
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(NonFiniteError, match=rf"new {what} for module '{re.escape(name)}' holds NaN/Inf.*Fix:"):
        prunekit.apply_(model, plan)
    after = model.state_dict()
    assert set(after) == set(before) and all(torch.equal(before[k], after[k]) for k in before)


# ---------------------------------------------------------------------------------------------- CLI flags
@pytest.mark.parametrize("flag, value, words", [
    ("--nsamples", "0", "expected a positive integer"),
    ("--seqlen", "0", "expected a positive integer"),
    ("--seqlen", "-3", "expected a positive integer"),
    ("--sparsity", "-0.1", "expected a fraction in [0, 1)"),
    ("--sparsity", "1.5", "expected a fraction in [0, 1)"),
    ("--sparsity", "abc", "expected a fraction in [0, 1)"),
    ("--sparsity", "nan", "expected a fraction in [0, 1)"),
    ("--nsamples", "2.5", "expected a positive integer"),
    ("--damping", "-1", "expected a finite number >= 0"),
    ("--damping", "inf", "expected a finite number >= 0"),
    ("--temperature", "0", "expected a finite number > 0"),
    ("--round-to", "0", "expected a positive integer"),
    ("--eval-windows", "0", "expected a positive integer"),
    ("--allocation", "bogus", "invalid choice"),
])
def test_cli_bad_flag_values_exit_2_in_one_line_naming_the_flag(tmp_path, never_loads, capsys, flag, value, words):
    argv = ["prune", "--model", str(tmp_path), "--out", str(tmp_path / "out"), flag, value]
    assert main(argv) == 2
    line = one_error_line(capsys.readouterr().err)
    assert f"argument {flag}" in line and words in line and "prunekit prune --help" in line


@pytest.mark.parametrize("extra, words", [
    (["--method", "nope"], "unknown method 'nope'"),
    (["--structure", "2:4", "--sparsity", "0.3"], "contradicts structure 2:4"),
    (["--method", "fasp"], "does not support structure 'unstructured'"),
    (["--calib", "./no-such-file.txt"], "no such file"),
    (["--eval", "--eval-data", "./no-such-file.txt"], "--eval-data"),
    (["--backend", "nope"], "unknown backend"),
])
def test_cli_bad_recipe_values_fail_before_loading(checkpoint, tmp_path, never_loads, capsys, extra, words):
    assert main(prune_argv(checkpoint, tmp_path / "out", *extra)) == 2
    assert words in one_error_line(capsys.readouterr().err)


@pytest.mark.parametrize("data, words", [(b"caf\xe9 " * 50, "is not UTF-8 text (byte 0xe9 at offset 3)"),
                                         ("text".encode("utf-16"), "is not UTF-8"), (b" \n", "is empty")])
def test_cli_calibration_file_not_utf8_or_empty_fails_before_anything_is_written(checkpoint, tmp_path, never_loads,
                                                                                  capsys, data, words):
    calib = tmp_path / "calib.txt"
    calib.write_bytes(data)
    model, _ = checkpoint
    assert main(prune_argv((model, calib), tmp_path / "out")) == 2
    assert words in one_error_line(capsys.readouterr().err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["calib.txt"]


def test_cli_bad_recipe_file_is_one_line(checkpoint, tmp_path, never_loads, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("method: wanda\nsolver_options: {tol: x}\n")
    assert main(prune_argv(checkpoint, tmp_path / "out", "--recipe", str(recipe))) == 2
    assert "tol='x'" in one_error_line(capsys.readouterr().err)
    recipe.write_text("method: [wanda\nstructure: 2:4\n")
    assert main(prune_argv(checkpoint, tmp_path / "out", "--recipe", str(recipe))) == 2
    assert "not valid YAML" in one_error_line(capsys.readouterr().err)


# ---------------------------------------------------------------------------------------------- main's handling
def _raising(exc: BaseException):
    def run(args):
        logging.getLogger("prunekit.runner").info("block 0: objective 1.5, 7 problems, 0.01s")
        if exc is not None:
            raise exc
        return 0

    return run


@pytest.mark.parametrize("exc, words", [
    (FileNotFoundError(2, "No such file or directory", "/data/x.txt"), "/data/x.txt: not found"),
    (PermissionError(13, "Permission denied", "/root/x"), "/root/x: permission denied"),
    (IsADirectoryError(21, "Is a directory", "/tmp"), "/tmp: is a folder"),
    (UnicodeDecodeError("utf-8", b"\xe9", 0, 1, "invalid continuation byte"), "not UTF-8"),
    (json.JSONDecodeError("Expecting value", "{", 1), "JSON file is malformed"),
    (OSError("Unable to load weights from checkpoint file"), "Unable to load weights"),
    (ValueError("could not convert string to float: 'x'"), "could not convert"),
    (DataError("calibration text has 3 tokens. Fix: use a longer text."), "calibration text has 3 tokens"),
])
def test_user_caused_exceptions_are_one_line_exit_2(monkeypatch, capsys, exc, words):
    from prunekit.cli import verify

    monkeypatch.setattr(verify, "run", _raising(exc))
    assert main(["verify"]) == 2
    captured = capsys.readouterr()
    assert words in one_error_line(captured.err) and "block 0" not in captured.err  # no -v: no log


def test_yaml_errors_are_user_errors(monkeypatch, capsys):
    import yaml

    from prunekit.cli import verify

    try:
        yaml.safe_load("a: [b\nc: d")
    except yaml.YAMLError as exc:
        monkeypatch.setattr(verify, "run", _raising(exc))
    assert main(["verify"]) == 2
    assert "YAML file is malformed" in one_error_line(capsys.readouterr().err)


def test_internal_errors_are_short_exit_1_and_debug_reraises(monkeypatch, capsys):
    from prunekit.cli import verify

    monkeypatch.setattr(verify, "run", _raising(KeyError("layers")))
    assert main(["verify"]) == 1
    err = capsys.readouterr().err
    assert err.strip() == ("prunekit: internal error: KeyError: 'layers' (run again with --debug for the traceback; "
                           "please report it)")
    for argv in (["--debug", "verify"], ["verify", "--debug"]):
        with pytest.raises(KeyError):
            main(argv)
    monkeypatch.setattr(verify, "run", _raising(DataError("x. Fix: y.")))
    with pytest.raises(DataError):
        main(["verify", "--debug"])


def test_verbose_shows_the_prunekit_log_on_stderr_and_cleans_up(monkeypatch, capsys):
    from prunekit.cli import verify

    logger = logging.getLogger("prunekit")
    handlers, level = list(logger.handlers), logger.level
    monkeypatch.setattr(verify, "run", _raising(None))
    for argv in (["-v", "verify"], ["verify", "--verbose"]):
        assert main(argv) == 0
        assert "prunekit.runner: block 0: objective 1.5" in capsys.readouterr().err
        assert logger.handlers == handlers and logger.level == level
    assert main(["verify"]) == 0
    assert "block 0" not in capsys.readouterr().err


def test_device_is_checked_for_every_subcommand_and_unknown_claims_are_one_line(tmp_path, capsys):
    assert main(["eval", "--model", str(tmp_path / "nothing"), "--device", "gpu"]) == 2
    assert "--device 'gpu' is not a device name" in one_error_line(capsys.readouterr().err)
    assert main(["verify", "--claims", "C999"]) == 2
    assert "unknown claim 'C999'" in one_error_line(capsys.readouterr().err)
    assert main(["--bogus-flag", "verify"]) == 2
    assert "unrecognized arguments: --bogus-flag" in one_error_line(capsys.readouterr().err)


def test_help_and_version_return_0_and_no_command_returns_2(capsys):
    assert main(["--version"]) == 0 and "prunekit" in capsys.readouterr().out
    assert main(["prune", "--help"]) == 0 and "--round-to" in capsys.readouterr().out
    assert main([]) == 2


# ---------------------------------------------------------------------------------------------- summary
def test_end_of_run_summary_reads_the_run_report():
    from prunekit.cli.prune import summary_lines
    from prunekit.models.records import LayerRecord, RunReport

    layers = [LayerRecord(block=0, module="a", status="optimal", shape=(4, 8), sparsity=0.5, relative_error=0.1,
                          time_s=0.5),
              LayerRecord(block=0, module="b", status="optimal", shape=(4, 24), sparsity=0.25, relative_error=0.3,
                          time_s=0.25),
              LayerRecord(block=1, module="a", status="skipped", shape=(4, 8))]
    report = RunReport(recipe={}, params_before=1000, params_after=750, time_prune_s=2.0, time_total_s=3.0,
                       output_format="stock", output_dtype="float32", layers=layers,
                       ppl_before={"ppl": 10.0, "seqlen": 32, "windows": 3},
                       ppl_after={"ppl": 12.5, "seqlen": 32, "windows": 3})
    lines = summary_lines(report)
    assert lines[0].split() == ["block", "layers", "sparsity", "rel.error", "time"]
    assert lines[1].split() == ["0", "2", f"{(0.5 * 32 + 0.25 * 96) / 128:.3f}", "0.2", "0.75s"]
    assert lines[2].split() == ["1", "1", "0.000", "-", "0.00s"]
    assert lines[3].startswith("parameters: 1,000 -> 750 (-25.0%); format stock (float32); prune 2.00s, total 3.00s")
    assert lines[4] == "perplexity: 10.000 -> 12.500 (seqlen 32, 3 windows)"
    assert len(summary_lines(RunReport(recipe={}))) == 1  # nothing pruned, no evaluation: totals only


# ---------------------------------------------------------------------------------------------- docs
def _headings(path: Path) -> set[str]:
    return {m.group(1) for m in re.finditer(r"^#{2,4} (\d+(?:\.\d+)*)\.? ", path.read_text(), re.MULTILINE)}


def test_every_methods_md_citation_names_a_section_of_docs_methods_md():
    sections = _headings(ROOT / "docs" / "methods.md")
    assert {"1", "2", "5.4", "11"} <= sections
    cited: dict[str, set[str]] = {}
    for path in sorted((ROOT / "prunekit").rglob("*.py")):
        for match in re.finditer(r"methods\.md((?:,? ?(?:and )?§\d+(?:\.\d+)?)+)", path.read_text()):
            for number in re.findall(r"§(\d+(?:\.\d+)?)", match.group(1)):
                cited.setdefault(number, set()).add(path.name)
    assert len(cited) >= 10, cited
    missing = {n: sorted(files) for n, files in cited.items() if n not in sections}
    assert not missing, f"methods.md sections cited but absent from docs/methods.md: {missing}"


def test_every_design_md_principle_citation_exists_and_docs_are_the_shipped_copies():
    text = (ROOT / "docs" / "design.md").read_text()
    principles = set(re.findall(r"^(\d+)\. \*\*", text.split("## Principles", 1)[1].split("\n## ", 1)[0],
                                re.MULTILINE))
    cited = {n for path in (ROOT / "prunekit").rglob("*.py")
             for n in re.findall(r"design\.md principles? (\d+)", path.read_text())}
    assert cited and cited <= principles, cited - principles
    readme = (ROOT / "docs" / "README.md").read_text()
    assert "methods.md" in readme and "design.md" in readme
