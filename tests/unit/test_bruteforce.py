"""Brute-force reference solvers: exact MIP optima by enumeration (prunekit/solvers/reference/bruteforce.py)."""

import itertools

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from prunekit import solve
from prunekit.errors import NoSolverError
from prunekit.formulations.layer import LayerData
from prunekit.formulations.mip import MaskedReconstructionMIP
from prunekit.formulations.reductions_spap import exact_restore
from prunekit.formulations.sparsity import NM, Channels, Unstructured
from prunekit.solvers.reference.bruteforce import best_channel_set, num_masks
from prunekit.verification.toy import CONDITIONINGS, random_layer

seeds = st.integers(0, 2**32 - 1)
conds = st.sampled_from(CONDITIONINGS)


def _row_error(layer, keep_row, i):
    """1/2 d G d of row i after exact restoration; G is PSD, so a negative value is float64 rounding of a zero
    error on rank-deficient inputs and is taken as 0 (the brute force clips its errors the same way)."""
    w = exact_restore(layer, keep_row)[i]
    d = w - layer.weight[i].double()
    return max(0.0, 0.5 * float(d @ layer.gram.double() @ d))


@given(seed=seeds, cond=conds, k=st.integers(1, 4))
def test_channels_optimum_beats_every_kept_set(seed, cond, k):
    """Property: the brute-force channel optimum is <= the restored error of every kept set of that size."""
    layer = random_layer(np.random.default_rng(seed), 3, 6, conditioning=cond)
    sol = solve(MaskedReconstructionMIP(layer, Channels(count=k)), backend="bruteforce")
    assert sol.status == "optimal" and sol.residuals["mask_violations"] == 0
    tol = 1e-10 * layer.dense_energy()
    for pruned in itertools.combinations(range(6), k):
        keep = torch.ones(6, dtype=torch.bool)
        keep[list(pruned)] = False
        assert sol.objective <= layer.reconstruction_error(exact_restore(layer, keep)) + tol
    kept, obj = best_channel_set(layer, Channels(count=k))
    assert kept.tolist() == sol.kept_columns.tolist()
    assert obj == pytest.approx(sol.objective, rel=1e-12, abs=tol)


@given(seed=seeds, cond=conds)
def test_row_scope_separates_rows(seed, cond):
    """Property: per-row unstructured optimum = sum of the best kept set of each row (rows separate)."""
    layer = random_layer(np.random.default_rng(seed), 3, 6, conditioning=cond)
    sol = solve(MaskedReconstructionMIP(layer, Unstructured(0.5)), backend="bruteforce")
    assert sol.residuals["mask_violations"] == 0
    total = 0.0
    for i in range(3):
        best = np.inf
        for kept in itertools.combinations(range(6), 3):
            keep = torch.zeros(6, dtype=torch.bool)
            keep[list(kept)] = True
            best = min(best, _row_error(layer, keep, i))
        total += best
    assert sol.objective == pytest.approx(total, rel=1e-9, abs=1e-10 * layer.dense_energy())


@given(seed=seeds, cond=conds)
def test_feasible_set_inclusions_order_the_optima(seed, cond):
    """Property: nested feasible sets with the same pruned count order the optima: layer <= row <= 2:4."""
    layer = random_layer(np.random.default_rng(seed), 2, 8, conditioning=cond)
    tol = 1e-9 * layer.dense_energy()
    obj = {name: solve(MaskedReconstructionMIP(layer, spec), backend="bruteforce").objective
           for name, spec in (("layer", Unstructured(0.5, scope="layer")), ("row", Unstructured(0.5)),
                              ("nm", NM(2, 4)))}
    assert obj["layer"] <= obj["row"] + tol
    assert obj["row"] <= obj["nm"] + tol


