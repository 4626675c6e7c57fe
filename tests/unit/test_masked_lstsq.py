"""Unit tests: the shared per-row masked least-squares kernel (fast dual-CG path vs its exact per-row twin)."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import prunekit
from prunekit.formulations.layer import LayerData
from prunekit.formulations.mrp import MultipleRemoval
from prunekit.formulations.restoration import FixedMaskRestoration
from prunekit.formulations.sparsity import Unstructured
from prunekit.solvers.torch.masked_lstsq import (
    cg_rows,
    damped_parts,
    factor_hessian,
    layer_parts,
    masked_lstsq,
    masked_lstsq_exact,
    objective_rows,
    restore_layer,
)
from prunekit.verification.strategies import CONDITIONINGS, inputs_array, toy_layers

TOL = 1e-4  # the fast path's contract: objective within 1e-4 relative of the exact optimum
SEEDS = st.integers(0, 2**32 - 1)


@st.composite
def hard_problems(draw):
    """(layer, keep) with any conditioning (cond(G) up to ~1e8), small or no damping, duplicated and zero input
    columns, and per-row masks of any density (rows fully kept and fully pruned included)."""
    m, n = draw(st.integers(1, 6)), draw(st.integers(2, 40))
    rng = np.random.default_rng(draw(SEEDS))
    x = inputs_array(rng, n, 4 * n, draw(st.sampled_from(CONDITIONINGS)))
    edit = draw(st.sampled_from(("none", "duplicate", "zero", "both")))
    cols = rng.permutation(n)
    if edit in ("duplicate", "both"):
        x[:, cols[0]] = x[:, cols[1]]
    if edit in ("zero", "both") and n > 2:
        x[:, cols[-1]] = 0.0
    gram = x.T @ x
    weight = rng.standard_normal((m, n)) * draw(st.sampled_from((1.0, 1e-3)))
    layer = LayerData(weight=torch.from_numpy(weight), gram=torch.from_numpy(0.5 * (gram + gram.T)),
                      num_tokens=4 * n, damping=draw(st.sampled_from((1e-2, 1e-6, 0.0))), check_psd=False)
    keep = torch.from_numpy(rng.random((m, n)) < draw(st.sampled_from((0.1, 0.5, 0.9))))
    if m > 1 and draw(st.booleans()):
        keep[0] = True
        keep[-1] = False
    return layer, keep


def _solve_both(layer, keep, **kw):
    """Fast path and exact twin on the same damped H; returns (w_fast, w_exact, H, info)."""
    h0, lam = layer_parts(layer)
    w0 = layer.weight.double()
    fast, info = masked_lstsq(h0, keep, target=w0, damping=lam, method="cg", **kw)
    h = h0 + info.damping_used * torch.eye(h0.shape[0], dtype=h0.dtype)
    return fast, masked_lstsq_exact(w0, h, keep), h, info


def _assert_objective_close(layer, keep, fast, exact, h, tol=TOL):
    w0 = layer.weight.double()
    f_fast, f_exact = objective_rows(fast, w0, h), objective_rows(exact, w0, h)
    noise = 1e-9 * objective_rows(torch.zeros_like(w0), w0, h)  # float64 resolution of ill-conditioned rows
    assert bool((f_fast <= f_exact * (1 + tol) + noise).all()), (f_fast, f_exact)
    assert bool((f_fast >= f_exact - noise).all()), "the exact twin must be the optimum"
    assert bool((fast[~keep] == 0).all()) and bool((exact[~keep] == 0).all())


@given(problem=hard_problems())
def test_fast_path_objective_within_tol_of_exact(problem):
    """Property: on hard layers (cond up to 1e8, duplicated/zero columns, no damping) the fast path's per-row
    objective is within 1e-4 relative of the exact per-row Cholesky twin, and both are exactly 0 off the mask."""
    layer, keep = problem
    fast, exact, h, info = _solve_both(layer, keep)
    _assert_objective_close(layer, keep, fast, exact, h)
    assert info.path == "cg" and info.gap_bound <= TOL


@given(layer=toy_layers(m=st.integers(1, 6), n=st.integers(2, 24), damping=st.sampled_from((1e-2, 1e-6))),
       seed=SEEDS)
def test_fast_path_on_strategy_layers(layer, seed):
    """Property: the same agreement on ``prunekit.verification.strategies.toy_layers`` (shifted means, biases)."""
    keep = torch.from_numpy(np.random.default_rng(seed).random(layer.shape) < 0.5)
    fast, exact, h, _ = _solve_both(layer, keep)
    _assert_objective_close(layer, keep, fast, exact, h)


@given(problem=hard_problems())
def test_certificate_bounds_the_true_gap(problem):
    """Property: every certified row's bound (1/2 s H s^T) / D(mu) is at least its true relative gap."""
    layer, keep = problem
    h0, lam = layer_parts(layer)
    factor, used = factor_hessian(h0, lam)
    h = h0 + used * torch.eye(h0.shape[0], dtype=h0.dtype)
    hinv = torch.cholesky_inverse(factor)
    w0 = layer.weight.double()
    res = cg_rows(w0, h, hinv, keep, tol=1e-2)
    w, certified, bound = res.weights, res.certified, res.gap_bound
    exact = masked_lstsq_exact(w0, h, keep)
    f, f_star = objective_rows(w, w0, h), objective_rows(exact, w0, h)
    noise = 1e-9 * objective_rows(torch.zeros_like(w0), w0, h)
    rows = certified & (f_star > noise)
    assert bool(((f - f_star)[rows] <= bound[rows] * f_star[rows] + noise[rows]).all())


