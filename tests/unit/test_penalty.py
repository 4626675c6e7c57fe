"""Unit tests of the SPAP penalty method: PenaltyRelaxation, its torch solver and its scipy twin."""

import numpy as np
import pytest
import torch

import prunekit
from prunekit.errors import FormulationError
from prunekit.formulations.penalty import PenaltyRelaxation
from prunekit.formulations.sparsity import NM, Channels, Unstructured
from prunekit.verification.toy import random_layer


def _layer(seed=0, m=5, n=9, cond="correlated"):
    return random_layer(np.random.default_rng(seed), m, n, conditioning=cond)


@pytest.mark.parametrize("seed", range(6))
def test_torch_matches_scipy_twin(seed):
    f = PenaltyRelaxation.example(np.random.default_rng(seed))
    got = prunekit.solve(f, backend="torch", dtype="float64")
    ref = prunekit.solve(f, backend="scipy")
    assert torch.equal(got.kept_columns, ref.kept_columns)
    assert got.stats["rounds"] == ref.stats["rounds"]
    assert torch.allclose(got.weights, ref.weights, rtol=0, atol=1e-9 * float(ref.weights.abs().max()))
    assert np.allclose(got.extras["objective_trace"], ref.extras["objective_trace"], rtol=1e-9)


@pytest.mark.parametrize("weight", ["gram_diag", "literal"])
def test_spec_obeyed_and_restoration_stationary(weight):
    layer = _layer(1)
    f = PenaltyRelaxation(layer, Channels(count=3), penalty_weight=weight)
    sol = prunekit.solve(f, backend="torch", dtype="float64")
    assert sol.residuals["mask_violations"] == 0
    assert sol.residuals["pruned_max_abs"] == 0
    assert sol.kept_columns.numel() == 6
    assert sol.residuals["stationarity"] < 1e-10
    assert sol.status == "solved" and sol.stats["converged"]
    assert sol.extras["ratio_trace"][-1] < f.eps


def test_channel_groups_are_removed_whole():
    layer = _layer(2, n=8)
    spec = Channels(count=1, group_size=2)
    f = PenaltyRelaxation(layer, spec)
    sol = prunekit.solve(f, backend="torch", dtype="float64")
    ref = prunekit.solve(f, backend="scipy")
    assert spec.violations(sol.mask) == 0
    assert torch.equal(sol.kept_columns, ref.kept_columns)


def test_final_restore_never_loses_to_the_unrestored_projection():
    layer = _layer(3)
    spec = Channels(count=3)
    restored = prunekit.solve(PenaltyRelaxation(layer, spec), backend="torch", dtype="float64")
    raw = prunekit.solve(PenaltyRelaxation(layer, spec, final_restore=False), backend="torch", dtype="float64")
    assert torch.equal(restored.kept_columns, raw.kept_columns)
    assert raw.residuals["pruned_max_abs"] == 0
    assert restored.objective <= raw.objective * (1 + 1e-12)
    assert "stationarity" not in raw.residuals


def test_default_rho0_and_omega():
    layer = _layer(4)
    f = PenaltyRelaxation(layer, Channels(count=2))
    g = layer.damped_gram()
    assert f.initial_rho() == pytest.approx(1e-3 * float(g.diagonal().mean()))
    assert float(f.omega().mean()) == pytest.approx(1.0)
    assert torch.allclose(f.omega(), g.diagonal() / g.diagonal().mean())
    lit = PenaltyRelaxation(layer, Channels(count=2), penalty_weight="literal", rho0=0.5)
    assert torch.equal(lit.omega(), torch.ones(9, dtype=torch.float64)) and lit.initial_rho() == 0.5


