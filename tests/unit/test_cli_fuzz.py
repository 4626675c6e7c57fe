"""Fuzz ``prunekit prune`` with hypothesis-drawn argument vectors and recipe files over a tiny checkpoint.

Property, for every drawn ``argv`` (valid and invalid values of --method/--structure/--sparsity/--nsamples/--seqlen/
--round-to/--allocation/--attention/--damping/--device/--recipe, recipe files valid YAML/JSON, broken, with unknown
keys or wrong types, not UTF-8; --calib a text file, one that is not UTF-8, empty or missing, or a folder):

* ``prunekit.cli.main(argv)`` returns 0 and ``--out`` is a complete output (config.json that stock loaders read,
  the marker prunekit_output.json, report.json), or returns 2 with one ``prunekit: error:`` line and no traceback;
* no file or folder outside ``--out`` (and its ``.<out>.prunekit-*`` work siblings) appears, disappears or changes.

Valid runs use 2 windows of 16 tokens so each takes about a second; ``max_examples`` is capped so the ``ci``
profile (25 examples, derandomized) runs in well under a minute.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from _checkpoints import calibration_file, write_checkpoint
from prunekit.cli import main

pytestmark = pytest.mark.hf

MAX_EXAMPLES = min(settings().max_examples, 25)

VALID = {  # values that can succeed on the tiny LLaMA (hidden 32, MLP 64, 4 heads / 2 KV heads)
    "--method": ["wanda", "magnitude", "sparsegpt", "fasp", "flap"],
    "--structure": ["unstructured", "2:4", "4:8", "channels"],
    "--sparsity": ["0.5", "0.3", "0", "0.75"],
    "--nsamples": ["2"],
    "--seqlen": ["16"],
    "--round-to": ["1", "8"],
    "--allocation": ["uniform", "softmax", "global_threshold"],
    "--attention": ["none", "heads", "vo_channels"],
    "--damping": ["0.01", "0", "1e-3"],
    "--device": ["cpu"],
}
INVALID = {
    "--method": ["nope", "os:path", "missing_file.py:Cls", "", "WANDA"],
    "--structure": ["3:2", "0:4", "abc", "", "2:4:8", "-1:4"],
    "--sparsity": ["-0.1", "1.5", "1", "nan", "abc", "inf", ""],
    "--nsamples": ["0", "-1", "x", "2.5", ""],
    "--seqlen": ["0", "-4", "x", "1e3"],
    "--round-to": ["1000", "0", "-2", "x", "64"],
    "--allocation": ["bogus", ""],
    "--attention": ["bogus", "Heads"],
    "--damping": ["-1", "nan", "inf", "x"],
    "--device": ["gpu", "cuda", "cuda:7", "meta", "", "cpu:x"],
}
ALWAYS = ("--nsamples", "--seqlen")  # a run without them would use 128 x 2048 windows


# ---------------------------------------------------------------------------------------------- strategies
def flag_value(flag: str):
    return st.one_of(st.sampled_from(VALID[flag]), st.sampled_from(INVALID[flag]))


SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-3, 2000), st.sampled_from([0.5, 0.3, -0.5, 1.5, 1e9]),
                    st.sampled_from(["wanda", "fasp", "2:4", "channels", "x", ""]), st.just([1, 2]), st.just({}))
RECIPE_VALUES = {
    "method": st.sampled_from(["wanda", "magnitude", "fasp", "sparsegpt", "nope"]),
    "structure": st.sampled_from(["unstructured", "channels", "2:4", "5:4"]),
    "sparsity": st.sampled_from([0.5, 0.3, 1.5, -0.2, "half"]),
    "allocation": st.sampled_from(["uniform", "softmax", "bogus"]),
    "attention": st.sampled_from(["none", "heads", "bogus"]),
    "round_to": st.sampled_from([1, 8, 0, 1000, "8"]),
    "damping": st.sampled_from([0.01, 0, -1, "x"]),
    "options": st.sampled_from([{}, {"variant": True}, {"variant": 3}, {"nope": 1}, "x"]),
    "solver_options": st.sampled_from([{}, {"tol": 1e-6}, {"tol": "x"}, {"tols": 1}, {"max_iter": -1}, [1]]),
    "calibration": st.sampled_from([{"nsamples": 2, "seqlen": 16}, {"nsamples": 0}, {"mode": "bogus"},
                                    {"sorce": "x"}, 5, {"seed": "x"}]),
    "version": st.sampled_from([2, 1, "2"]),
}


@st.composite
def recipe_files(draw):
    """(suffix, bytes): a recipe as YAML or JSON from drawn fields (valid or not), unknown keys, broken syntax,
    another top-level type, or bytes that are not UTF-8."""
    kind = draw(st.sampled_from(["fields", "fields", "fields", "unknown_key", "broken", "not_mapping",
                                 "not_utf8", "empty"]))
    suffix = draw(st.sampled_from([".yaml", ".json", ".yml"]))
    fields = {k: draw(v) for k, v in RECIPE_VALUES.items() if draw(st.booleans())}
    if kind == "unknown_key":
        fields[draw(st.sampled_from(["sparsity_ratio", "methods", "nm", "calib"]))] = draw(SCALARS)
    if kind == "not_mapping":
        fields = draw(st.sampled_from([[1, 2], "wanda", 3]))
    text = json.dumps(fields) if suffix == ".json" else _yaml(fields)
    if kind == "broken":
        text = text[: max(1, len(text) // 2)] + ("{[" if suffix == ".json" else ": [\n  - :")
    data = text.encode()
    if kind == "not_utf8":
        data = b"method: wanda  # caf\xe9\n"
    if kind == "empty":
        data = b""
    return suffix, data


def _yaml(fields) -> str:
    import yaml

    return yaml.safe_dump(fields)


@st.composite
def argvs(draw):
    """(flags, recipe file or None): a drawn flag list for ``prunekit prune``."""
    flags: list[str] = []
    for flag in VALID:
        if flag in ALWAYS or draw(st.integers(0, 2)) == 0:
            flags += [flag, draw(flag_value(flag)) if flag not in ALWAYS or draw(st.integers(0, 3)) == 0
                      else VALID[flag][0]]
    recipe = draw(st.one_of(st.none(), recipe_files(), st.sampled_from(["missing", "folder"])))
    calib = draw(st.sampled_from(["calib.txt"] * 6 + ["latin1.txt", "empty.txt", "missing.txt", "model"]))
    return flags, recipe, calib


# ---------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    model = write_checkpoint(root / "model")
    calib = calibration_file(root)
    (root / "notes.txt").write_text("the user's own file")
    (root / "latin1.txt").write_bytes(calib.read_text().encode("utf-16"))  # not UTF-8
    (root / "empty.txt").write_bytes(b"")
    return root, model, calib


def snapshot(root: Path, out: Path) -> dict[str, str]:
    """Every path under ``root`` except ``out`` and its ``.<name>.prunekit-*`` siblings: a digest of each file,
    "dir" for each folder."""
    skip = (out.name, f".{out.name}.prunekit-")
    result = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if rel.parts[0] == skip[0] or rel.parts[0].startswith(skip[1]):
            continue
        result[str(rel)] = "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
    return result


def check_output(out: Path) -> None:
    config = json.loads((out / "config.json").read_text())
    marker = json.loads((out / "prunekit_output.json").read_text())
    report = json.loads((out / "report.json").read_text())
    assert config["model_type"] == "llama" and marker["format"] in ("stock", "rebuild"), marker
    assert report["layers"] and 0 < report["params_after"] <= report["params_before"]
    assert (out / "model.safetensors.index.json").is_file()


# ---------------------------------------------------------------------------------------------- the property
@settings(max_examples=MAX_EXAMPLES, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(drawn=argvs())
def test_prune_exits_0_with_an_output_or_2_with_one_message_and_touches_nothing_else(world, capsys, drawn):
    root, model, _ = world
    flags, recipe, calib = drawn
    out = root / "out"
    recipe_path = None
    if recipe == "missing":
        recipe_path = root / "no-such-recipe.yaml"
    elif recipe == "folder":
        recipe_path = root / "model"
    elif recipe is not None:
        recipe_path = root / f"recipe{recipe[0]}"
        recipe_path.write_bytes(recipe[1])
    argv = ["prune", "--model", str(model), "--calib", str(root / calib), "--out", str(out), "--no-progress", *flags]
    if recipe_path is not None:
        argv += ["--recipe", str(recipe_path)]
    before = snapshot(root, out)
    capsys.readouterr()
    try:
        code = main(argv)
        captured = capsys.readouterr()
        event(f"exit {code}")
        assert "Traceback" not in captured.err, (argv, captured.err)
        assert code in (0, 2), (argv, code, captured.err)
        if code == 0:
            check_output(out)
            assert "parameters:" in captured.out
        else:
            errors = [line for line in captured.err.splitlines() if line.startswith("prunekit: error: ")]
            assert len(errors) == 1 and len(errors[0]) > len("prunekit: error: ") + 10, (argv, captured.err)
            assert not out.exists(), argv
        assert snapshot(root, out) == before, argv
    finally:
        shutil.rmtree(out, ignore_errors=True)
        for sibling in root.glob(f".{out.name}.prunekit-*"):
            shutil.rmtree(sibling, ignore_errors=True)
        if recipe_path is not None and recipe not in ("missing", "folder"):
            recipe_path.unlink()