@given(problem=hard_problems())
def test_uncertified_rows_fall_back_to_the_exact_path(problem):
    """Property: with no iterations allowed, every row the initial point does not certify is re-solved exactly
    (counted in ``fallback_rows``); the result equals the exact solve."""
    layer, keep = problem
    fast, exact, h, info = _solve_both(layer, keep, max_iter=0)
    _assert_objective_close(layer, keep, fast, exact, h)
    hinv = torch.cholesky_inverse(torch.linalg.cholesky(h))
    first = cg_rows(layer.weight.double(), h, hinv, keep, max_iter=0)
    assert info.fallback_rows == int((~first.certified).sum()) and info.iterations == 0


@settings(max_examples=10)
@given(problem=hard_problems())
def test_paths_and_forms_agree(problem):
    """Property: target form == cross form (B = T H), reusing H^{-1} changes nothing, method="exact" == twin."""
    layer, keep = problem
    h0, lam = layer_parts(layer)
    w0 = layer.weight.double()
    exact, info = masked_lstsq(h0, keep, target=w0, damping=lam, method="exact")
    h = h0 + info.damping_used * torch.eye(h0.shape[0], dtype=h0.dtype)
    twin = masked_lstsq_exact(w0, h, keep)
    via_cross, _ = masked_lstsq(h0, keep, cross=w0 @ h, damping=info.damping_used, method="exact")
    hinv = torch.cholesky_inverse(torch.linalg.cholesky(h))
    with_hinv, _ = masked_lstsq(h0, keep, target=w0, hinv=hinv, damping_used=info.damping_used, method="cg")
    for other in (twin, via_cross, with_hinv):
        _assert_objective_close(layer, keep, other, exact, h)


def test_shared_columns_take_one_factorization():
    """Property: a mask whose rows are equal takes the |S| x |S| path and equals the per-row twin."""
    rng = np.random.default_rng(0)
    layer = LayerData.from_inputs(torch.from_numpy(rng.standard_normal((5, 12))),
                                  torch.from_numpy(inputs_array(rng, 12, 48, "correlated")))
    keep = torch.from_numpy(rng.random(12) < 0.5).expand(5, 12).clone()
    w, info = restore_layer(layer, keep)
    assert info.path == "columns"
    twin = masked_lstsq_exact(layer.weight.double(), layer.damped_gram(), keep)
    assert torch.allclose(w, twin, rtol=1e-10, atol=1e-12) and bool((w[~keep] == 0).all())


def test_damping_convention_is_layer_damped_gram():
    """Property: damped_parts(G, damping) rebuilds LayerData.damped_gram, dead inputs included, any gram."""
    rng = np.random.default_rng(1)
    x = inputs_array(rng, 6, 24, "well")
    x[:, 2] = 0.0
    layer = LayerData.from_inputs(torch.from_numpy(rng.standard_normal((3, 6))), torch.from_numpy(x), damping=0.05)
    h0, lam = layer_parts(layer)
    assert torch.allclose(h0 + lam * torch.eye(6, dtype=h0.dtype), layer.damped_gram(), rtol=0, atol=1e-12)
    assert float(h0[2, 2]) == 1.0 and lam == pytest.approx(0.05 * float(layer.gram.diagonal().mean()))
    g0, lam0 = damped_parts(torch.zeros(4, 4, dtype=torch.float64), 0.1)
    assert torch.equal(g0, torch.eye(4, dtype=torch.float64)) and lam0 == 0.1


