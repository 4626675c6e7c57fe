"""Channels inside MoE experts (prunekit.models.families.expert_channels): groups derived per expert equal the
hand-derived couplings (also when a perturbation re-routes tokens), experts fuse back smaller and aligned with the
same forward, non-uniform widths are refused with one clear error, and an expert no token reached is pruned by
weight-norm channel scores to its siblings' width."""

from __future__ import annotations

import copy

import pytest
import torch

pytestmark = [pytest.mark.hf, pytest.mark.usefixtures("one_thread_module")]

from prunekit.errors import ModelError  # noqa: E402
from prunekit.models.families.expert_channels import (  # noqa: E402
    check_expert_ratios, downstream_width, expert_pattern,
)
from prunekit.models.families.experts import LinearExperts, fuse_experts_, unfuse_experts_  # noqa: E402
from prunekit.models.families.generic import generic_adapter, unrouted_solution  # noqa: E402

TOKENS = torch.randint(0, 96, (1, 8), generator=torch.Generator().manual_seed(0))


def moe_model(kind: str, **overrides):
    """A tiny random Mixtral / Qwen2-MoE with its fused experts unfused into one linear pair per expert."""
    from test_generic_adapter import tiny_config
    from transformers import AutoModelForCausalLM

    config = tiny_config(kind)
    for key, value in overrides.items():
        setattr(config, key, value)
    config._attn_implementation = "eager"
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    assert set(unfuse_experts_(model).values()) == {"unfused"}
    return model


def content(groups) -> set:
    return {(g.kind, g.downstream, tuple(g.units), tuple(sorted(g.upstream.items()))) for g in groups}


def glu(p: str, down: str, width: int, fused: str = None, gate: str = None, up: str = None) -> tuple:
    """A GLU channel group written by hand: unit j = column j of down + rows j (gate) and j (up), or rows j and
    width + j of a fused [gate; up] projection."""
    units = tuple((j,) for j in range(width))
    if fused:
        upstream = {f"{p}.{fused}": tuple((j, width + j) for j in range(width))}
    else:
        upstream = {f"{p}.{gate}": units, f"{p}.{up}": units}
    return "glu_channel", f"{p}.{down}", units, tuple(sorted(upstream.items()))


# ---------------------------------------------------------------------------------------------- groups
@pytest.mark.parametrize("kind", ["mixtral", "qwen2_moe"])
def test_derived_expert_groups_equal_the_hand_derived_couplings(kind):
    model = moe_model(kind)
    adapter = generic_adapter(model)
    p = adapter.block_prefix(model, 1)
    groups = adapter.derive_groups_(model, 1, TOKENS)
    width = 48 if kind == "mixtral" else 16
    expected = {glu(p, f"mlp.experts.{e}.down_proj", width, fused=f"mlp.experts.{e}.gate_up_proj") for e in range(4)}
    if kind == "qwen2_moe":  # the shared expert is one more MLP; its sigmoid gate (out 1) is never grouped
        expected.add(glu(p, "mlp.shared_expert.down_proj", 48, gate="mlp.shared_expert.gate_proj",
                         up="mlp.shared_expert.up_proj"))
    mlp = [g for g in groups if g.kind in ("glu_channel", "ffn_channel")]
    assert content(mlp) == expected
    assert adapter.coupled_groups(model, 1) == groups
    touched = {n for g in groups for n in (g.downstream, *g.upstream)}
    assert not any(n.endswith(("mlp.gate", "shared_expert_gate")) for n in touched)  # routers untouched
    assert {expert_pattern(g.downstream[len(p) + 1:])[1] for g in mlp} >= {0, 1, 2, 3}


def test_the_probe_sees_each_expert_channel_when_perturbations_re_route_tokens():
    """Top-1 routing over 8 experts with 4 tokens: perturbing attention rows sends an expert's only token to
    another expert.  The expert then counts as reached (its input vanished), so attention and expert rows are never
    probed together and every unit keeps both its gate and its up row (seed 1 lost 36 units before)."""
    model = moe_model("mixtral", num_local_experts=8, num_experts_per_tok=1)
    adapter = generic_adapter(model)
    for seed in range(3):
        x = torch.randint(0, 96, (1, 4), generator=torch.Generator().manual_seed(seed))
        for index in (0, 1):
            groups = [g for g in adapter.derive_groups_(model, index, x) if ".experts." in g.downstream]
            assert len(groups) == 8
            for g in groups:
                (rows,) = g.upstream.values()
                assert rows == tuple((j, 48 + j) for j in range(48)), (seed, index, g.name)


def test_experts_still_fused_refuse_channels_with_one_clear_error():
    from test_generic_adapter import tiny_model

    model = tiny_model("mixtral")  # not unfused: 3-D parameters
    with pytest.raises(ModelError, match=r"still fused 3-D parameters.*Fix: .*'unstructured'"):
        generic_adapter(model).derive_groups_(model, 0, TOKENS)


