"""Unit tests: FixedMaskRestoration, the torch closed form (restore / restore_columns) and its reference twins."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from prunekit.errors import NoSolverError, ShapeError
from prunekit.formulations import Guarantee
from prunekit.formulations.restoration import FixedMaskRestoration
from prunekit.solvers import solve
from prunekit.solvers.torch.closed_form import restore, restore_columns
from prunekit.verification.toy import CONDITIONINGS, random_layer

layers = st.builds(
    lambda seed, m, n, cond: random_layer(np.random.default_rng(seed), m, n, conditioning=cond),
    st.integers(0, 2**32 - 1), st.integers(1, 6), st.integers(2, 10), st.sampled_from(CONDITIONINGS),
)


def _mask(seed, shape, shared):
    rng = np.random.default_rng(seed)
    if shared:
        return torch.from_numpy(np.broadcast_to(rng.random(shape[1]) < 0.5, shape).copy())
    return torch.from_numpy(rng.random(shape) < 0.5)


@given(layer=layers, seed=st.integers(0, 2**32 - 1), shared=st.booleans())
def test_torch_matches_scipy_twin(layer, seed, shared):
    """Property: the torch restoration (float64) equals the per-row lstsq twin; zero off the mask; stationary."""
    f = FixedMaskRestoration(layer, _mask(seed, layer.shape, shared))
    a, b = solve(f, backend="torch", dtype="float64"), solve(f, backend="scipy")
    scale = max(1.0, float(b.weights.abs().max()))
    assert float((a.weights - b.weights).abs().max()) <= 1e-8 * scale
    assert a.residuals["pruned_max_abs"] == 0.0 and a.residuals["mask_mismatch"] == 0.0
    assert a.residuals["stationarity"] < 1e-9
    assert a.status == "optimal" and a.stats["damping_used"] > 0


@pytest.mark.reference
@settings(max_examples=5)
@given(layer=layers, seed=st.integers(0, 2**32 - 1))
def test_torch_matches_cvxpy_qp(layer, seed):
    """Property: the CVXPY equality-constrained QP agrees with the closed form."""
    f = FixedMaskRestoration(layer, _mask(seed, layer.shape, False))
    a, b = solve(f, backend="torch", dtype="float64"), solve(f, backend="cvxpy")
    assert abs(a.objective - b.objective) <= 1e-6 * max(1.0, a.objective)


@given(layer=layers, seed=st.integers(0, 2**32 - 1), batch=st.integers(1, 4))
def test_row_batch_and_float32(layer, seed, batch):
    """Property: row_batch does not change the answer; float32 compute stays close and returns the weight's dtype."""
    f = FixedMaskRestoration(layer, _mask(seed, layer.shape, False))
    a = solve(f, backend="torch", dtype="float64")
    b = solve(f, backend="torch", dtype="float64", row_batch=batch)
    c = solve(f, backend="torch", dtype="float32")
    assert torch.allclose(a.weights, b.weights, rtol=1e-10, atol=1e-10)
    assert c.weights.dtype == layer.weight.dtype and c.objective <= a.objective * (1 + 1e-3) + 1e-6


def test_inputs_not_mutated_and_dtype_preserved():
    """Property: solve leaves W, G and the mask untouched and returns float32 weights for a float32 layer."""
    layer64 = random_layer(np.random.default_rng(0), 4, 8)
    from prunekit.formulations.layer import LayerData

    layer = LayerData(layer64.weight.float(), layer64.gram.float(), layer64.num_tokens)
    mask = _mask(1, (4, 8), False)
    copies = layer.weight.clone(), layer.gram.clone(), mask.clone()
    sol = solve(FixedMaskRestoration(layer, mask), backend="torch")
    assert torch.equal(layer.weight, copies[0]) and torch.equal(layer.gram, copies[1]) and torch.equal(mask, copies[2])
    assert sol.weights.dtype == torch.float32 and sol.weights.device == layer.weight.device