def test_factor_hessian_escalates_only_singular_matrices():
    """Property: a damped float32 Gram with outlier channels keeps its damping; an exactly singular Gram
    (duplicated inputs, no damping; its plain Cholesky succeeds by rounding) is escalated to a positive damping."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 1024, generator=g, dtype=torch.float64)
    x[:, :4] *= 100.0
    h0, lam = damped_parts((x.T @ x).float(), 0.01, dtype=torch.float32)
    assert factor_hessian(h0, lam)[1] == lam
    x = torch.randn(64, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x[:, 3] = x[:, 7]
    h0, lam = damped_parts(x.T @ x, 0.0)
    assert int(torch.linalg.cholesky_ex(h0)[1]) == 0  # accepted by rounding: pivot^2 ~ 1e-15
    factor, used = factor_hessian(h0, lam)
    assert lam == 0.0 and used > 0.0 and float(factor.diagonal().min()) ** 2 >= 0.5 * used


def _correlated_layer(m, n, tokens, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    scales = (1.0 + torch.arange(n, dtype=torch.float64)) ** -0.5
    scales[torch.randperm(n, generator=g)[: max(1, n // 100)]] *= 20.0  # outlier channels: max diag >> mean diag
    x = torch.randn(tokens, n, generator=g, dtype=torch.float64) * scales[torch.randperm(n, generator=g)]
    x = x + 0.3 * torch.randn(tokens, 16, generator=g, dtype=torch.float64) @ torch.randn(16, n, generator=g,
                                                                                          dtype=torch.float64)
    w = torch.randn(m, n, generator=g, dtype=torch.float64) / n ** 0.5
    return LayerData(weight=w.to(dtype), gram=(x.T @ x).to(dtype), num_tokens=tokens, check_psd=False)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_fast_path_converges_without_fallback_on_correlated_layers(dtype):
    """Property: on a 64 x 512 correlated layer with outlier channels and the default damping, the fast path
    certifies every row in at most 20 iterations (no exact fallback) with the layer's own damping (no spurious
    escalation), within 1e-4 of the float64 optimum, in float64 and float32."""
    layer = _correlated_layer(64, 512, 1024, dtype=dtype)
    keep = torch.rand(64, 512, generator=torch.Generator().manual_seed(1)) < 0.5
    w, info = restore_layer(layer, keep, dtype=dtype, method="cg")
    assert info.path == "cg" and info.fallback_rows == 0 and info.iterations <= 20 and w.dtype == dtype
    assert info.damping_used == pytest.approx(layer.damping_value(), rel=1e-6)
    columns = restore_layer(layer, keep[:1].expand(64, -1), dtype=dtype)[1]
    assert columns.path == "columns" and columns.damping_used == pytest.approx(layer.damping_value(), rel=1e-6)
    exact, _ = restore_layer(layer, keep, method="exact")
    h = layer.damped_gram()
    f, f_star = objective_rows(w.double(), layer.weight.double(), h), objective_rows(exact, layer.weight.double(), h)
    assert float(((f - f_star) / f_star).max()) <= TOL * (1.05 if dtype == torch.float32 else 1.0)
    assert bool((w[~keep] == 0).all())


def test_auto_picks_the_fast_path_for_large_layers_and_solvers_report_it():
    """Property: method="auto" takes the exact path on small layers and the fast path on large ones; MRP and
    FixedMaskRestoration report the path, iterations and certified gap in ``stats``."""
    small = _correlated_layer(4, 16, 64)
    keep_small = torch.rand(4, 16, generator=torch.Generator().manual_seed(2)) < 0.5
    assert restore_layer(small, keep_small)[1].path == "exact"
    layer = _correlated_layer(64, 1024, 1024, dtype=torch.float32)
    sol = prunekit.solve(MultipleRemoval(layer, Unstructured(0.5)), backend="torch")
    assert sol.stats["restore_path"] == "cg" and sol.stats["cg_fallback_rows"] == 0
    assert 0 <= sol.stats["cg_gap_bound"] <= 1e-4 and bool((sol.weights[~sol.mask] == 0).all())
    fixed = prunekit.solve(FixedMaskRestoration(layer, sol.mask), backend="torch", dtype="float64")
    assert fixed.status == "solved" and fixed.stats["restore_path"] == "cg"
    assert fixed.stats["cg_gap_bound"] <= 1e-6  # the solver asks min(options.tol, 1e-4)


def test_bad_arguments_name_the_fix():
    h = torch.eye(3, dtype=torch.float64)
    keep = torch.ones(2, 3, dtype=torch.bool)
    with pytest.raises(ValueError, match="method"):
        masked_lstsq(h, keep, target=torch.zeros(2, 3, dtype=torch.float64), method="fast")
    with pytest.raises(ValueError, match="exactly one"):
        masked_lstsq(h, keep)
