"""Stock export: a pruned model written with ``stock_layout`` loads in stock transformers with equal logits."""

from __future__ import annotations

import json

import pytest
import torch

from _tiny_models import FAMILY_TYPES, tiny_model, tokens

pytestmark = pytest.mark.hf

from prunekit.errors import ModelError  # noqa: E402
from prunekit.models.adapters import adapter_for  # noqa: E402
from prunekit.models.export import StockLayout, stock_layout  # noqa: E402
from prunekit.models.plan import GroupEdit, ModuleEdit, PruningPlan  # noqa: E402
from prunekit.models.surgery import apply_, count_parameters  # noqa: E402

MLP_KINDS = ("glu_channel", "ffn_channel")
HEAD_KINDS = ("gqa_group", "attention_head")
DOWN = {"opt": "fc2", "gpt2": "mlp.c_proj"}
O_PROJ = {"opt": "self_attn.out_proj", "gpt2": "attn.c_proj"}
SCENARIOS = ("uniform", "hetero", "bias_down", "bias_o", "heads", "vo", "heads_vo_hetero")

# families whose stock class has no bias (and no flag) for the module that receives the FLAP bias
NO_STOCK_FORM = {("mistral", "bias_down"), ("mistral", "bias_o"), ("qwen2", "bias_down"), ("qwen2", "bias_o"),
                 ("qwen3", "bias_down"), ("gemma", "bias_down"), ("gemma2", "bias_down"),
                 ("gemma3_text", "bias_down")}


def _group(model, block, kinds):
    groups = [g for g in adapter_for(model).coupled_groups(model, block) if g.kind in kinds]
    assert groups, f"no group of kind {kinds}"
    return groups[0]


def _keep(plan, group, n_keep, seed):
    gen = torch.Generator().manual_seed(seed)
    kept = tuple(sorted(torch.randperm(group.num_units, generator=gen)[:n_keep].tolist()))
    plan.group_edits[group.name] = GroupEdit(group.name, group.kind, kept, group.num_units)


def _bias_edit(plan, model, rel, seed):
    adapter = adapter_for(model)
    gen = torch.Generator().manual_seed(seed)
    for i in range(len(adapter.blocks(model))):
        name = f"{adapter.block_prefix(model, i)}.{rel}"
        weight = adapter.get_weight(model.get_submodule(name)).detach().clone()
        bias = 0.1 * torch.randn(weight.shape[0], generator=gen, dtype=weight.dtype)
        plan.module_edits[name] = ModuleEdit(module=name, weight=weight, bias=bias)


