"""Unit tests of FISTAPruner: L1Relaxation, the torch FISTA solver, prox/projections and the reference twins."""

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

import prunekit
from prunekit.errors import FormulationError
from prunekit.formulations.l1 import L1Relaxation
from prunekit.formulations.layer import LayerData
from prunekit.formulations.restoration import FixedMaskRestoration
from prunekit.formulations.sparsity import NM, Channels, Unstructured
from prunekit.solvers.torch.fista import fista, next_lambda
from prunekit.verification.toy import random_layer


def _layer(seed=0, m=4, n=8, star=False):
    rng = np.random.default_rng(seed)
    if not star:
        return random_layer(rng, m, n, conditioning="correlated")
    x = rng.standard_normal((4 * n, n))
    return LayerData.from_inputs(torch.from_numpy(rng.standard_normal((m, n))), torch.from_numpy(x),
                                 inputs_star=torch.from_numpy(x + 0.1 * rng.standard_normal(x.shape)))


@pytest.mark.parametrize("spec", [Unstructured(0.5), Unstructured(0.5, scope="layer"), NM(2, 4)], ids=str)
@pytest.mark.parametrize("star", [False, True])
def test_projected_mode_matches_numpy_twin_and_obeys_spec(spec, star):
    f = L1Relaxation(_layer(1, star=star), spec, warm_start="magnitude")
    got = prunekit.solve(f, backend="torch", dtype="float64")
    ref = prunekit.solve(f, backend="scipy")
    assert torch.equal(got.mask, ref.mask)
    assert torch.allclose(got.weights, ref.weights, rtol=0, atol=1e-10 * float(ref.weights.abs().max()))
    assert np.allclose(got.extras["lambda_trace"], ref.extras["lambda_trace"], rtol=1e-12)
    assert got.residuals["mask_violations"] == 0 and got.residuals["pruned_max_abs"] == 0


@pytest.mark.parametrize("warm", ["magnitude", "wanda", "sparsegpt", "dense"])
def test_never_worse_than_projected_warm_start(warm):
    layer = _layer(2)
    f = L1Relaxation(layer, Unstructured(0.5), warm_start=warm)
    sol = prunekit.solve(f, backend="torch", dtype="float64")
    w_start, used = f.warm_start_weights()
    w_proj = w_start * Unstructured(0.5).project(w_start.abs()).double()
    assert sol.objective <= layer.reconstruction_error(w_proj) * (1 + 1e-12)
    assert used.startswith(warm) or used == "magnitude"
    assert sol.extras["warm_start"] == used
    assert sol.extras["e_best"] == pytest.approx(math.sqrt(2 * sol.objective), rel=1e-9)


def test_initial_lambda_rules():
    """kkt: median |grad| over the projected warm start's zeros; fraction: 1e-2 lambda_max; lam overrides both."""
    f = L1Relaxation(_layer(4), Unstructured(0.5), warm_start="magnitude")
    w_start, _ = f.warm_start_weights()
    w_p = w_start * Unstructured(0.5).project(w_start.abs()).double()
    grad = f.grad(w_p)
    assert f.initial_lambda(w_p) == pytest.approx(float(grad[w_p == 0].abs().median()), rel=1e-12)
    assert replace(f, lambda_init="fraction").initial_lambda(w_p) == pytest.approx(1e-2 * f.lambda_max())
    assert f.initial_lambda() == pytest.approx(1e-2 * f.lambda_max())  # no warm start given: the fraction rule
    assert replace(f, lam=0.25).initial_lambda(w_p) == 0.25
    assert f.initial_lambda(torch.ones_like(w_p)) == pytest.approx(1e-2 * f.lambda_max())  # nothing pruned


@pytest.mark.parametrize("spec", [Unstructured(0.5), NM(2, 4)], ids=str)
@pytest.mark.parametrize("star", [False, True])
def test_refit_is_least_squares_on_the_support_and_matches_twin(spec, star):
    layer = _layer(5, m=5, n=12, star=star)
    plain = L1Relaxation(layer, spec, warm_start="magnitude")
    f = replace(plain, refit=True)
    got = prunekit.solve(f, backend="torch", dtype="float64")
    ref = prunekit.solve(f, backend="scipy")
    base = prunekit.solve(plain, backend="torch", dtype="float64")
    assert torch.equal(got.mask, base.mask)  # the refit keeps the support
    assert got.objective <= base.objective * (1 + 1e-12)
    assert torch.allclose(got.weights, ref.weights, rtol=0, atol=1e-9 * float(ref.weights.abs().max()))
    assert got.extras["refit"]["accepted"]
    # stationarity on the kept entries: (W (G* + delta I) - C - delta U)_{i,S} = 0 with U G* = C
    gs, c = f.gram_star(), f.cross()
    delta = layer.damping_value(gs)
    u = torch.linalg.solve(gs, c.T).T if star else layer.weight.double()
    resid = (got.weights.double() @ (gs + delta * torch.eye(gs.shape[0], dtype=gs.dtype)) - c - delta * u)[got.mask]
    assert float(resid.abs().max()) <= 1e-6 * float(c.abs().max())
    if not star:  # without error correction the refit is FixedMaskRestoration on the chosen mask
        fixed = prunekit.solve(FixedMaskRestoration(layer, got.mask), backend="torch", dtype="float64")
        assert got.objective == pytest.approx(fixed.objective, rel=1e-9)
    assert got.residuals["mask_violations"] == 0


