"""Surgery: physically pruned model == masked twin (claim C2), parameter counts, config consistency."""

from __future__ import annotations

import copy

import pytest
import torch

from _tiny_models import FAMILY_TYPES, tiny_model, tokens

pytestmark = pytest.mark.hf

from prunekit.errors import ModelError  # noqa: E402
from prunekit.models.plan import GroupEdit, ModuleEdit, PruningPlan  # noqa: E402
from prunekit.models.surgery import (  # noqa: E402
    CompactLinear,
    apply_,
    count_parameters,
    mask_model_,
    removed_parameters,
    round_kept_count,
)

KINDS = ("glu_channel", "ffn_channel", "attention_head", "gqa_group", "vo_channel")


def _groups(model, kind=None):
    from prunekit.models.graph import coupled_groups

    return coupled_groups(model, kinds=kind)


def _random_plan(model, groups, seed, hetero=True):
    gen = torch.Generator().manual_seed(seed)
    plan = PruningPlan()
    for i, g in enumerate(groups):
        n_keep = max(1, g.num_units // (2 + (i % 3 if hetero else 0)))
        kept = tuple(sorted(torch.randperm(g.num_units, generator=gen)[:n_keep].tolist()))
        plan.group_edits[g.name] = GroupEdit(g.name, g.kind, kept, g.num_units)
    return plan


def _logits(model, x):
    with torch.no_grad():
        return model(x, use_cache=False).logits


def _cases():
    for fam in FAMILY_TYPES:
        model = tiny_model(fam)
        kinds = {g.kind for g in _groups(model)}
        for kind in KINDS:
            if kind in kinds:
                yield fam, kind


@pytest.mark.parametrize("family,kind", list(_cases()))
def test_pruned_equals_masked_twin(family, kind):
    """Claim C2 at model level: removing units == zeroing their downstream columns, and counts match."""
    model = tiny_model(family)
    groups = [g for g in _groups(model, kind) if g.num_units > 1]
    assert groups, f"{family} has no prunable {kind} group"
    plan = _random_plan(model, groups, seed=3)
    pruned, masked = copy.deepcopy(model), copy.deepcopy(model)
    n0 = count_parameters(pruned)
    expected_removed = removed_parameters(pruned, plan)
    apply_(pruned, plan)
    mask_model_(masked, plan)
    x = tokens()
    dense, lp, lm = _logits(model, x), _logits(pruned, x), _logits(masked, x)
    assert torch.allclose(lp, lm, atol=1e-10, rtol=0), (lp - lm).abs().max()
    assert (lp - dense).abs().max() > 1e-4, "the plan removed nothing that matters: test is vacuous"
    assert expected_removed > 0 and count_parameters(pruned) == n0 - expected_removed
    # the pruned model still generates with a KV cache
    with torch.no_grad():
        out = pruned(x, use_cache=True)
    assert torch.allclose(out.logits, lp, atol=1e-10)


@pytest.mark.parametrize("family", FAMILY_TYPES)
def test_all_structures_heterogeneous_widths_and_config(family):
    model = tiny_model(family)
    groups = [g for g in _groups(model) if g.kind != "vo_channel" and g.num_units > 1]
    plan = _random_plan(model, groups, seed=5, hetero=True)
    pruned, masked = copy.deepcopy(model), copy.deepcopy(model)
    apply_(pruned, plan)
    mask_model_(masked, plan)
    x = tokens(seed=1)
    assert torch.allclose(_logits(pruned, x), _logits(masked, x), atol=1e-10, rtol=0)
    from prunekit.models.adapters import adapter_for

    adapter = adapter_for(pruned)
    widths = set()
    for i in range(len(adapter.blocks(pruned))):
        for g in adapter.coupled_groups(pruned, i):
            if g.kind == "vo_channel":
                continue
            edit = plan.group_edits[g.name]
            assert g.num_units == len(edit.kept_units), (g.name, g.num_units, edit.kept_units)
            widths.add((g.kind, g.num_units))
    assert len(widths) > len({k for k, _ in widths}), "layers were expected to differ in width"
    cfg = pruned.config
    if family.startswith(("llama", "mistral", "qwen", "gemma")):
        counts = [adapter.attention_counts(pruned, i) for i in range(2)]
        assert cfg.intermediate_size == max(adapter.intermediate_size(pruned, i) for i in range(2))
        assert cfg.num_attention_heads == max(c[0] for c in counts)
        base_hd = getattr(model.config, "head_dim", None) or model.config.hidden_size // model.config.num_attention_heads
        assert cfg.head_dim == counts[0][2] == counts[1][2] == base_hd  # written explicitly: heads changed
        for i, (nq, nkv, _) in enumerate(counts):
            assert adapter.blocks(pruned)[i].self_attn.num_key_value_groups == nq // nkv


@pytest.mark.parametrize("family", ["llama", "qwen2", "opt", "gpt2"])
def test_uniform_widths_set_the_config(family):
    model = tiny_model(family)
    groups = [g for g in _groups(model) if g.kind != "vo_channel" and g.num_units > 1]
    plan = _random_plan(model, groups, seed=7, hetero=False)
    apply_(model, plan)
    cfg = model.config
    if family == "gpt2":
        assert (cfg.n_inner, cfg.n_head) == (32, 2)
        assert model.transformer.h[1].attn.split_size == 16
    elif family == "opt":
        assert (cfg.ffn_dim, cfg.num_attention_heads) == (32, 2)
        assert model.model.decoder.layers[0].self_attn.num_heads == 2
    else:
        assert (cfg.intermediate_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim) == (32, 2, 1, 8)


def test_module_edits_are_written_through_the_adapter_and_add_biases():
    model = tiny_model("gpt2")
    name = "transformer.h.0.mlp.c_proj"
    w = torch.randn(32, 64, dtype=torch.float64)
    plan = PruningPlan(module_edits={name: ModuleEdit(name, weight=w, sparsity_kind="unstructured")})
    apply_(model, plan)
    assert torch.equal(model.get_submodule(name).weight, w.t())
    llama = tiny_model("llama")
    down = "model.layers.1.mlp.down_proj"
    assert llama.get_submodule(down).bias is None
    b = torch.randn(32, dtype=torch.float64)
    x = tokens()
    before = _logits(llama, x)
    apply_(llama, PruningPlan(module_edits={down: ModuleEdit(down, bias=b)}))
    assert torch.equal(llama.get_submodule(down).bias, b)
    assert not torch.allclose(_logits(llama, x), before)


def test_plan_is_checked_against_the_model():
    model = tiny_model("llama")
    (g,) = _groups(model, "glu_channel")[:1]
    bad = PruningPlan(group_edits={g.name: GroupEdit(g.name, g.kind, (0, 1), g.num_units + 1)})
    with pytest.raises(ModelError, match="units"):
        apply_(copy.deepcopy(model), bad)
    with pytest.raises(ModelError, match="every unit"):
        apply_(copy.deepcopy(model), PruningPlan(group_edits={g.name: GroupEdit(g.name, g.kind, (), g.num_units)}))
    with pytest.raises(ModelError, match="not a coupled group"):
        apply_(copy.deepcopy(model), PruningPlan(group_edits={"nope": GroupEdit("nope", "glu_channel", (0,), 2)}))
    heads = _groups(model, "gqa_group")[0]
    vo = [x for x in _groups(model, "vo_channel") if x.block == heads.block][0]
    # a masked vo_channel edit and a physical head edit on the same o_proj compose
    both = PruningPlan(group_edits={heads.name: GroupEdit(heads.name, heads.kind, (1,), 2),
                                    vo.name: GroupEdit(vo.name, vo.kind, tuple(range(0, 16, 2)), 16)})
    pruned, masked = copy.deepcopy(model), copy.deepcopy(model)
    n0 = count_parameters(pruned)
    removed = removed_parameters(pruned, both)
    apply_(pruned, both)
    mask_model_(masked, both)
    assert torch.allclose(_logits(pruned, tokens()), _logits(masked, tokens()), atol=1e-10)
    # head 1 keeps its 8 even channels of 16 (2 query heads x 8): o_proj keeps 16 - 8 columns, v_proj 4 rows
    o = pruned.get_submodule(heads.downstream)
    assert isinstance(o, CompactLinear) and o.weight.shape == (32, 8) and o.full_in == 16
    v = pruned.get_submodule(heads.downstream.replace("o_proj", "v_proj"))
    assert v.weight.shape == (4, 32) and v.full_out == 8 and v.out_index.tolist() == [0, 2, 4, 6]
    assert count_parameters(pruned) == n0 - removed
    with pytest.raises(ModelError, match="compacted"):
        apply_(pruned, PruningPlan(group_edits={vo.name: GroupEdit(vo.name, vo.kind, (0,), 8)}))


@pytest.mark.parametrize("n_keep,n_total,multiple,expected", [
    (1000, 1536, 64, 1024), (1000, 1010, 64, 1010), (8, 64, 8, 8), (9, 64, 8, 16), (5, 7, None, 5),
    (0, 64, 8, 0), (1, 1536, 128, 128),
])
def test_round_kept_count(n_keep, n_total, multiple, expected):
    assert round_kept_count(n_keep, n_total, multiple) == expected


def test_round_kept_count_rejects_impossible_counts():
    with pytest.raises(ValueError):
        round_kept_count(10, 5, 8)


@pytest.mark.parametrize("family", ["llama", "gemma3_text", "opt", "gpt2"])
def test_float32_pruned_matches_masked_within_tolerance(family):
    model = tiny_model(family, dtype=torch.float32)
    groups = [g for g in _groups(model) if g.num_units > 1]
    plan = _random_plan(model, groups, seed=11)
    pruned, masked = copy.deepcopy(model), copy.deepcopy(model)
    apply_(pruned, plan)
    mask_model_(masked, plan)
    assert all(p.dtype == torch.float32 for p in pruned.parameters())
    x = tokens(seed=2)
    assert torch.allclose(_logits(pruned, x), _logits(masked, x), atol=1e-5, rtol=0)
