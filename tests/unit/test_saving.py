"""Saving and loading pruned models: identical logits, stock loading for uniform widths, atomicity."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from _tiny_models import FAMILY_TYPES, tiny_model, tokens

pytestmark = pytest.mark.hf

from prunekit.errors import ModelError  # noqa: E402
from prunekit.models.plan import GroupEdit, ModuleEdit, PruningPlan  # noqa: E402
from prunekit.models.saving import load_pruned, save_pruned  # noqa: E402
from prunekit.models.surgery import apply_  # noqa: E402


def _plan(model, hetero, kinds=None):
    from prunekit.models.graph import coupled_groups

    plan = PruningPlan()
    for g in coupled_groups(model, kinds=kinds):
        if g.kind == "vo_channel" or g.num_units < 2:
            continue
        n_keep = max(1, g.num_units // (2 + g.block)) if hetero else g.num_units // 2
        plan.group_edits[g.name] = GroupEdit(g.name, g.kind, tuple(range(1, n_keep + 1)), g.num_units)
    return plan


def _logits(model, x):
    with torch.no_grad():
        return model(x).logits


def _pruned(family, hetero, kinds=None):
    model = tiny_model(family, dtype=torch.float32)
    model.config._attn_implementation = "sdpa"  # what from_pretrained gives back
    plan = _plan(model, hetero, kinds)
    apply_(model, plan)
    return model, plan


@pytest.mark.parametrize("family", FAMILY_TYPES)
@pytest.mark.parametrize("hetero", [False, True], ids=["uniform", "hetero"])
def test_save_load_roundtrip_gives_identical_logits(tmp_path, family, hetero):
    model, plan = _pruned(family, hetero)
    out = save_pruned(model, None, tmp_path / "out", plan=plan)
    meta = json.loads((out / "config.json").read_text())["prunekit"]
    assert meta["sparsity_kind"] == "structured" and meta["speedup_claimed"] is True
    loaded, tok = load_pruned(out)
    assert tok is None
    x = tokens()
    assert torch.allclose(_logits(loaded, x), _logits(model, x), atol=1e-5)
    assert {k: v.shape for k, v in loaded.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}
    files = {p.name for p in out.rglob("*")}
    assert "model.safetensors" in files and not any(f.endswith((".bin", ".pt", ".pth", ".pkl")) for f in files)
    assert (out / "plan" / "plan.json").is_file()
    llama_like = family.startswith(("llama", "mistral", "qwen", "gemma"))
    assert meta["format"] == ("stock" if llama_like and not hetero else "rebuild"), meta["format"]
    if meta["format"] == "rebuild":
        assert meta["base_config"]["model_type"] == model.config.model_type
        from prunekit.models.adapters import adapter_for

        adapter = adapter_for(model)
        expected = {f"{adapter.block_prefix(model, i)}.{rel}": list(adapter.get_weight(b.get_submodule(rel)).shape)
                    for i, b in enumerate(adapter.blocks(model)) for rel in adapter.linear_names(b)}
        assert {k: v[:2] for k, v in meta["linear_shapes"].items()} == expected


@pytest.mark.parametrize("family", ["llama", "qwen3", "gemma3_text", "opt", "gpt2"])
def test_uniform_ffn_widths_load_with_stock_from_pretrained(tmp_path, family):
    from transformers import AutoModelForCausalLM

    kinds = ("glu_channel", "ffn_channel") if family in ("opt", "gpt2") else None
    model, _ = _pruned(family, hetero=False, kinds=kinds)
    out = save_pruned(model, None, tmp_path / "m")
    assert json.loads((out / "config.json").read_text())["prunekit"]["format"] == "stock"
    stock = AutoModelForCausalLM.from_pretrained(out).eval()
    x = tokens()
    assert torch.allclose(_logits(stock, x), _logits(model, x), atol=1e-5)


def test_heterogeneous_widths_refuse_silent_stock_loading(tmp_path):
    from transformers import AutoModelForCausalLM

    model, _ = _pruned("llama", hetero=True)
    out = save_pruned(model, None, tmp_path / "h")
    with pytest.raises(Exception):  # stock loading must fail loudly, never load the wrong shapes
        AutoModelForCausalLM.from_pretrained(out)
    loaded, _ = load_pruned(out)
    assert loaded.model.layers[0].mlp.down_proj.in_features != loaded.model.layers[1].mlp.down_proj.in_features
    # a rebuilt model can be saved again and reloaded
    again = save_pruned(loaded, None, tmp_path / "h2")
    reloaded, _ = load_pruned(again)
    assert torch.allclose(_logits(reloaded, tokens()), _logits(model, tokens()), atol=1e-5)


@pytest.mark.parametrize("family", ["qwen2", "opt", "gpt2"])
def test_compacted_vo_channels_roundtrip(tmp_path, family):
    """FASP's V/O channels are stored compacted (smaller weights + index buffers) and rebuilt by load_pruned."""
    from prunekit.models.graph import coupled_groups

    model = tiny_model(family, dtype=torch.float32)
    model.config._attn_implementation = "sdpa"
    plan = _plan(model, hetero=True)
    for g in coupled_groups(model, kinds="vo_channel"):
        plan.group_edits[g.name] = GroupEdit(g.name, g.kind, tuple(range(0, g.num_units, 3)), g.num_units)
    apply_(model, plan)
    out = save_pruned(model, None, tmp_path / "vo", plan=plan)
    meta = json.loads((out / "config.json").read_text())["prunekit"]
    assert meta["format"] == "rebuild"
    assert sum(len(v) == 4 for v in meta["linear_shapes"].values()) == 4  # v and o of 2 blocks
    loaded, _ = load_pruned(out)
    assert torch.allclose(_logits(loaded, tokens()), _logits(model, tokens()), atol=1e-5)


