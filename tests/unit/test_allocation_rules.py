"""Model-level allocation rules (prunekit.models.allocation_rules, prunekit.models.allocate): OWL against a hand
computation, FLAP's adaptive structure, StructPrune's softmax, the exact global weight budget of every rule, and the
recipe / CLI plumbing (``allocation``, ``owl_m``, ``owl_lambda``)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import prunekit
from prunekit.errors import FormulationError
from prunekit.models.allocate import allocation, importance_prepass
from prunekit.models.allocation_rules import (
    Grid, TargetStats, allocate_targets, meet_budget, owl_block_sparsities, realize, standardized_unit_scores)
from prunekit.models.recipe import CalibrationSettings, Recipe
from prunekit.models.stores import ModelBlocks

pytestmark = pytest.mark.usefixtures("one_thread_module")

CALIB = CalibrationSettings(nsamples=4, seqlen=24)


def recipe(**kw) -> Recipe:
    return Recipe(calibration=CALIB, **kw)


@pytest.fixture(scope="module")
def tokens():
    return torch.randint(2, 96, (4, 24), generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def llama4():
    """A random 4-block LLaMA in float64 (4 blocks so that OWL's normalization to [0, 1] is not trivial)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(3)
    config = LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    config._attn_implementation = "eager"
    model = LlamaForCausalLM(config).to(torch.float64).eval()
    with torch.no_grad():  # heavy-tailed weights: blocks differ in their outliers
        for i, layer in enumerate(model.model.layers):
            for p in layer.parameters():
                if p.dim() == 2:
                    p.mul_(torch.distributions.StudentT(1.5 + i).sample(p.shape).double().clamp(-40, 40) * 0.1)
    return model


def _linears(model):
    return [(b, name, mod) for b, layer in enumerate(model.model.layers)
            for name, mod in layer.named_modules() if isinstance(mod, torch.nn.Linear)]


def _hand_owl(model, tokens, m: float, lam: float, sparsity: float):
    """OWL by hand: dense inputs from one forward of the dense model, Wanda scores of every linear module of each
    block concatenated, D_b = share above m x their mean, then the official rule (luuyin/OWL lib/prune_all.py)."""
    sq = {}
    hooks = [mod.register_forward_pre_hook(lambda mod, args, key=(b, name): sq.__setitem__(
        key, sq.get(key, 0) + (args[0].double().reshape(-1, args[0].shape[-1]) ** 2).sum(0)))
        for b, name, mod in _linears(model)]
    with torch.no_grad():
        model(input_ids=tokens)
    for h in hooks:
        h.remove()
    blocks = len(model.model.layers)
    counts, ratios = [], []
    for b in range(blocks):
        scores = torch.cat([(mod.weight.abs() * sq[(b, name)].sqrt()).flatten()
                            for bb, name, mod in _linears(model) if bb == b])
        counts.append(int((scores > m * scores.mean()).sum()))
        ratios.append(100.0 * counts[-1] / scores.numel())  # the official code's percentage
    d = np.array(ratios)
    density = (d - d.min()) * (1 / (d.max() - d.min()) * lam * 2)
    density = density - np.mean(density) + (1 - sparsity)
    return counts, 1.0 - density


# ---------------------------------------------------------------------------------------------- OWL
def test_owl_matches_a_hand_computation_on_a_tiny_model(llama4, tokens):
    r = recipe(method="wanda", sparsity=0.6, allocation="owl", owl_m=3.0, owl_lambda=0.1)
    stats = importance_prepass(ModelBlocks(llama4), r, tokens, progress=False)
    counts, expected = _hand_owl(llama4, tokens, 3.0, 0.1, 0.6)
    got_counts = [sum(s.outliers for s in stats if s.block == b) for b in range(4)]
    assert got_counts == counts and len(set(counts)) > 2  # exact integers; the blocks really differ
    result = allocation(llama4, r, tokens, progress=False, prepass=stats)
    for s, cont in zip(stats, result.continuous):
        assert cont == pytest.approx(expected[s.block], abs=1e-12)
    more = int(np.argmax(counts))  # the block with the most outliers is pruned least
    assert expected[more] == min(expected) and min(result.continuous) == pytest.approx(expected[more], abs=1e-12)
    assert max(expected) - min(expected) == pytest.approx(2 * 0.1)  # the spread is 2 lambda


def test_owl_rule_is_the_official_one_and_weighted_when_blocks_differ():
    d = [3.0, 1.0, 2.0, 5.0]
    s = owl_block_sparsities(d, [10, 10, 10, 10], 0.7, 0.08)
    dn = (np.array(d) - 1.0) / 4.0
    assert np.allclose(s.numpy(), 0.7 - 2 * 0.08 * (dn - dn.mean()), atol=1e-15)
    w = [10, 30, 20, 40]
    s = owl_block_sparsities(d, w, 0.7, 0.08)
    assert float((s * torch.tensor(w, dtype=torch.float64)).sum()) == pytest.approx(0.7 * 100, abs=1e-12)
    assert torch.equal(owl_block_sparsities([2.0, 2.0], [5, 7], 0.5, 0.3), torch.full((2,), 0.5, dtype=torch.float64))


def test_owl_and_adaptive_refuse_the_wrong_structure_with_a_fix():
    with pytest.raises(FormulationError, match="cannot change an N:M ratio.*Fix"):
        Recipe(method="sparsegpt", structure="2:4", allocation="owl")
    with pytest.raises(FormulationError, match="'owl' applies to structure 'unstructured'.*Fix: use 'adaptive'"):
        Recipe(method="fasp", structure="channels", sparsity=0.3, allocation="owl")
    with pytest.raises(FormulationError, match="'adaptive' applies to structure 'channels'.*Fix: use 'owl'"):
        Recipe(method="wanda", allocation="adaptive")
    for bad in (dict(owl_m=0.0), dict(owl_m=float("inf")), dict(owl_lambda=-0.1), dict(owl_lambda=1.0),
                dict(owl_lambda=True)):
        with pytest.raises(FormulationError, match=f"{next(iter(bad))} must be"):
            Recipe(method="wanda", allocation="owl", **bad)


# ---------------------------------------------------------------------------------------------- budget
@pytest.mark.parametrize("method,structure,rule,sparsity,round_to", [
    ("wanda", "unstructured", "owl", 0.7, "auto"),
    ("magnitude", "unstructured", "owl", 0.55, "auto"),      # layer scope: steps of one weight, exact
    ("sparsegpt", "unstructured", "softmax", 0.5, "auto"),
    ("wanda", "unstructured", "global_threshold", 0.45, "auto"),
    ("fasp", "channels", "adaptive", 0.3, 1),
    ("flap", "channels", "adaptive", 0.35, 8),
    ("fasp", "channels", "softmax", 0.3, 1),
])
def test_every_rule_meets_the_global_budget_within_one_step(llama4, tokens, method, structure, rule, sparsity,
                                                           round_to):
    r = recipe(method=method, structure=structure, sparsity=sparsity, allocation=rule, round_to=round_to,
               **({"temperature": 0.3} if rule == "softmax" else {}))
    result = allocation(llama4, r, tokens, progress=False)
    plan = prunekit.plan(llama4, r, tokens, progress=False, ratios=result.ratios)
    hidden = llama4.config.hidden_size
    if structure == "channels":
        units = llama4.config.intermediate_size
        pruned = sum(3 * hidden * (units - len(e.kept_units)) for e in plan.group_edits.values())
        total = 4 * units * 3 * hidden
        step = 3 * hidden * (8 if round_to == 8 else 1)
        if round_to == 8:
            assert all(len(e.kept_units) % 8 == 0 for e in plan.group_edits.values())
    else:
        pruned = sum(round(rec.sparsity * rec.shape[0] * rec.shape[1]) for rec in plan.records)
        total = sum(rec.shape[0] * rec.shape[1] for rec in plan.records)
        step = 1 if method == "magnitude" else max(rec.shape[0] for rec in plan.records)
    assert pruned == result.pruned_weights and result.budget == round(sparsity * total)
    assert abs(pruned - round(sparsity * total)) <= (0 if step == 1 else step)
    assert len(set(result.ratios.values())) > 1  # non-uniform
    assert max(result.ratios.values()) <= r.max_sparsity


def test_realize_meets_the_budget_within_one_step_on_random_grids():
    rng = np.random.default_rng(0)
    for _ in range(40):
        L = int(rng.integers(1, 9))
        grids = []
        for _ in range(L):
            n = int(rng.integers(2, 60))
            counts = tuple(sorted({0, *rng.integers(0, n, size=int(rng.integers(1, 6))).tolist()})) \
                if rng.random() < 0.3 else None
            grids.append(Grid(n, int(rng.integers(1, 20)), counts))
        sparsity, s_max = float(rng.uniform(0.05, 0.6)), float(rng.uniform(0.6, 0.99))
        weights = [g.weights for g in grids]
        s = meet_budget(torch.from_numpy(rng.uniform(0, 1, L)), weights, sparsity, s_max)
        assert float((s * torch.tensor(weights, dtype=torch.float64)).sum()) == pytest.approx(sparsity * sum(weights))
        assert float(s.max()) <= s_max + 1e-12 and float(s.min()) >= 0
        budget = round(sparsity * sum(weights))
        try:
            counts = realize(grids, s, budget, s_max)
        except FormulationError:
            assert sum(g.cap(s_max) * g.unit_weight for g in grids) < budget - max(g.unit_weight for g in grids)
            continue
        assert all(c <= g.cap(s_max) and (g.counts is None or c in g.counts) for c, g in zip(counts, grids))
        steps = [g.unit_weight * (max(np.diff(g.counts)) if g.counts and len(g.counts) > 1 else 1) for g in grids]
        caps_full = sum(g.cap(s_max) * g.unit_weight for g in grids)
        err = abs(sum(c * g.unit_weight for c, g in zip(counts, grids)) - budget)
        assert err <= max(steps) or caps_full < budget


def test_ratio_handed_to_the_runner_rounds_back_to_the_count():
    from prunekit.formulations import Unstructured
    from prunekit.models.allocate import _runner_ratio

    for rows, cols, count in ((4096, 11008, 31_562_137), (8192, 28672, 164_000_001), (7, 9, 40)):
        ratio = _runner_ratio(Grid(rows * cols, 1), count)
        assert Unstructured(ratio, scope="layer").num_pruned((rows, cols)) == count
        assert ratio - count / (rows * cols) < 1e-12


# ---------------------------------------------------------------------------------------------- adaptive / softmax
def test_standardized_unit_scores_follow_flap():
    col = torch.tensor([1.0, 2.0, 3.0, 10.0, 4.0, 4.0], dtype=torch.float64)
    z = (col - col.mean()) / col.std()
    got = standardized_unit_scores(col, [(0, 1), (2, 3), (4, 5)], square=False)
    assert torch.allclose(got, torch.stack([z[:2].mean(), z[2:4].mean(), z[4:].mean()]))
    sq = col * col
    assert torch.allclose(standardized_unit_scores(col, [(0,), (1,)], square=True)[1], ((sq - sq.mean()) / sq.std())[1])
    assert torch.equal(standardized_unit_scores(torch.ones(3), [(0,), (1,), (2,)], square=False), torch.zeros(3))


def test_adaptive_is_one_threshold_weighted_by_parameters():
    # unit weights 1 (neurons) and 4 (heads); budget round(0.5 * (6 + 8)) = 7 weights
    a = TargetStats("mlp", 0, Grid(6, 1), scores=torch.tensor([-1.0, 0.5, -0.2, 2.0, -3.0, 0.1]))
    b = TargetStats("attn", 0, Grid(2, 4), scores=torch.tensor([-0.5, 1.0]))
    result = allocate_targets([a, b], "adaptive", 0.5, max_sparsity=0.9)
    # ascending: -3 (mlp,1) -1 (mlp,1) -0.5 (attn,4) -0.2 (mlp,1) -> 7 weights exactly
    assert result.counts == (3, 1) and result.pruned_weights == result.budget == 7


def test_softmax_at_model_level_is_the_layer_allocation_closed_form():
    from prunekit import solve
    from prunekit.formulations import LayerAllocation

    stats = [TargetStats(f"t{i}", i, Grid(n, w), score_mean=e)
             for i, (n, w, e) in enumerate([(32, 8, 1.0), (64, 8, 3.0), (32, 32, 0.5), (96, 4, 2.0)])]
    result = allocate_targets(stats, "softmax", 0.4, temperature=0.7, max_sparsity=0.9)
    e = torch.tensor([1.0, 3.0, 0.5, 2.0], dtype=torch.float64)
    ref = solve(LayerAllocation(sizes=[256, 512, 1024, 384], mean_sparsity=0.4, energies=e / e.mean(),
                                temperature=0.7, s_max=0.9))
    assert np.allclose(result.continuous, ref.extras["continuous"].numpy(), atol=1e-12)
    q = torch.softmax(-(e / e.mean()) / 0.7, 0)
    unclipped = [i for i, v in enumerate(result.continuous) if v < 0.9 - 1e-9]
    ratios = [result.continuous[i] / float(q[i]) for i in unclipped]
    assert max(ratios) == pytest.approx(min(ratios), rel=1e-9)  # s_l = c q_l off the cap
    assert abs(result.budget_error) <= 32


# ---------------------------------------------------------------------------------------------- recipe / CLI
def test_recipe_round_trips_allocation_fields(tmp_path):
    r = Recipe(method="sparsegpt", sparsity=0.7, allocation="owl", owl_m=7.0, owl_lambda=0.12, max_sparsity=0.9)
    for path in (tmp_path / "r.yaml", tmp_path / "r.json"):
        back = Recipe.load(r.save(path))
        assert (back.allocation, back.owl_m, back.owl_lambda, back.max_sparsity) == ("owl", 7.0, 0.12, 0.9)
        assert back.to_dict() == r.to_dict()


def test_cli_flags_set_the_allocation(tmp_path):
    from prunekit.cli import build_parser
    from prunekit.cli.prune import build_recipe

    parser = build_parser()
    args = parser.parse_args(["prune", "--model", "m", "--out", str(tmp_path / "o"), "--calib", "self", "--method",
                              "sparsegpt", "--sparsity", "0.7", "--allocation", "owl", "--owl-m", "6",
                              "--owl-lambda", "0.05"])
    r = build_recipe(args)
    assert (r.allocation, r.owl_m, r.owl_lambda, r.sparsity) == ("owl", 6.0, 0.05, 0.7)
    file = Recipe(method="flap", structure="channels", sparsity=0.3, allocation="adaptive").save(tmp_path / "r.yaml")
    args = parser.parse_args(["prune", "--model", "m", "--out", str(tmp_path / "o"), "--calib", "self",
                              "--recipe", str(file)])
    assert build_recipe(args).allocation == "adaptive"
    args = parser.parse_args(["prune", "--model", "m", "--out", str(tmp_path / "o"), "--calib", "self",
                              "--recipe", str(file), "--allocation", "uniform"])
    assert build_recipe(args).allocation == "uniform"
    with pytest.raises(SystemExit):
        parser.parse_args(["prune", "--model", "m", "--out", "o", "--allocation", "outliers"])
    args = parser.parse_args(["prune", "--model", "m", "--out", "o", "--calib", "self", "--method", "fasp",
                              "--structure", "channels", "--allocation", "owl"])
    with pytest.raises(FormulationError, match="Fix: use 'adaptive'"):
        build_recipe(args)


def test_uniform_allocates_nothing_and_math_is_finite(llama4, tokens):
    from prunekit.models.allocate import allocate

    assert allocate(llama4, recipe(method="wanda"), tokens, progress=False) == {}
    assert math.isfinite(owl_block_sparsities([0.1], [5], 0.5, 0.08).item())