# ---------------------------------------------------------------------------------------------- fusing back
def _slice_experts_(experts: LinearExperts, keep: list[list[int]]) -> None:
    """Keep channels ``keep[e]`` of expert e (gate rows j, up rows I + j, down columns j)."""
    from torch import nn

    for expert, cols in zip(experts, keep):
        gu, d = expert.gate_up_proj.weight.detach(), expert.down_proj.weight.detach()
        width = d.shape[1]
        rows = torch.tensor(cols + [width + j for j in cols])
        expert.gate_up_proj = nn.Linear(gu.shape[1], len(rows), bias=False)
        expert.down_proj = nn.Linear(len(cols), d.shape[0], bias=False)
        with torch.no_grad():
            expert.gate_up_proj.weight.copy_(gu[rows])
            expert.down_proj.weight.copy_(d[:, cols])


@pytest.mark.parametrize("kept", [34, 40])
def test_pruned_experts_fuse_back_smaller_and_aligned_with_the_same_forward(kept):
    model = moe_model("mixtral")
    moe = model.model.layers[0].mlp
    experts = moe.experts
    gen = torch.Generator().manual_seed(1)
    _slice_experts_(experts, [sorted(torch.randperm(48, generator=gen)[:kept].tolist()) for _ in range(4)])
    x = torch.randn(10, 32, generator=gen)
    index = torch.stack([torch.arange(10) % 4, (torch.arange(10) + 1) % 4], dim=1)
    weights = torch.rand(10, 2, generator=gen)
    with torch.no_grad():
        expected = experts(x, index, weights)
    assert fuse_experts_(model) == ["model.layers.0.mlp.experts", "model.layers.1.mlp.experts"]
    fused = moe.experts
    width = 40  # 34 is padded up to a multiple of 8 (grouped_mm's 16-byte rows); 40 is kept as it is
    assert tuple(fused.gate_up_proj.shape) == (4, 2 * width, 32) and tuple(fused.down_proj.shape) == (4, 32, width)
    assert fused.intermediate_dim == width
    assert fused.prunekit_padding == ((kept, width) if kept != width else None)
    assert torch.all(fused.down_proj[:, :, kept:] == 0) and torch.all(fused.gate_up_proj[:, kept:width] == 0)
    assert torch.all(fused.gate_up_proj[:, width + kept:] == 0)
    assert downstream_width(model, "model.layers.0.mlp.experts.2.down_proj") == (width, True)
    for implementation in ("eager", "grouped_mm"):  # transformers' own kernels run the padded experts
        model.config._experts_implementation = implementation
        with torch.no_grad():
            got = fused(x, index, weights)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_experts_of_different_widths_are_refused_before_anything_is_fused():
    model = moe_model("mixtral")
    _slice_experts_(model.model.layers[1].mlp.experts, [list(range(34))] * 3 + [list(range(30))])
    with pytest.raises(ModelError, match=r"different widths \[34, 34, 34, 30\].*same number of channels.*Fix:"):
        fuse_experts_(model)
    assert all(isinstance(block.mlp.experts, LinearExperts) for block in model.model.layers)  # none fused back


def _plan(adapter, model, index, kept: dict[int, int]):
    """A plan keeping the first ``kept[e]`` channels of expert e of block ``index`` (others: 34)."""
    from prunekit.models.plan import GroupEdit, PruningPlan

    edits = {}
    for g in adapter.coupled_groups(model, index):
        e = expert_pattern(g.downstream)[1]
        if g.kind == "glu_channel":
            k = kept.get(e, 34)
            edits[g.name] = GroupEdit(group=g.name, kind=g.kind, kept_units=tuple(range(k)), num_units=g.num_units)
    return PruningPlan(group_edits=edits)


def test_a_pruned_block_whose_experts_or_blocks_differ_in_width_is_refused():
    from prunekit.models.surgery import pruned_block

    model = moe_model("mixtral")
    adapter = generic_adapter(model)
    for index in (0, 1):
        adapter.derive_groups_(model, index, TOKENS)
    with pytest.raises(ModelError, match=r"experts mlp\.experts\.\*\.down_proj would keep different numbers of "
                                         r"channels \(expert 0: 30, expert 1: 34.*Fix: .*allocation='uniform'"):
        pruned_block(model, adapter, 0, _plan(adapter, model, 0, {0: 30}))
    block = pruned_block(model, adapter, 0, _plan(adapter, model, 0, {}))  # uniform: fine
    assert block.mlp.experts.widths() == (34,) * 4
    with pytest.raises(ModelError, match=r"block 1: mlp\.experts\.\*\.down_proj keeps 30 channels, block 0 keeps "
                                         r"34.*Fix:"):
        pruned_block(model, adapter, 1, _plan(adapter, model, 1, dict.fromkeys(range(4), 30)))
    adapter.derive_groups_(model, 0, TOKENS)  # a new pass over the blocks forgets the widths of the last one
    assert pruned_block(model, adapter, 0, _plan(adapter, model, 0, dict.fromkeys(range(4), 30))).mlp.experts.widths() \
        == (30,) * 4