def test_float32_returns_original_dtype_and_leaves_inputs_unchanged():
    layer = random_layer(np.random.default_rng(5), 4, 8)
    layer32 = type(layer)(weight=layer.weight.float(), gram=layer.gram.float(), num_tokens=layer.num_tokens)
    w_before, g_before = layer32.weight.clone(), layer32.gram.clone()
    sol = prunekit.solve(PenaltyRelaxation(layer32, Channels(ratio=0.25)), backend="torch")
    assert sol.weights.dtype == torch.float32
    assert torch.equal(layer32.weight, w_before) and torch.equal(layer32.gram, g_before)
    assert torch.isfinite(sol.weights).all()


def test_objective_trace_is_monotone_within_each_round():
    sol = prunekit.solve(PenaltyRelaxation(_layer(6), Channels(count=3)), backend="torch", dtype="float64")
    s, w = sol.extras["s_step_trace"], sol.extras["objective_trace"]
    assert len(s) == len(w) == sol.extras["rounds"]
    assert all(wi <= si * (1 + 1e-12) for si, wi in zip(s, w))  # W-step never increases the round's value
    assert sol.extras["rho_trace"][1] == pytest.approx(1.5 * sol.extras["rho_trace"][0])


@pytest.mark.parametrize(
    "spec, kwargs, match",
    [
        (NM(2, 4), {}, "Channels"),
        (Unstructured(0.5), {}, "Channels"),
        (Channels(count=2), {"kappa": 0.5}, "kappa"),
        (Channels(count=2), {"rho0": -1.0}, "rho0"),
        (Channels(count=2), {"max_rounds": 0}, "max_rounds"),
        (Channels(count=2), {"eps": -1.0}, "eps"),
        (Channels(count=2), {"penalty_weight": "l2"}, "penalty_weight"),
    ],
)
def test_clear_errors(spec, kwargs, match):
    with pytest.raises(FormulationError, match=match):
        PenaltyRelaxation(_layer(7, n=8), spec, **kwargs)


def test_mip_reduction_is_heuristic_and_round_trips():
    pytest.importorskip("prunekit.formulations.mip")
    from prunekit.formulations.base import Guarantee
    from prunekit.formulations.mip import MaskedReconstructionMIP
    from prunekit.formulations.penalty import MIPToPenalty

    mip = MaskedReconstructionMIP(_layer(8), Channels(count=3))
    red = MIPToPenalty(kappa=1.3)
    assert red.guarantee is Guarantee.HEURISTIC and red.accepts(mip)
    assert not red.accepts(MaskedReconstructionMIP(_layer(8, n=8), NM(2, 4)))
    reduced, inv = red.apply(mip)
    assert isinstance(reduced, PenaltyRelaxation) and reduced.kappa == 1.3
    sol = red.invert(prunekit.solve(reduced, backend="torch", dtype="float64"), inv)
    assert Channels(count=3).violations(sol.mask) == 0
    opt = prunekit.solve(mip, backend="bruteforce")
    assert sol.objective >= opt.objective * (1 - 1e-9)


def test_spap_gap_report_smoke():
    from prunekit.verification.claims import all_reports

    report = {r.id: r for r in all_reports()}["spap_gap"]
    out = report.run(2, 0)
    ratios = out["ratios"]
    for key in ("penalty_gram_diag.final", "penalty_literal.final", "greedy.selection", "penalty_gram_diag.selection"):
        assert ratios[key]["median"] >= 1.0 - 1e-9, key  # nothing beats the brute-force optimum
    assert ratios["penalty_gram_diag.final"]["worst"] >= ratios["penalty_gram_diag.selection"]["worst"] - 1e-9


def test_runs_on_every_device(device):
    layer = _layer(9)
    moved = type(layer)(weight=layer.weight.to(device), gram=layer.gram.to(device), num_tokens=layer.num_tokens)
    sol = prunekit.solve(PenaltyRelaxation(moved, Channels(count=3)), backend="torch", dtype="float64")
    ref = prunekit.solve(PenaltyRelaxation(layer, Channels(count=3)), backend="torch", dtype="float64")
    assert sol.weights.device.type == device.type
    assert torch.equal(sol.kept_columns.cpu(), ref.kept_columns)
    assert torch.allclose(sol.weights.cpu(), ref.weights, atol=1e-10)
