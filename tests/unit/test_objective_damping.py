"""Every Solution reports the undamped objective beside the damped one (issue 13, "Truth").

``residuals["objective_undamped"]`` is the reconstruction error ``1/2 ||W_hat X(*) - W X||_F^2`` on the layer's
statistics, ``residuals["objective_damped"]`` the same with ``G`` replaced by ``layer.damped_gram()`` (the problem
the restoration/OBS solvers minimize), both computed once by ``Formulation.residuals``;
``solution.objective`` keeps its meaning (the formulation's objective).
"""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import prunekit
from prunekit.formulations.flap import FLAPRemoval
from prunekit.formulations.l1 import L1Relaxation
from prunekit.formulations.layer import LayerData
from prunekit.formulations.mrp import MultipleRemoval
from prunekit.formulations.restoration import FixedMaskRestoration
from prunekit.formulations.sparsegpt import SparseGPTPruning
from prunekit.formulations.sparsity import NM, Channels, Unstructured
from prunekit.formulations.wanda import WandaPruning
from prunekit.solvers.solution import Solution
from prunekit.verification import strategies as pst
from prunekit.verification.toy import random_layer

KINDS = ("wanda", "sparsegpt", "mrp", "restoration", "flap", "lasso")


def _formulation(kind, layer, rng):
    n = layer.in_features
    if kind == "wanda":
        return WandaPruning(layer, Unstructured(0.5))
    if kind == "sparsegpt":
        return SparseGPTPruning(layer, Unstructured(0.5))
    if kind == "mrp":
        return MultipleRemoval(layer, Unstructured(0.5))
    if kind == "restoration":
        return FixedMaskRestoration(layer, torch.from_numpy(rng.random(layer.shape) < 0.6))
    if kind == "flap":
        return FLAPRemoval(layer, Channels(count=n // 2))
    probe = L1Relaxation(layer, Unstructured(0.5), lam=0.0, adaptive=False, project=False)
    return L1Relaxation(layer, Unstructured(0.5), lam=0.2 * probe.lambda_max(), adaptive=False, project=False,
                        K=50, warm_start="dense")


def _damped_by_definition(layer, weights):
    """1/2 tr((W_hat - W) (G + lambda I, dead G_jj := 1) (W_hat - W)^T) from layer.damped_gram()."""
    d = weights.double() - layer.weight.double()
    return 0.5 * float(torch.sum((d @ layer.damped_gram()) * d))


@settings(max_examples=25, deadline=None)
@given(layer=pst.toy_layers(m=st.integers(1, 5), n=st.sampled_from((4, 8)), with_bias=True,
                            damping=st.sampled_from((0.0, 0.01, 0.5))),
       kind=st.sampled_from(KINDS), seed=st.integers(0, 2**32 - 1))
def test_every_solution_reports_both_objectives(layer, kind, seed):
    """Property: objective_damped = 1/2 tr(D damped_gram D^T) (D = W_hat - W), objective_undamped = the
    reconstruction error, objective unchanged: equal to the undamped one for reconstruction formulations, the
    lasso value (undamped + lam ||W||_1) for the pure lasso."""
    f = _formulation(kind, layer, np.random.default_rng(seed))
    sol = prunekit.solve(f, backend="torch", dtype="float64")
    res = sol.residuals
    assert res["objective"] == sol.objective
    if kind == "lasso":
        assert res["objective_undamped"] == pytest.approx(layer.reconstruction_error(sol.weights), rel=1e-12)
        lasso = res["objective_undamped"] + f.lam * float(sol.weights.double().abs().sum())
        assert sol.objective == pytest.approx(lasso, rel=1e-10, abs=1e-12)
    else:
        assert res["objective_undamped"] == sol.objective
    assert res["objective_undamped"] == pytest.approx(layer.reconstruction_error(sol.weights, sol.bias), rel=1e-12,
                                                      abs=1e-12)
    extra = res["objective_damped"] - res["objective_undamped"]
    assert extra == pytest.approx(_damped_by_definition(layer, sol.weights) - layer.reconstruction_error(sol.weights),
                                  rel=1e-8, abs=1e-9 * max(layer.dense_energy(), 1.0))
    assert extra >= 0.0
    if layer.damping == 0.0 and bool((layer.gram.diagonal() > 0).all()):
        assert res["objective_damped"] == res["objective_undamped"]


def test_dead_inputs_are_damped_as_in_damped_gram():
    """Property: an input column that never fires (G_jj = 0) is damped by lambda + 1, as damped_gram sets it."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((32, 6))
    x[:, 2] = 0.0
    layer = LayerData.from_inputs(torch.from_numpy(rng.standard_normal((3, 6))), torch.from_numpy(x), damping=0.05)
    mask = torch.ones(3, 6, dtype=torch.bool)
    mask[:, 2] = False
    sol = prunekit.solve(FixedMaskRestoration(layer, mask), backend="torch", dtype="float64")
    lam = layer.damping_value()
    d = sol.weights.double() - layer.weight.double()
    expected = 0.5 * lam * float((d * d).sum()) + 0.5 * float((d[:, 2] ** 2).sum())
    assert sol.residuals["objective_damped"] - sol.residuals["objective_undamped"] == pytest.approx(expected, rel=1e-10)
    assert sol.residuals["objective_damped"] == pytest.approx(_damped_by_definition(layer, sol.weights), rel=1e-10)


@settings(max_examples=20, deadline=None)
@given(layer=pst.toy_layers(m=st.integers(1, 5), n=st.sampled_from((4, 8)), damping=st.sampled_from((0.05, 0.5))),
       seed=st.integers(0, 2**32 - 1))
def test_each_objective_is_minimized_by_its_own_restoration(layer, seed):
    """Property: the damped restoration minimizes objective_damped and the undamped one (damping = 0)
    objective_undamped on the same mask -- the two numbers are different problems, each reported truthfully."""
    from dataclasses import replace

    mask = NM(2, 4).project(torch.from_numpy(np.random.default_rng(seed).random(layer.shape)))
    f = FixedMaskRestoration(layer, mask)
    damped = prunekit.solve(f, backend="torch", dtype="float64")
    plain_w = prunekit.solve(FixedMaskRestoration(replace(layer, damping=0.0), mask), backend="torch",
                             dtype="float64").weights
    plain = f.residuals(Solution(weights=plain_w, mask=mask))  # the undamped optimum, scored on this layer
    tol = 1e-9 * max(layer.dense_energy(), 1e-12)
    assert damped.residuals["objective_damped"] <= plain["objective_damped"] + tol
    assert plain["objective_undamped"] <= damped.residuals["objective_undamped"] + tol


def test_reconstruction_error_is_computed_once(monkeypatch):
    """Property: Formulation.residuals evaluates the reconstruction error once, shared by objective and
    objective_undamped."""
    layer = random_layer(np.random.default_rng(0), 3, 8)
    f = WandaPruning(layer, NM(2, 4))
    sol = prunekit.solve(f, backend="torch", dtype="float64")
    calls = []
    original = LayerData.reconstruction_error
    monkeypatch.setattr(LayerData, "reconstruction_error", lambda self, *a, **k: calls.append(1) or original(self, *a, **k))
    res = f.residuals(sol)
    assert len(calls) == 1 and res["objective_undamped"] == res["objective"]


def test_solution_documents_both_conventions():
    """Property: Solution's docstring names both keys and what ``objective`` means."""
    doc = Solution.__doc__
    assert "objective_undamped" in doc and "objective_damped" in doc and "undamped" in doc.split("status :")[0]


def test_certificates_share_one_product_and_match_the_direct_formulas():
    """The objective and the restoration stationarity of one solution share ``(W_hat - W) G`` (one O(m n^2)
    product): both equal the direct float64 formulas, an in-place change of W_hat is seen (the kept product is keyed
    by the tensor's version), and nothing stays kept after ``residuals``."""
    import numpy as np

    from prunekit.formulations.base import restoration_stationarity
    from prunekit.verification.toy import random_layer

    layer = random_layer(np.random.default_rng(3), 5, 12, conditioning="correlated")
    w = layer.weight.double()
    g = layer.gram.double()
    w_hat = w.clone()
    w_hat[:, ::3] = 0.0
    mask = w_hat != 0

    def direct(wh):
        d = wh - w
        damped = layer.damped_gram()
        return 0.5 * float(torch.sum((d @ g) * d)), float((d @ damped)[mask].abs().max() / (w @ damped).abs().max())

    for _ in range(2):
        objective, stationarity = direct(w_hat)
        assert layer.reconstruction_error(w_hat) == pytest.approx(objective, rel=1e-12)
        assert restoration_stationarity(layer, w_hat, mask) == pytest.approx(stationarity, rel=1e-12)
        assert layer.dense_energy() == pytest.approx(0.5 * float(torch.sum((w @ g) * w)), rel=1e-12)
        w_hat.mul_(0.5)  # in place: same tensor object, new version
    layer.forget_products()
    assert "error" not in layer._memo()


def test_a_new_tensor_at_a_freed_tensors_address_is_not_mistaken_for_it():
    """Objectives of many short-lived candidates (brute force over masks) are each their own: the kept product
    is tied to the tensor object, not to an id or address that the allocator reuses."""
    from prunekit.verification.toy import random_layer

    layer = random_layer(np.random.default_rng(5), 3, 6, conditioning="correlated")
    w, g = layer.weight.double(), layer.gram.double()
    def candidate(j):
        out = w.clone()
        out[:, j] = 0.0
        return out

    expected = []
    for j in range(6):
        d = candidate(j) - w
        expected.append(0.5 * float(torch.sum((d @ g) * d)))
    # each argument is freed right after its call, so the next candidate may take its address, id and version
    got = [layer.reconstruction_error(candidate(j)) for j in range(6)]
    assert got == pytest.approx(expected, rel=1e-12)
