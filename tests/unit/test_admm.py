"""Unit tests of ADMMSplit (formulation) and its torch / scipy solvers (toy sizes)."""

import numpy as np
import pytest
import torch

from prunekit import solve
from prunekit.errors import FormulationError, SparsityError
from prunekit.formulations.admm import ADMMSplit
from prunekit.formulations.sparsity import NM, Channels, Unstructured
from prunekit.solvers.torch.admm import restore_on_mask, w_step
from prunekit.verification.toy import random_layer


def _layer(seed=0, m=6, n=8, **kw):
    return random_layer(np.random.default_rng(seed), m, n, **kw)


@pytest.mark.parametrize("seed", range(6))
def test_torch_matches_reference_twin(seed):
    f = ADMMSplit.example(np.random.default_rng(seed))
    a, b = solve(f, backend="torch", dtype="float64"), solve(f, backend="scipy")
    assert torch.equal(a.mask, b.mask)
    assert torch.allclose(a.weights, b.weights, atol=1e-9, rtol=1e-9)
    assert a.stats["iterations"] == b.stats["iterations"]


@pytest.mark.parametrize("spec", [Channels(ratio=0.25), Channels(count=2), Unstructured(0.5), NM(2, 4)])
@pytest.mark.parametrize("score", ["wanda_l1", "frobenius"])
def test_spec_obeyed_and_restored(spec, score):
    f = ADMMSplit(_layer(1, conditioning="correlated"), spec, iterations=15, projection_score=score, rho_growth=1.1)
    sol = solve(f, backend="torch")
    assert sol.residuals["mask_violations"] == 0
    assert sol.residuals["pruned_max_abs"] == 0
    assert sol.residuals["stationarity"] < 1e-4  # float32 restoration on the support
    assert sol.weights.dtype == f.layer.weight.dtype
    assert "primal_residual" in sol.residuals and "dual_residual" in sol.residuals
    if spec.structured:
        assert sol.kept_columns is not None and sol.mask[:, sol.kept_columns].all()


def test_w_step_matches_stacked_lstsq_and_cvxpy():
    layer = _layer(2, 4, 6)
    gd = layer.damped_gram()
    w0 = layer.weight.double()
    v = torch.from_numpy(np.random.default_rng(3).standard_normal((4, 6)))
    rho = 3.7
    w = w_step(w0, gd, v, rho).numpy()
    root = np.linalg.cholesky(gd.numpy())  # Gd = L L^T: ||(w - w0) L||^2 + rho/2 ||w - v||^2
    a = np.vstack([root.T, np.sqrt(rho / 2) * np.eye(6)])
    for i in range(4):
        rhs = np.concatenate([root.T @ w0[i].numpy(), np.sqrt(rho / 2) * v[i].numpy()])
        assert np.allclose(w[i], np.linalg.lstsq(a, rhs, rcond=None)[0], atol=1e-10)
    cp = pytest.importorskip("cvxpy")
    x = cp.Variable((4, 6))
    obj = cp.sum_squares((x - w0.numpy()) @ root) + rho / 2 * cp.sum_squares(x - v.numpy())
    cp.Problem(cp.Minimize(obj)).solve()
    assert np.allclose(x.value, w, atol=1e-5)


def test_restore_on_mask_is_least_squares():
    layer = _layer(4, 5, 8)
    gd = layer.damped_gram()
    mask = Unstructured(0.5).project(torch.rand(5, 8, generator=torch.Generator().manual_seed(0)))
    w = restore_on_mask(layer.weight.double(), gd, mask)
    grad = (w - layer.weight.double()) @ gd
    assert grad[mask].abs().max() < 1e-9 and (w[~mask] == 0).all()


def test_frobenius_projection_keeps_largest_columns_when_rho_large():
    """With a huge rho the W-step barely moves from Z: the mask is the Frobenius projection of W0."""
    layer = _layer(5)
    f = ADMMSplit(layer, Channels(ratio=0.25), rho=1e8, iterations=3, projection_score="frobenius")
    sol = solve(f, backend="torch", dtype="float64")
    expected = Channels(ratio=0.25).project((layer.weight.double() ** 2).sum(0))[0]
    assert torch.equal(sol.mask[0], expected)


def test_inputs_unchanged():
    layer = _layer(6)
    w, g = layer.weight.clone(), layer.gram.clone()
    f = ADMMSplit(layer, NM(2, 4), iterations=5)
    solve(f, backend="torch")
    solve(f, backend="scipy")
    assert torch.equal(layer.weight, w) and torch.equal(layer.gram, g)


@pytest.mark.parametrize("kwargs,err", [
    (dict(rho=0.0), FormulationError), (dict(rho=-1.0), FormulationError), (dict(iterations=0), FormulationError),
    (dict(projection_score="l2"), FormulationError), (dict(rho_growth=0.5), FormulationError),
])
def test_clear_errors(kwargs, err):
    with pytest.raises(err):
        ADMMSplit(_layer(), Unstructured(0.5), **kwargs)


def test_missing_or_bad_sparsity():
    with pytest.raises(FormulationError, match="sparsity"):
        ADMMSplit(_layer())
    with pytest.raises(SparsityError):
        ADMMSplit(_layer(n=6), NM(2, 4))