def test_adaptive_lambda_follows_the_xi_rule():
    f = L1Relaxation(_layer(3), Unstructured(0.5), warm_start="magnitude", T=5)
    sol = prunekit.solve(f, backend="torch", dtype="float64")
    lam, lo, hi = sol.extras["lambda_trace"][0], 0.0, math.inf
    w_start, _ = f.warm_start_weights()
    assert lam == pytest.approx(f.initial_lambda(w_start * Unstructured(0.5).project(w_start.abs()).double()))
    for t in range(4):
        ratio = sol.extras["e_round"][t] / sol.extras["e_total"][t]
        lam, lo, hi = next_lambda(lam, lo, hi, ratio > f.xi, 1.0)
        assert sol.extras["lambda_trace"][t + 1] == pytest.approx(lam, rel=1e-12)
    assert next_lambda(1.0, 0.0, math.inf, True, 9.0)[0] == 2.0  # doubling while unbounded
    assert next_lambda(1.0, 0.5, 4.0, True, 9.0)[0] == 2.5  # bisection once bracketed
    assert next_lambda(1.0, 0.0, math.inf, False, 9.0)[0] == 0.5


def test_pure_lasso_matches_lbfgsb_and_has_kkt_certificate():
    layer = _layer(4, star=True)
    probe = L1Relaxation(layer, Unstructured(0.5), lam=0.0, adaptive=False, project=False)
    f = replace(probe, lam=0.2 * probe.lambda_max(), K=3000, eps=0.0, warm_start="dense")
    got = prunekit.solve(f, backend="torch", dtype="float64")
    ref = prunekit.solve(f, backend="scipy")
    assert got.residuals["lasso_kkt"] < 1e-8
    assert got.residuals["mask_violations"] == 0  # the pure lasso has no sparsity constraint
    assert abs(got.objective - ref.objective) <= 1e-9 * abs(ref.objective)
    assert torch.allclose(got.weights, ref.weights, atol=1e-6 * float(ref.weights.abs().max()))
    trace = np.array(got.extras["objective_trace"])
    assert trace[-1] <= trace[0]


@pytest.mark.reference
def test_pure_lasso_matches_cvxpy():
    layer = _layer(5)
    probe = L1Relaxation(layer, Unstructured(0.5), lam=0.0, adaptive=False, project=False)
    f = replace(probe, lam=0.1 * probe.lambda_max(), K=3000, eps=0.0, warm_start="dense")
    got = prunekit.solve(f, backend="torch", dtype="float64")
    ref = prunekit.solve(f, backend="cvxpy")
    assert abs(got.objective - ref.objective) <= 1e-8 * abs(ref.objective)
    assert torch.equal(got.mask, ref.mask)


def test_smooth_grad_lipschitz_against_autograd():
    layer = _layer(6, star=True)
    f = L1Relaxation(layer, NM(2, 4))
    w = torch.randn(layer.shape, dtype=torch.float64, requires_grad=True)
    gs, c = f.gram_star(), f.cross()
    val = 0.5 * torch.sum((w @ gs) * w) - torch.sum(w * c) + 0.5 * torch.sum((layer.weight @ layer.gram) * layer.weight)
    val.backward()
    assert torch.allclose(w.grad, f.grad(w.detach()), atol=1e-10)
    assert f.smooth(w.detach()) == pytest.approx(float(val.detach()), rel=1e-10)
    assert f.lipschitz() == pytest.approx(float(torch.linalg.matrix_norm(gs, ord=2)), rel=1e-10)
    assert f.lambda_max() == pytest.approx(float(c.abs().max()))


def test_fista_leaves_inputs_unchanged_and_float32_dtype():
    layer = random_layer(np.random.default_rng(7), 3, 8)
    layer32 = LayerData(weight=layer.weight.float(), gram=layer.gram.float(), num_tokens=layer.num_tokens)
    w_before = layer32.weight.clone()
    sol = prunekit.solve(L1Relaxation(layer32, NM(2, 4), warm_start="magnitude"), backend="torch")
    assert sol.weights.dtype == torch.float32 and torch.equal(layer32.weight, w_before)
    assert NM(2, 4).violations(sol.mask) == 0
    w0 = torch.ones(2, 3, dtype=torch.float64)
    w0_copy = w0.clone()
    fista(torch.eye(3, dtype=torch.float64), torch.zeros(2, 3, dtype=torch.float64), 0.1, 1.0, w0, 5)
    assert torch.equal(w0, w0_copy)