def test_restore_columns_equals_restore_and_lstsq():
    """Property: the structured fast path equals the per-row Lagrange path and the plain least squares."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((40, 8))
    w = rng.standard_normal((5, 8))
    from prunekit.formulations.layer import LayerData

    layer = LayerData.from_inputs(torch.from_numpy(w), torch.from_numpy(x), damping=0.0)
    cols = torch.tensor([0, 2, 3, 7])
    fast, _ = restore_columns(layer, cols)
    mask = torch.zeros(5, 8, dtype=torch.bool)
    mask[:, cols] = True
    ref = np.linalg.lstsq(x[:, cols.numpy()], x @ w.T, rcond=None)[0].T
    assert np.allclose(fast[:, cols].numpy(), ref, atol=1e-10)
    from prunekit.solvers.torch.closed_form import damped_inverse, lagrange_rows

    hinv, used = damped_inverse(layer, torch.float64, "cpu")
    slow, _ = restore(layer, mask, hinv=hinv, damping_used=used)  # forces the per-row Lagrange path
    lag = lagrange_rows(layer.weight.clone(), ~mask, hinv)
    assert torch.allclose(lag, fast, atol=1e-9) and torch.allclose(slow, fast, atol=1e-9)


def test_damping_escalates_on_singular_gram():
    """Property: with damping 0 and a singular G, the Cholesky escalates and reports damping_used > 0."""
    layer = random_layer(np.random.default_rng(5), 3, 8, conditioning="rank_deficient", damping=0.0)
    mask = torch.zeros(3, 8, dtype=torch.bool)
    mask[:, 1:] = True  # 7 kept columns of a rank-4 Gram: G_SS singular
    sol = solve(FixedMaskRestoration(layer, mask), backend="torch", dtype="float64")
    assert sol.stats["damping_used"] > 0 and torch.isfinite(sol.weights).all()


def test_errors_name_the_fix():
    """Property: wrong mask shapes or types raise ShapeError with a fix; a cvxpy twin declines large layers."""
    layer = random_layer(np.random.default_rng(0), 3, 4)
    with pytest.raises(ShapeError, match="Fix"):
        FixedMaskRestoration(layer, torch.ones(4, 3, dtype=torch.bool))
    with pytest.raises(ShapeError, match="Fix"):
        FixedMaskRestoration(layer, None)
    big = random_layer(np.random.default_rng(0), 16, 16)
    with pytest.raises(NoSolverError, match="max_weights"):
        solve(FixedMaskRestoration(big, torch.ones(16, 16, dtype=torch.bool)), backend="cvxpy")
    assert FixedMaskRestoration.guarantee is Guarantee.EXACT


@given(seed=st.integers(0, 2**32 - 1))
def test_example_is_valid_and_small(seed):
    """Property: example() returns a valid instance with n <= 12 that both backends solve to the same objective."""
    f = FixedMaskRestoration.example(np.random.default_rng(seed))
    assert f.layer.in_features <= 12
    a, b = solve(f, backend="torch", dtype="float64"), solve(f, backend="scipy")
    assert abs(a.objective - b.objective) <= 1e-8 * max(1.0, b.objective)


def test_restore_columns_accepts_bool_vector_and_indices():
    """Property: a boolean kept-column vector and the equivalent index list give the same restored weight."""
    layer = random_layer(np.random.default_rng(4), 4, 8, conditioning="correlated")
    keep = torch.tensor([True, False, True, True, False, False, True, False])
    a, _ = restore_columns(layer, keep)
    b, _ = restore_columns(layer, torch.nonzero(keep).squeeze(1))
    assert torch.equal(a, b) and bool((a[:, ~keep] == 0).all())


def test_error_corrected_layers_are_rejected():
    """Property: layers with gram_star/cross raise FormulationError naming the fix (restoration uses the plain objective)."""
    from prunekit.errors import FormulationError
    from prunekit.formulations.layer import LayerData

    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.standard_normal((20, 4)))
    layer = LayerData.from_inputs(torch.from_numpy(rng.standard_normal((2, 4))), x, inputs_star=x + 0.1)
    with pytest.raises(FormulationError, match="Fix"):
        FixedMaskRestoration(layer, torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(FormulationError, match="Fix"):
        restore_columns(layer, [0, 1])