@given(seed=seeds)
def test_nm_and_layer_masks_obey_spec(seed):
    """Property: returned masks satisfy N:M and the per-layer count; weights vanish off the mask."""
    layer = random_layer(np.random.default_rng(seed), 3, 8)
    for spec in (NM(2, 4), NM(1, 4), Unstructured(0.25, scope="layer")):
        sol = solve(MaskedReconstructionMIP(layer, spec), backend="bruteforce")
        assert spec.violations(sol.mask) == 0
        assert sol.residuals["pruned_max_abs"] == 0.0
        assert sol.residuals["stationarity_undamped"] < 1e-6


def test_diagonal_gram_has_analytic_optimum():
    """Property: with G diagonal the best channels to drop are the k smallest G_jj ||W_:,j||^2, with no update."""
    rng = np.random.default_rng(3)
    w = torch.from_numpy(rng.standard_normal((4, 7)))
    d = torch.from_numpy(rng.uniform(0.1, 5.0, 7))
    layer = LayerData(w, torch.diag(d), num_tokens=10, damping=0.0)
    cost = d * (w ** 2).sum(0)
    sol = solve(MaskedReconstructionMIP(layer, Channels(count=3)), backend="bruteforce")
    assert sorted(set(range(7)) - set(sol.kept_columns.tolist())) == sorted(torch.argsort(cost)[:3].tolist())
    assert sol.objective == pytest.approx(0.5 * float(torch.sort(cost).values[:3].sum()), rel=1e-12)
    torch.testing.assert_close(sol.weights[:, sol.kept_columns], w[:, sol.kept_columns])


def test_groups_are_removed_together():
    """Property: with explicit groups, whole groups go and ungrouped columns stay."""
    layer = random_layer(np.random.default_rng(0), 3, 7)
    spec = Channels(count=1, groups=((0, 1), (2, 3), (4, 5)))
    sol = solve(MaskedReconstructionMIP(layer, spec), backend="bruteforce")
    assert spec.violations(sol.mask) == 0 and 6 in sol.kept_columns.tolist() and len(sol.kept_columns) == 5


def test_inputs_unchanged_and_dtype_preserved():
    """Property: solving leaves the layer untouched and returns weights in its dtype (float32 here)."""
    base = random_layer(np.random.default_rng(1), 3, 6)
    layer = LayerData(base.weight.float(), base.gram.float(), base.num_tokens)
    w0, g0 = layer.weight.clone(), layer.gram.clone()
    sol = solve(MaskedReconstructionMIP(layer, Unstructured(0.5)), backend="bruteforce")
    assert torch.equal(layer.weight, w0) and torch.equal(layer.gram, g0)
    assert sol.weights.dtype == torch.float32 and sol.mask.dtype == torch.bool


def test_declines_too_many_masks_with_advice():
    """Property: an enumeration beyond the limit is declined with advice, not attempted."""
    layer = random_layer(np.random.default_rng(0), 2, 16)
    f = MaskedReconstructionMIP(layer, Unstructured(0.5, scope="layer"))
    assert num_masks(f.sparsity, layer.shape) == 2 ** 16
    with pytest.raises(NoSolverError, match="masks to enumerate"):
        solve(f, backend="bruteforce")


def test_error_corrected_objective_is_supported():
    """Property: with X* (gram_star, cross) the channel optimum is min_S min ||W' X*_S - W X||^2 / 2 (direct lstsq)."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal((30, 5))
    xs = x + 0.2 * rng.standard_normal((30, 5))
    w = rng.standard_normal((2, 5))
    layer = LayerData.from_inputs(torch.from_numpy(w), torch.from_numpy(x), inputs_star=torch.from_numpy(xs))
    sol = solve(MaskedReconstructionMIP(layer, Channels(count=2)), backend="bruteforce")
    best = np.inf
    for kept in itertools.combinations(range(5), 3):
        coef = np.linalg.lstsq(xs[:, kept], x @ w.T, rcond=None)[0]
        best = min(best, 0.5 * float(np.sum((xs[:, kept] @ coef - x @ w.T) ** 2)))
    assert sol.objective == pytest.approx(best, rel=1e-9)
    assert sol.residuals["stationarity_undamped"] < 1e-9