def test_added_bias_forces_the_prunekit_loader(tmp_path):
    model = tiny_model("llama", dtype=torch.float32)
    name = "model.layers.0.self_attn.o_proj"
    apply_(model, PruningPlan(module_edits={name: ModuleEdit(name, bias=torch.randn(32))}))
    out = save_pruned(model, None, tmp_path / "b")
    assert json.loads((out / "config.json").read_text())["prunekit"]["format"] == "rebuild"
    loaded, _ = load_pruned(out)
    assert torch.equal(loaded.get_submodule(name).bias, model.get_submodule(name).bias)


@pytest.mark.parametrize("kind", ["unstructured", "n:m", "channels"])
def test_unstructured_results_are_labelled_dense_with_zeros(tmp_path, kind):
    model = tiny_model("llama", dtype=torch.float32)
    name = "model.layers.0.mlp.down_proj"
    w = model.get_submodule(name).weight.detach().clone()
    w[:, ::2] = 0
    plan = PruningPlan(module_edits={name: ModuleEdit(name, weight=w, sparsity_kind=kind)})
    apply_(model, plan)
    out = save_pruned(model, None, tmp_path / "u", plan=plan)
    meta = json.loads((out / "config.json").read_text())["prunekit"]
    assert meta["sparsity_kind"] == kind and meta["speedup_claimed"] is False and meta["format"] == "stock"
    assert "no speedup" in meta["note"]
    loaded, _ = load_pruned(out)
    assert torch.equal(loaded.get_submodule(name).weight, w)


def test_mixed_plans_are_labelled_and_claim_no_speedup(tmp_path):
    model, plan = _pruned("llama", hetero=False, kinds="glu_channel")
    name = "model.layers.0.self_attn.q_proj"
    w = model.get_submodule(name).weight.detach().clone()
    w[:, :4] = 0
    plan.module_edits[name] = ModuleEdit(name, weight=w, sparsity_kind="unstructured")
    plan.module_edits["model.layers.0.mlp.down_proj"] = ModuleEdit("model.layers.0.mlp.down_proj",
                                                                   sparsity_kind="channels")
    out = save_pruned(model, None, tmp_path / "mix", plan=plan)
    meta = json.loads((out / "config.json").read_text())["prunekit"]
    assert meta["sparsity_kind"] == "structured+unstructured" and meta["speedup_claimed"] is False
    assert json.loads((save_pruned(model, None, tmp_path / "d") / "config.json").read_text())["prunekit"][
        "sparsity_kind"] == "dense"


def test_failure_mid_save_leaves_no_output_folder(tmp_path):
    model, plan = _pruned("llama", hetero=True)

    class BrokenTokenizer:
        def save_pretrained(self, path):
            (tmp_path / "reached").write_text("yes")
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        save_pruned(model, BrokenTokenizer(), tmp_path / "out", plan=plan)
    assert (tmp_path / "reached").exists(), "the failure must happen after the weights were written"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["reached"], list(tmp_path.iterdir())


def test_existing_folder_is_kept_unless_overwrite(tmp_path):
    model, _ = _pruned("llama", hetero=False)
    out = save_pruned(model, None, tmp_path / "o")
    with pytest.raises(ModelError, match="already exists"):
        save_pruned(model, None, out)
    smaller = copy.deepcopy(model)
    apply_(smaller, _plan(smaller, hetero=False, kinds="glu_channel"))
    save_pruned(smaller, None, out, overwrite=True)
    loaded, _ = load_pruned(out)
    assert loaded.config.intermediate_size == 16
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o"]


def test_load_pruned_errors_name_the_folder(tmp_path):
    with pytest.raises(ModelError, match="no config.json"):
        load_pruned(tmp_path)
