"""Disk to disk (prunekit.models.pipeline): user formulations reach a whole-model prune, streaming keeps one block in
memory and the checkpoint's dtype, the output loads with stock from_pretrained, bad checkpoints stop early."""

from __future__ import annotations

import json
import sys

import pytest
import torch

import prunekit
from _checkpoints import CUSTOM_FORMULATION, calibration_file, recipe_dict, tensors_of, write_checkpoint
from prunekit.cli import main
from prunekit.errors import ModelError
from prunekit.models.pipeline import prune_checkpoint

pytestmark = pytest.mark.hf


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """A package-less module `my_formulations` in a folder of its own, importable like a user's code."""
    folder = tmp_path / "user_code"
    folder.mkdir()
    (folder / "my_formulations.py").write_text(CUSTOM_FORMULATION)
    monkeypatch.syspath_prepend(str(folder))
    yield folder
    from prunekit.solvers.registry import registered, unregister_solver

    for cls in registered():
        if cls.__module__ in ("my_formulations", "prunekit_user_my_formulations"):
            unregister_solver(cls)
    sys.modules.pop("my_formulations", None)
    sys.modules.pop("prunekit_user_my_formulations", None)


def _mlp_width(folder) -> int:
    return json.loads((folder / "config.json").read_text())["intermediate_size"]


def test_user_formulation_prunes_a_model_from_python(tmp_path, user_module):
    """Property: Recipe(method=<a Formulation defined outside prunekit>) prunes a whole model; the model shrinks."""
    import my_formulations
    from transformers import AutoModelForCausalLM

    src = write_checkpoint(tmp_path / "src")
    calib = calibration_file(tmp_path)
    model = AutoModelForCausalLM.from_pretrained(src).eval()
    recipe = prunekit.Recipe(method=my_formulations.EnergyChannelDrop, structure="channels", sparsity=0.25,
                             calibration=dict(source=str(calib), nsamples=4, seqlen=32))
    assert recipe.method.name == "my_formulations:EnergyChannelDrop"
    assert recipe.method.structures == frozenset({"channels"})  # from the `sparsity: Channels` field
    result = prunekit.prune(model, recipe, "wikitext2" if False else str(calib), tokenizer=_tok(src))
    assert result.report.params_after < result.report.params_before
    assert model.config.intermediate_size == 48  # ceil(64 * 0.75)
    assert {r.formulation for r in result.plan.records} == {"EnergyChannelDrop"}
    # and from the same recipe written to a file
    path = tmp_path / "r.json"
    path.write_text(json.dumps(recipe.to_dict()))
    assert prunekit.models.recipe.Recipe.coerce(str(path)).method.formulation is my_formulations.EnergyChannelDrop


def _tok(folder):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder))


@pytest.mark.parametrize("reference", ["my_formulations:EnergyChannelDrop", "FILE:EnergyChannelDrop"])
def test_user_formulation_prunes_a_model_from_the_cli(tmp_path, user_module, reference, capsys):
    """Property: `prunekit prune --method module:Class` (or file.py:Class) prunes and the written model is smaller."""
    src = write_checkpoint(tmp_path / "src")
    calib = calibration_file(tmp_path)
    reference = reference.replace("FILE", str(user_module / "my_formulations.py"))
    out = tmp_path / "out"
    code = main(["prune", "--model", str(src), "--method", reference, "--structure", "channels", "--sparsity",
                 "0.25", "--calib", str(calib), "--nsamples", "4", "--seqlen", "32", "--out", str(out),
                 "--no-progress"])
    assert code == 0, capsys.readouterr().err
    assert _mlp_width(out) == 48 < _mlp_width(src)
    report = json.loads((out / "report.json").read_text())
    assert report["recipe"]["method"].endswith(":EnergyChannelDrop")
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(out)  # stock loader


def test_formulation_without_solver_is_refused_with_advice(tmp_path):
    from dataclasses import dataclass

    from prunekit.formulations import Channels, Formulation

    @dataclass(frozen=True, eq=False)
    class NoSolver(Formulation):
        sparsity: Channels = None

        def _form(self):
            return self._base_form(is_mixed_integer=True)

    with pytest.raises(Exception, match="register_solver"):
        prunekit.Recipe(method=NoSolver, structure="channels", sparsity=0.3)


@pytest.mark.parametrize("method,structure", [("wanda", "unstructured"), ("fasp", "channels"), ("flap", "channels")])
def test_streamed_output_equals_in_memory_prune_and_loads_stock(tmp_path, method, structure):
    """Property: prune_checkpoint (disk to disk, one block at a time) gives the same model as prunekit.prune on the
    model in memory, and stock from_pretrained serves it."""
    from transformers import AutoModelForCausalLM

    src = write_checkpoint(tmp_path / "src", layers=3)
    calib = calibration_file(tmp_path)
    recipe = recipe_dict(calib, method=method, structure=structure, sparsity=0.3)
    report = prune_checkpoint(src, recipe, tmp_path / "out", progress=False, echo=None)
    assert report.output_format == "stock" and len(report.layers) > 0
    written = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    model = AutoModelForCausalLM.from_pretrained(src).eval()
    prunekit.prune(model, recipe, str(calib), tokenizer=_tok(src), progress=False)
    ids = torch.randint(0, 100, (2, 16))
    torch.testing.assert_close(written(ids).logits, model(ids).logits, atol=1e-5, rtol=1e-5)