def test_ratios_that_would_break_the_equal_width_rule_are_refused_before_any_work():
    model = moe_model("qwen2_moe")
    adapter = generic_adapter(model)
    groups = [g for i in (0, 1) for g in adapter.derive_groups_(model, i, TOKENS) if g.kind == "glu_channel"]
    expert0 = next(g.name for g in groups if g.downstream.endswith("layers.0.mlp.experts.0.down_proj"))
    shared1 = next(g.name for g in groups if g.downstream.endswith("layers.1.mlp.shared_expert.down_proj"))
    check_expert_ratios(groups, {}, 0.3)  # uniform
    check_expert_ratios(groups, {g.name: 0.5 for g in groups if ".experts." in g.downstream}, 0.3)  # all experts
    with pytest.raises(ModelError, match=r"experts model\.layers\.0\.mlp\.experts\.\*\.down_proj different kept "
                                         r"widths.*Fix:"):
        check_expert_ratios(groups, {expert0: 0.5}, 0.3)
    with pytest.raises(ModelError, match=r"mlp\.shared_expert\.down_proj different kept widths across blocks.*Fix:"):
        check_expert_ratios(groups, {shared1: 0.5}, 0.3)


# ---------------------------------------------------------------------------------------------- unreached experts
@pytest.mark.parametrize("policy", ["dense", "magnitude"])
def test_an_expert_no_token_reached_is_pruned_by_weight_norm_to_its_siblings_width(policy):
    from prunekit.formulations import Channels

    w = torch.randn(6, 8, generator=torch.Generator().manual_seed(0))
    w[:, [1, 4, 6]] *= 0.01  # the three weakest columns
    spec = Channels(count=3, groups=tuple((j,) for j in range(8)))
    base = dict(block=0, module="model.layers.0.mlp.experts.5.down_proj", group="model.layers.0.mlp.experts.5:glu",
                shape=(6, 8), target_sparsity=0.375)
    solution, record = unrouted_solution(w, spec, policy, base)
    assert solution.kept_columns.tolist() == [0, 2, 3, 5, 7]
    assert torch.equal(solution.weights[:, [1, 4, 6]], torch.zeros(6, 3))
    assert torch.equal(solution.weights[:, [0, 2, 3, 5, 7]], w[:, [0, 2, 3, 5, 7]])  # no weight update
    assert record.kept_units == 5 and record.num_units == 8 and record.statistics == "none"
    assert "weight-norm channel fallback" in record.status and record.formulation == "WeightNormChannels"
    assert record.sparsity == pytest.approx(3 / 8)
    from prunekit.formulations import Unstructured  # unstructured specs keep the policy: dense by default

    other, _ = unrouted_solution(w, Unstructured(0.5), policy, base)
    assert (other is None) == (policy == "dense")


def test_the_export_refuses_fused_expert_widths_no_stock_config_describes():
    from prunekit.models.export import stock_layout
    from prunekit.models.surgery import pruned_block, replace_block_

    model = moe_model("mixtral")
    adapter = generic_adapter(model)
    for index in (0, 1):
        adapter.derive_groups_(model, index, TOKENS)
    unpruned = copy.deepcopy(model)  # its own adapter derived no groups: an unpruned model
    replace_block_(model, adapter, 0, pruned_block(model, adapter, 0, _plan(adapter, model, 0, {})))
    fuse_experts_(model)  # block 0 keeps 34 (padded to 40) channels, block 1 all 48
    with pytest.raises(ModelError, match=r"no stock config describes the pruned MoE widths \(original -> kept: "
                                         r"48 -> \[40, 48\]\).*Fix:"):
        stock_layout(model)
    fuse_experts_(unpruned)
    assert stock_layout(unpruned).format == "stock"


def test_a_plan_replayed_with_apply_equals_the_pruned_model():
    """``prunekit.plan`` names experts per expert (``...experts.3.down_proj``); ``prunekit.apply_`` unfuses the
    fused experts while it replays the plan and fuses them back smaller: the same model ``prunekit.prune`` gives."""
    import prunekit

    recipe = {"method": "fasp", "structure": "channels", "sparsity": 0.3}
    calibration = torch.randint(0, 96, (4, 16), generator=torch.Generator().manual_seed(3))
    from test_generic_adapter import tiny_model

    pruned, replayed = tiny_model("qwen2_moe"), tiny_model("qwen2_moe")
    result = prunekit.prune(pruned, recipe, calibration, progress=False)
    plan = prunekit.plan(replayed, recipe, calibration, progress=False)
    assert len(plan.group_edits) == 2 * 5 and result.report.params_after < result.report.params_before
    prunekit.apply_(replayed, plan)
    for model in (pruned, replayed):
        experts = model.model.layers[1].mlp.experts
        assert tuple(experts.down_proj.shape) == (4, 32, 16) and experts.prunekit_padding == (12, 16)
        assert tuple(model.model.layers[1].mlp.shared_expert.down_proj.weight.shape) == (32, 34)
    x = torch.randint(0, 96, (2, 10), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        torch.testing.assert_close(replayed(input_ids=x).logits, pruned(input_ids=x).logits)