def _plan(model, family, scenario):
    plan = PruningPlan()
    mlp = [_group(model, i, MLP_KINDS) for i in range(2)]
    if scenario in ("uniform", "bias_down", "bias_o"):
        for i, g in enumerate(mlp):
            _keep(plan, g, 48, seed=i)
    if scenario in ("hetero", "heads_vo_hetero"):
        _keep(plan, mlp[0], 40, seed=0)
        _keep(plan, mlp[1], 56, seed=1)
    if scenario == "bias_down":
        _bias_edit(plan, model, DOWN.get(family, "mlp.down_proj"), seed=5)
    if scenario == "bias_o":
        _bias_edit(plan, model, O_PROJ.get(family, "self_attn.o_proj"), seed=6)
    if scenario in ("heads", "heads_vo_hetero"):
        for i in range(2):
            g = _group(model, i, HEAD_KINDS)
            n = g.num_units  # block 0 keeps half, block 1 more (all of 2 GQA groups): heterogeneous heads
            _keep(plan, g, max(1, n // 2) if i == 0 else (n - 1 if n > 2 else n), seed=10 + i)
    if scenario in ("vo", "heads_vo_hetero"):
        for i in range(2):
            g = _group(model, i, ("vo_channel",))
            _keep(plan, g, g.num_units - 3 - 2 * i, seed=20 + i)
    return plan


def _pruned(family, scenario):
    model = tiny_model(family, dtype=torch.float32)
    apply_(model, _plan(model, family, scenario))
    return model


def _write(layout: StockLayout, tensors, folder):
    from safetensors.torch import save_file

    save_file(layout.transform(tensors), str(folder / "model.safetensors"), metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps(layout.config))


def _logits(model, x):
    with torch.no_grad():
        return model(x, use_cache=False).logits


@pytest.mark.parametrize("family", FAMILY_TYPES)
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_stock_output_loads_with_equal_logits(family, scenario, tmp_path):
    """A stock layout reloads with stock ``from_pretrained`` (no missing/unexpected tensors) and equal logits;
    where no exact stock form exists the layout says "rebuild" with a note naming the module."""
    from transformers import AutoModelForCausalLM

    model = _pruned(family, scenario)
    layout = stock_layout(model)
    if (family, scenario) in NO_STOCK_FORM:
        assert layout.format == "rebuild" and layout.vllm_exact is False
        assert layout.notes and all("bias" in n and "Fix:" in n for n in layout.notes), layout.notes
        assert layout.config == model.config.to_dict() and layout.added_parameters == 0
        return
    assert layout.format == "stock", layout.notes
    _write(layout, model.state_dict(), tmp_path)
    loaded, info = AutoModelForCausalLM.from_pretrained(str(tmp_path), dtype=torch.float32,
                                                        attn_implementation="eager", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    assert type(loaded) is type(model)
    x = tokens()
    expected, got = _logits(model, x), _logits(loaded.eval(), x)
    assert torch.allclose(got, expected, atol=1e-5, rtol=0), (got - expected).abs().max()
    assert count_parameters(loaded) == count_parameters(model) + layout.added_parameters


def test_added_parameters_zero_for_uniform_and_exact_for_padding():
    uniform = stock_layout(_pruned("llama", "uniform"))
    assert uniform.format == "stock" and uniform.added_parameters == 0 and not uniform.notes
    hetero = stock_layout(_pruned("llama", "hetero"))
    # block 0 keeps 40 of the widest 56 channels: 16 zero rows in gate and up, 16 zero columns in down (hidden 32)
    assert hetero.added_parameters == 3 * 16 * 32
    assert hetero.config["intermediate_size"] == 56
    assert any("intermediate_size" in n for n in hetero.notes)
    flap = stock_layout(_pruned("llama", "bias_down"))
    # mlp_bias switched on: zero gate/up biases (48 each per block), down biases were added by pruning
    assert flap.config["mlp_bias"] is True and flap.added_parameters == 2 * 2 * 48


def test_config_changes_only_what_is_needed():
    model = _pruned("llama", "heads_vo_hetero")
    layout = stock_layout(model)
    base = model.config.to_dict()
    changed = {k for k in set(base) | set(layout.config) if base.get(k) != layout.config.get(k)}
    assert changed <= {"intermediate_size", "num_attention_heads", "num_key_value_heads", "architectures"}, changed
    assert layout.config["architectures"] == ["LlamaForCausalLM"]
    uniform = stock_layout(_pruned("qwen3", "uniform"))
    assert uniform.config["intermediate_size"] == 48 and "attention_bias" not in {
        k for k in uniform.config if uniform.config[k] != tiny_model("qwen3").config.to_dict().get(k)}


@pytest.mark.parametrize("family", ["llama", "gpt2", "opt"])
def test_blockwise_transform_equals_full_transform(family):
    model = _pruned(family, "heads_vo_hetero")
    layout = stock_layout(model)
    state = model.state_dict()
    adapter = adapter_for(model)
    prefixes = [adapter.block_prefix(model, i) + "." for i in range(len(adapter.blocks(model)))]
    parts = [{k: v for k, v in state.items() if k.startswith(p)} for p in prefixes]
    parts.append({k: v for k, v in state.items() if not any(k.startswith(p) for p in prefixes)})
    merged = {}
    for part in parts:
        merged.update(layout.transform(part))
    full = layout.transform(state)
    assert list(sorted(merged)) == list(sorted(full))
    assert all(torch.equal(merged[k], full[k]) for k in full)
    assert not any(k.endswith(("in_index", "out_index")) for k in full)


def test_affects_names_changed_modules_only():
    model = _pruned("llama", "hetero")
    layout = stock_layout(model)
    assert layout.affects("model.layers.0.mlp.down_proj.weight")  # 40 -> padded to 56
    assert layout.affects("model.layers.0.mlp.gate_proj.weight")
    assert not layout.affects("model.layers.1.mlp.down_proj.weight")  # the widest block is written as it is
    assert not layout.affects("model.layers.0.self_attn.q_proj.weight")
    assert not layout.affects("model.embed_tokens.weight")
    state = model.state_dict()
    out = layout.transform(state)
    assert out["model.layers.1.mlp.up_proj.weight"] is state["model.layers.1.mlp.up_proj.weight"]
    assert out["model.layers.0.mlp.up_proj.weight"].shape == (56, 32)
    tied = stock_layout(_pruned("llama_mha", "uniform"))
    assert tied.affects("lm_head.weight") and "lm_head.weight" not in tied.transform({"lm_head.weight": torch.ones(1)})


def test_meta_device_model_gives_the_same_layout():
    model = _pruned("llama", "heads_vo_hetero")
    real = stock_layout(model)
    meta = stock_layout(model.to("meta"))
    assert (meta.format, meta.config, meta.notes, meta.added_parameters) == \
           (real.format, real.config, real.notes, real.added_parameters)
    assert meta.affects("model.layers.0.self_attn.v_proj.out_index")


def test_compact_weight_without_its_index_is_refused():
    model = _pruned("llama", "vo")
    layout = stock_layout(model)
    name = "model.layers.0.self_attn.v_proj"
    with pytest.raises(ModelError, match="out_index"):
        layout.transform({f"{name}.weight": model.get_submodule(name).weight})


def test_vllm_exactness_flags():
    assert stock_layout(_pruned("llama", "bias_o")).vllm_exact is True
    qwen3 = stock_layout(_pruned("qwen3", "bias_o"))
    assert qwen3.format == "stock" and qwen3.vllm_exact is False and any("vLLM" in n for n in qwen3.notes)
    assert stock_layout(_pruned("mistral", "uniform")).vllm_exact is None
