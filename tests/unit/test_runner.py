"""The block-streaming runner on tiny random LLaMA / OPT / GPT-2 models (prunekit.models.runner, prunekit.api).

Per-layer outcomes are typed ``LayerRecord``s (``plan.records``, ``result.report.layers``); ``prune`` returns a
``RunReport`` and a plan that keeps kept units and records, not a second copy of the weights.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch

import prunekit
from prunekit.models.calibration import capture_block_inputs, collect_grams, forward_block
from prunekit.models.plan import PruningPlan
from prunekit.models.recipe import CalibrationSettings, Recipe
from prunekit.models.records import LayerRecord, RunReport

FAMILIES = ("llama", "opt", "gpt2")


def recipe(**kw) -> Recipe:
    return Recipe(calibration=CalibrationSettings(nsamples=4, seqlen=24, mode=kw.pop("mode", "auto")), **kw)


@pytest.fixture(scope="module")
def tokens():
    return torch.randint(2, 300, (4, 24), generator=torch.Generator().manual_seed(0))


def tiny(family):
    from _hf_tiny import tiny_model

    return tiny_model(family)


def linear_weights(model):
    from prunekit.models.adapters import adapter_for

    adapter = adapter_for(model)
    out = {}
    for i, block in enumerate(adapter.blocks(model)):
        for rel in adapter.linear_names(block):
            out[f"{i}.{rel}"] = adapter.get_weight(block.get_submodule(rel)).detach()
    return out


@pytest.mark.parametrize("family", FAMILIES)
def test_fasp_channels_removes_units_and_leaves_model_alone_until_apply(family, tokens):
    model = tiny(family)
    before = copy.deepcopy(model.state_dict())
    plan = prunekit.plan(model, recipe(method="fasp", structure="channels", sparsity=0.3, allocation="uniform"), tokens,
                         progress=False)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()), "plan() changed the model"
    assert len(plan.group_edits) == 2  # one MLP group per block
    for edit in plan.group_edits.values():
        assert edit.num_units in (64, 128)  # intermediate width: 64 (llama, opt), 4 * 32 (gpt2)
        assert len(edit.kept_units) == math.ceil(edit.num_units * 0.7 - 1e-9)  # FASP keeps ceil(n (1 - s))
    assert plan.records and all(isinstance(r, LayerRecord) for r in plan.records)
    assert all(r.objective >= 0 and 0 <= r.relative_error < 1 for r in plan.records)
    assert {r.group for r in plan.records} == set(plan.group_edits)  # one record per coupled group
    assert all(r.kept_units == len(plan.group_edits[r.group].kept_units) for r in plan.records)
    n_before = sum(p.numel() for p in model.parameters())
    prunekit.apply_(model, plan)
    assert sum(p.numel() for p in model.parameters()) < n_before
    assert torch.isfinite(model(input_ids=tokens).logits).all()


@pytest.mark.parametrize("family", FAMILIES)
def test_sparsegpt_2_4_gives_exact_2_4_zeros(family, tokens):
    model = tiny(family)
    result = prunekit.prune(model, recipe(method="sparsegpt", structure="2:4", sparsity=0.5), tokens, progress=False)
    weights = linear_weights(model)
    assert len(result.plan.module_edits) == len(weights)
    for name, w in weights.items():
        zeros = (w.reshape(w.shape[0], -1, 4) == 0).sum(dim=-1)
        assert bool((zeros >= 2).all()), f"{name} breaks 2:4"
    assert all(e.weight is None for e in result.plan.module_edits.values())  # the model holds the weights
    report = result.report
    assert isinstance(report, RunReport)
    assert report.nonzero_params_after < report.nonzero_params_before
    assert report.params_after == report.params_before  # 2:4 zeros weights, removes none
    assert report.layers == result.plan.records and len(report.layers) == len(weights)
    assert all(r.mask_violations == 0 and r.status != "skipped" for r in report.layers)
    assert report.recipe["structure"] == "2:4" and report.mode == "propagated"
    assert RunReport.from_dict(report.to_dict()) == report


def test_plan_replays_after_save_and_load(tmp_path, tokens):
    model = tiny("llama")
    plan = prunekit.plan(model, recipe(method="wanda", structure="unstructured", sparsity=0.5), tokens, progress=False)
    plan.save(tmp_path / "meta")
    assert sorted(p.name for p in (tmp_path / "meta").iterdir()) == ["plan.json"]  # no weights by default
    plan.save(tmp_path / "plan", include_weights=True)
    assert (tmp_path / "plan" / "plan.safetensors").is_file()
    loaded = PruningPlan.load(tmp_path / "plan")
    assert loaded.records == plan.records
    replayed = prunekit.apply_(copy.deepcopy(model), loaded)
    direct = prunekit.apply_(model, plan)
    assert torch.allclose(replayed(input_ids=tokens).logits, direct(input_ids=tokens).logits)
    assert plan.provenance["recipe"]["method"] == "wanda" and plan.provenance["mode"] == "propagated"


def test_dense_and_propagated_modes_differ_only_after_block_0(tokens):
    model = tiny("llama")
    rows = {}
    for mode in ("propagated", "dense"):
        p = prunekit.plan(model, recipe(method="wanda", structure="unstructured", sparsity=0.5, mode=mode),
                          tokens, progress=False)
        rows[mode] = [r.objective for r in p.records]
    half = len(rows["dense"]) // 2
    assert rows["dense"][:half] == pytest.approx(rows["propagated"][:half], rel=1e-6)
    assert rows["dense"][half:] != pytest.approx(rows["propagated"][half:], rel=1e-3)


def test_intra_layer_statistics_pair_dense_targets_with_pruned_inputs(tokens):
    """G* / X X*^T come from the partially pruned copy, G from the dense block (FISTAPruner §5.4)."""
    from prunekit.models.adapters import adapter_for

    model = tiny("llama")
    adapter = adapter_for(model)
    inputs = capture_block_inputs(model, adapter, tokens)
    dense = copy.deepcopy(adapter.blocks(model)[0])
    work = copy.deepcopy(dense)
    with torch.no_grad():
        work.self_attn.o_proj.weight.zero_()
    accs = collect_grams(dense, inputs, ["mlp.gate_proj"], device="cpu", star_block=work)
    plain = collect_grams(dense, inputs, ["mlp.gate_proj"], device="cpu")
    acc = accs["mlp.gate_proj"]
    assert torch.allclose(acc.gram, plain["mlp.gate_proj"].gram)
    assert not torch.allclose(acc.gram_star, acc.gram)
    out = forward_block(dense, inputs, device="cpu")
    assert len(out.hidden) == 4 and out.hidden[0].shape == (1, 24, 32)


def test_fista_uses_dense_sequential_mode_and_round_to(tokens):
    model = tiny("opt")
    p = prunekit.plan(model, recipe(method="fista", structure="unstructured", sparsity=0.5), tokens, progress=False)
    assert p.provenance["mode"] == "dense_sequential"
    assert all(r.sparsity == pytest.approx(0.5) for r in p.records)
    p = prunekit.plan(model, recipe(method="fasp", structure="channels", sparsity=0.3, round_to=8,
                                    allocation="uniform"), tokens, progress=False)
    assert all(len(e.kept_units) == 48 for e in p.group_edits.values())


def test_softmax_allocation_meets_the_budget_non_uniformly(tokens):
    model = tiny("llama")
    r = recipe(method="fasp", structure="channels", sparsity=0.4, allocation="softmax", temperature=0.2)
    p = prunekit.plan(model, r, tokens, progress=False)
    kept = [len(e.kept_units) for e in p.group_edits.values()]
    assert sum(64 - k for k in kept) == round(0.4 * 128)
    assert kept[0] != kept[1]


def test_attention_heads_option_removes_heads(tokens):
    model = tiny("llama")
    r = recipe(method="fasp", structure="channels", sparsity=0.5, attention="heads")
    p = prunekit.plan(model, r, tokens, progress=False)
    kinds = {e.kind for e in p.group_edits.values()}
    assert "glu_channel" in kinds and kinds & {"attention_head", "gqa_group"}
    prunekit.apply_(model, p)
    assert torch.isfinite(model(input_ids=tokens).logits).all()


@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt", "mrp", "fista", "fasp", "spap", "flap", "admm"])
def test_every_method_runs_through_the_runner(method):
    from prunekit.models.methods import builtin_methods

    spec = builtin_methods()[method]
    structure = "channels" if "channels" in spec.structures else "2:4"
    tokens = torch.randint(2, 300, (2, 16), generator=torch.Generator().manual_seed(1))
    model = tiny("llama")
    r = Recipe(method=method, structure=structure, sparsity=0.25 if structure == "channels" else None,
               allocation="uniform", calibration=CalibrationSettings(nsamples=2, seqlen=16))  # N:M fixes the sparsity to n/m
    p = prunekit.plan(model, r, tokens, progress=False)
    assert p.records and all(math.isfinite(row.objective) for row in p.records)
    assert all(row.mask_violations == 0 for row in p.records)
    assert {row.formulation for row in p.records} == {spec.formulation.__name__}
    expected = 0.25 if structure == "channels" else 0.5
    assert r.sparsity == expected
    assert all(row.sparsity == pytest.approx(expected, abs=0.02) for row in p.records)


def test_block_targets_and_run_into_a_plan_sink_match_prunekit_plan(tokens):
    """``runner.run(store, recipe, tokens, sink)`` is what ``prunekit.plan`` runs; targets follow the recipe."""
    from prunekit.models.adapters import adapter_for
    from prunekit.models.recipe import DTYPES as RECIPE_DTYPES
    from prunekit.models.runner import DTYPES, block_targets, run
    from prunekit.models.sinks import PlanSink
    from prunekit.models.stores import ModelBlocks

    assert set(DTYPES) == set(RECIPE_DTYPES) and DTYPES["bfloat16"] is torch.bfloat16
    model = tiny("llama")
    adapter = adapter_for(model)
    block = adapter.blocks(model)[1]
    linear = block_targets(model, adapter, 1, block, recipe(method="wanda", structure="unstructured"))
    assert [t.name for t in linear] == [f"model.layers.1.{rel}" for rel in adapter.linear_names(block)]
    assert all(t.group is None and t.key == t.name for t in linear)
    heads = block_targets(model, adapter, 1, block, recipe(method="fasp", structure="channels", attention="heads"))
    assert {t.group.kind for t in heads} >= {"glu_channel"} and len(heads) == 2
    assert all(t.key == t.group.name and t.name == t.group.downstream for t in heads)

    r = recipe(method="wanda", structure="unstructured", sparsity=0.5)
    direct = run(ModelBlocks(model), r, tokens, PlanSink(), progress=False)
    via_api = prunekit.plan(model, r, tokens, progress=False)
    assert [x.objective for x in direct.records] == pytest.approx([x.objective for x in via_api.records], rel=1e-6)
    assert direct.module_edits.keys() == via_api.module_edits.keys()
    assert direct.provenance["calibration_shape"] == [4, 24] and direct.provenance["family"] == adapter.name


def test_weightless_plan_is_refused_rather_than_replayed_as_a_no_op(tmp_path, tokens):
    """A plan saved without weights (the default) cannot replay an unstructured prune: loading or applying it
    must fail with a clear error instead of leaving the model dense."""
    from prunekit.errors import PrunekitError

    model = tiny("llama")
    plan = prunekit.plan(model, recipe(method="wanda", structure="unstructured", sparsity=0.5), tokens, progress=False)
    plan.save(tmp_path / "plan")
    with pytest.raises(PrunekitError, match="cannot be replayed.*include_weights=True"):
        prunekit.apply_(copy.deepcopy(model), PruningPlan.load(tmp_path / "plan"))
    result = prunekit.prune(copy.deepcopy(model), recipe(method="wanda", structure="unstructured", sparsity=0.5),
                            tokens, progress=False)
    with pytest.raises(PrunekitError, match="cannot be replayed"):  # a prune() plan records, it does not replay
        prunekit.apply_(copy.deepcopy(model), result.plan)


def test_dense_mode_takes_the_next_inputs_from_the_statistics_pass(tokens, monkeypatch):
    """Property: in ``dense`` mode (FLAP's protocol) the statistics pass runs the whole dense block and its outputs
    are the next block's inputs -- no second forward -- with the same result as a separate dense forward."""
    from prunekit.models import runner

    model = tiny("llama")
    r = recipe(method="flap", structure="channels", sparsity=0.3, mode="dense")
    calls = []
    original_forward = runner.forward_block
    monkeypatch.setattr(runner, "forward_block", lambda *a, **k: calls.append(1) or original_forward(*a, **k))
    fused = prunekit.plan(model, r, tokens, progress=False)
    assert calls == []  # no propagation forward at all
    original_collect = runner.collect_grams

    def without_outputs(*args, **kwargs):
        kwargs["outputs"] = None  # the statistics pass keeps nothing: the runner forwards the dense block again
        return original_collect(*args, **kwargs)

    monkeypatch.setattr(runner, "collect_grams", without_outputs)
    separate = prunekit.plan(model, r, tokens, progress=False)
    assert calls  # the separate dense forward ran
    assert [x.objective for x in fused.records] == pytest.approx([x.objective for x in separate.records], rel=1e-6)
    assert fused.group_edits.keys() == separate.group_edits.keys()
    for name, edit in fused.group_edits.items():
        assert edit.kept_units == separate.group_edits[name].kept_units