@pytest.mark.parametrize(
    "spec, kwargs, match",
    [
        (Unstructured(0.5), {"lam": -1.0}, "lam"),
        (Unstructured(0.5), {"K": 0}, "K must"),
        (Unstructured(0.5), {"T": 0}, "T must"),
        (Unstructured(0.5), {"xi": 0.0}, "xi"),
        (Unstructured(0.5), {"warm_start": "random"}, "warm_start"),
        (Unstructured(0.5), {"threshold_group": "layer"}, "threshold_group"),
        (Unstructured(0.5), {"project": False}, "adaptive"),
        (Unstructured(0.5), {"project": False, "adaptive": False}, "lam"),
        (Unstructured(0.5), {"lambda_init": "median"}, "lambda_init"),
        (Unstructured(0.5), {"refit": 1}, "refit"),
        (Unstructured(0.5), {"refit": True, "project": False, "adaptive": False, "lam": 0.1}, "refit"),
        (Channels(count=2), {}, "PenaltyRelaxation"),
    ],
)
def test_clear_errors(spec, kwargs, match):
    with pytest.raises(FormulationError, match=match):
        L1Relaxation(_layer(8), spec, **kwargs)


def test_fista_rejects_negative_lambda():
    with pytest.raises(ValueError, match="lam"):
        fista(torch.eye(2), torch.zeros(1, 2), -0.1, 1.0, torch.zeros(1, 2), 3)


def test_runs_on_every_device(device):
    layer = _layer(9)
    moved = LayerData(weight=layer.weight.to(device), gram=layer.gram.to(device), num_tokens=layer.num_tokens)
    sol = prunekit.solve(L1Relaxation(moved, NM(2, 4), warm_start="magnitude"), backend="torch", dtype="float64")
    ref = prunekit.solve(L1Relaxation(layer, NM(2, 4), warm_start="magnitude"), backend="torch", dtype="float64")
    assert sol.weights.device.type == device.type
    assert torch.equal(sol.mask.cpu(), ref.mask)
    assert torch.allclose(sol.weights.cpu(), ref.weights, atol=1e-10)


@pytest.mark.parametrize("spec", [Unstructured(0.5), NM(2, 4)], ids=str)
def test_sparsegpt_warm_start_with_error_correction_solves_the_plain_problem(spec):
    """With X* terms (the dense_sequential pipeline mode) SparseGPT cannot take the layer; the warm start is
    SparseGPT on the dense statistics, and FISTA runs from it (it used to raise FormulationError)."""
    from prunekit.formulations.sparsegpt import SparseGPTPruning

    layer = _layer(3, m=4, n=8, star=True)
    f = L1Relaxation(layer, spec, warm_start="sparsegpt", refit=True)
    w_start, used = f.warm_start_weights()
    plain = replace(layer, gram_star=None, cross=None)
    expected = prunekit.solve(SparseGPTPruning(plain, spec), backend="torch", dtype="float64").weights
    assert used == "sparsegpt" and torch.allclose(w_start, expected.double(), rtol=0, atol=1e-12)
    sol = prunekit.solve(f, backend="torch", dtype="float64")
    assert sol.extras["warm_start"] == "sparsegpt" and sol.residuals["mask_violations"] == 0


def test_fista_refit_is_a_method_with_the_refit_and_sparsegpt_defaults():
    """``fista_refit`` is its own type (FISTAPruner under ``fista`` keeps the paper's defaults) and solves like
    L1Relaxation with refit=True, warm_start='sparsegpt'."""
    from prunekit.formulations.l1_refit import RefitL1Relaxation
    from prunekit.models.methods import builtin_methods

    methods = builtin_methods()
    assert methods["fista_refit"].formulation is RefitL1Relaxation
    assert methods["fista"].formulation is L1Relaxation
    plain = L1Relaxation(_layer(4), NM(2, 4))
    assert (plain.refit, plain.warm_start) == (False, "wanda")
    layer = _layer(4)
    ours = prunekit.solve(RefitL1Relaxation(layer, NM(2, 4)), backend="torch", dtype="float64")
    same = prunekit.solve(L1Relaxation(layer, NM(2, 4), refit=True, warm_start="sparsegpt"), backend="torch",
                          dtype="float64")
    assert torch.equal(ours.mask, same.mask) and torch.equal(ours.weights, same.weights)
    twin = prunekit.solve(RefitL1Relaxation(layer, NM(2, 4)), backend="scipy")
    assert torch.equal(ours.mask, twin.mask)