def test_bf16_in_bf16_out_and_output_not_larger_than_input(tmp_path):
    """Property: the output keeps the checkpoint's dtype and holds each weight once (<= 1.1x the input's bytes)."""
    src = write_checkpoint(tmp_path / "src", dtype=torch.bfloat16, layers=3)
    calib = calibration_file(tmp_path)
    prune_checkpoint(src, recipe_dict(calib), tmp_path / "out", progress=False, echo=None)
    written = tensors_of(tmp_path / "out")
    assert {t.dtype for t in written.values()} == {torch.bfloat16}
    size = lambda folder: sum(p.stat().st_size for p in folder.rglob("*.safetensors"))  # noqa: E731
    assert size(tmp_path / "out") <= 1.1 * size(src)
    assert not (tmp_path / "out" / "plan" / "plan.safetensors").exists()
    assert json.loads((tmp_path / "out" / "config.json").read_text())["torch_dtype"] == "bfloat16"


def test_at_most_one_block_is_materialized_at_a_time(tmp_path, monkeypatch):
    """Property: host memory is O(one block): while block i is loaded, every other block's parameters are on the
    meta device (a regression to loading the whole model fails here)."""
    from prunekit.models import stores

    src = write_checkpoint(tmp_path / "src", layers=4)
    calib = calibration_file(tmp_path)
    seen = []
    original = stores.CheckpointBlocks.load

    def load(self, index):
        block = original(self, index)
        real = [i for i, b in enumerate(self.adapter.blocks(self.model))
                if any(p.device.type != "meta" for p in b.parameters())]
        seen.append(real)
        return block

    monkeypatch.setattr(stores.CheckpointBlocks, "load", load)
    prune_checkpoint(src, recipe_dict(calib, method="sparsegpt"), tmp_path / "out", progress=False, echo=None)
    assert len(seen) == 4 and all(len(real) == 1 for real in seen), seen


def test_missing_tensor_stops_before_any_work(tmp_path):
    """Property: a checkpoint missing a tensor is refused with one clear error, and nothing appears at --out."""
    from safetensors.torch import load_file, save_file

    src = write_checkpoint(tmp_path / "src")
    shard = src / "model.safetensors"
    state = load_file(str(shard))
    state.pop("model.layers.1.mlp.down_proj.weight")
    save_file(state, str(shard), metadata={"format": "pt"})
    calib = calibration_file(tmp_path)
    with pytest.raises(ModelError, match="down_proj"):
        prune_checkpoint(src, recipe_dict(calib), tmp_path / "out", progress=False, echo=None)
    assert not (tmp_path / "out").exists()


def test_pickle_only_checkpoint_is_refused_without_unpickling(tmp_path, capsys):
    src = write_checkpoint(tmp_path / "src")
    (src / "model.safetensors").unlink()
    (src / "pytorch_model.bin").write_bytes(b"not a pickle: never loaded")
    code = main(["prune", "--model", str(src), "--method", "wanda", "--calib", str(calibration_file(tmp_path)),
                 "--nsamples", "2", "--seqlen", "16", "--out", str(tmp_path / "out"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "pickle" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_accelerate_offloaded_model_prunes_like_the_same_model_in_memory():
    """Property: a model whose weights accelerate offloaded (meta parameters + weights map) goes through the same
    runner and ends up identical to the same model pruned in memory."""
    import copy

    from accelerate import cpu_offload

    from _tiny_models import tiny_model, tokens

    model = tiny_model("llama", dtype=torch.float32)
    reference = copy.deepcopy(model)
    ids = tokens(n=4, t=16)
    cpu_offload(model, execution_device=torch.device("cpu"))
    assert any(p.device.type == "meta" for p in model.parameters())
    recipe = dict(method="fasp", structure="channels", sparsity=0.3)
    prunekit.prune(reference, recipe, ids, progress=False)
    result = prunekit.prune(model, recipe, ids, progress=False)
    assert result.report.params_after == sum(p.numel() for p in reference.parameters())
    torch.testing.assert_close(model(ids).logits, reference(ids).logits, rtol=0, atol=0)


def test_hub_id_offline_is_one_clear_error_before_any_output(tmp_path, monkeypatch, capsys):
    """A hub id resolves through huggingface_hub's snapshot (safetensors + json only); offline it is one error."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    code = main(["prune", "--model", "some-org/some-model", "--method", "wanda", "--calib", "self",
                 "--out", str(tmp_path / "out"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "HF_HUB_OFFLINE" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_load_model_refuses_a_checkpoint_missing_a_tensor(tmp_path):
    """Property: the Python loader checks the safetensors against config.json before loading (stock loaders would
    fill a missing tensor with random weights)."""
    from safetensors.torch import load_file, save_file

    src = write_checkpoint(tmp_path / "src")
    state = load_file(str(src / "model.safetensors"))
    state.pop("model.norm.weight")
    save_file(state, str(src / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ModelError, match=r"missing 1 \[model.norm.weight\]"):
        prunekit.load_model(str(src))
