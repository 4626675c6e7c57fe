"""Unit tests: MultipleRemoval formulation, the torch MRP solver and its reference twins."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from prunekit.errors import FormulationError, NoSolverError
from prunekit.formulations.mrp import MultipleRemoval
from prunekit.formulations.sparsity import NM, Channels, Unstructured
from prunekit.solvers import solve
from prunekit.verification.toy import CONDITIONINGS, random_layer

SPECS = [Unstructured(0.5), Unstructured(0.3, scope="layer"), NM(2, 4), NM(1, 4), Channels(ratio=0.25)]

layers = st.builds(
    lambda seed, m, g, cond: random_layer(np.random.default_rng(seed), m, 4 * g, conditioning=cond),
    st.integers(0, 2**32 - 1), st.integers(1, 5), st.integers(1, 3), st.sampled_from(CONDITIONINGS),
)


def _valid(spec, mask_score, update, block):
    return not ((mask_score == "exact_groups" and not isinstance(spec, NM)) or (block and update != "solution_m"))


@given(layer=layers, spec=st.sampled_from(SPECS), mask_score=st.sampled_from(["solution_s", "exact_groups"]),
       update=st.sampled_from(["solution_m", "solution_s"]), block=st.sampled_from([None, 2, 4]))
def test_torch_matches_scipy_twin(layer, spec, mask_score, update, block):
    """Property: for every valid option combination, torch (float64) and the NumPy twin agree on mask and weights."""
    if not _valid(spec, mask_score, update, block):
        with pytest.raises(FormulationError, match="Fix"):
            MultipleRemoval(layer, spec, mask_score=mask_score, update=update, block_size=block)
        return
    f = MultipleRemoval(layer, spec, mask_score=mask_score, update=update, block_size=block)
    a, b = solve(f, backend="torch", dtype="float64"), solve(f, backend="scipy")
    assert bool((a.mask == b.mask).all())
    assert float((a.weights - b.weights).abs().max()) <= 1e-8 * max(1.0, float(b.weights.abs().max()))
    assert a.residuals["mask_violations"] == 0 and a.residuals["pruned_max_abs"] == 0
    if f.exact_for_mask:
        assert a.residuals["stationarity"] < 1e-9


@given(layer=layers, spec=st.sampled_from(SPECS[:4]))
def test_solution_m_never_worse_than_solution_s_or_blocked(layer, spec):
    """Property: on the same mask, full-width Solution M has the lowest (damped) loss of M, S and blocked M."""
    h = layer.damped_gram()
    losses = {}
    masks = []
    for kw in ({}, {"update": "solution_s"}, {"block_size": 4}):
        sol = solve(MultipleRemoval(layer, spec, **kw), backend="torch", dtype="float64")
        d = sol.weights - layer.weight
        losses[str(kw)] = float(torch.sum((d @ h) * d))
        masks.append(sol.mask)
    assert all(bool((m == masks[0]).all()) for m in masks)
    assert losses["{}"] <= min(losses.values()) * (1 + 1e-10)


@given(seed=st.integers(0, 2**32 - 1))
def test_exact_groups_is_the_row_optimum_when_n_equals_m(seed):
    """Property: with one group per row (n = M = 4), exact_groups' loss is the minimum over all 6 2:4 masks."""
    from prunekit.solvers.torch.closed_form import restore

    layer = random_layer(np.random.default_rng(seed), 3, 4, conditioning="correlated")
    sol = solve(MultipleRemoval(layer, NM(2, 4), mask_score="exact_groups"), backend="torch", dtype="float64")
    h = layer.damped_gram()
    row_loss = lambda w_hat: torch.einsum("ij,jk,ik->i", w_hat - layer.weight, h, w_hat - layer.weight)  # noqa: E731
    best = torch.full((3,), float("inf"), dtype=torch.float64)
    for keep in ([0, 1], [0, 2], [0, 3], [1, 2], [1, 3], [2, 3]):
        mask = torch.zeros(3, 4, dtype=torch.bool)
        mask[:, keep] = True
        w_hat, _ = restore(layer, mask, hinv=torch.linalg.inv(h), damping_used=0.0)
        best = torch.minimum(best, row_loss(w_hat))
    assert torch.allclose(row_loss(sol.weights), best, rtol=1e-9, atol=1e-12)


@settings(max_examples=5)
@given(layer=layers, batch=st.integers(1, 3))
def test_row_batch_float32_and_no_mutation(layer, batch):
    """Property: row_batch does not change the float64 answer; float32 keeps the mask and the weight dtype; inputs untouched."""
    before = layer.weight.clone(), layer.gram.clone()
    f = MultipleRemoval(layer, NM(2, 4), mask_score="exact_groups")
    a = solve(f, backend="torch", dtype="float64")
    b = solve(f, backend="torch", dtype="float64", row_batch=batch)
    c = solve(f, backend="torch", dtype="float32", row_batch=batch)
    assert torch.allclose(a.weights, b.weights, atol=1e-12) and bool((a.mask == b.mask).all())
    assert c.weights.dtype == layer.weight.dtype and c.residuals["mask_violations"] == 0
    assert torch.equal(layer.weight, before[0]) and torch.equal(layer.gram, before[1])


@pytest.mark.reference
@settings(max_examples=4)
@given(layer=layers)
def test_cvxpy_twin_agrees_and_declines_solution_s(layer):
    """Property: the CVXPY QP twin gives Solution M's objective; it declines update='solution_s'."""
    f = MultipleRemoval(layer, Unstructured(0.5))
    a, b = solve(f, backend="torch", dtype="float64"), solve(f, backend="cvxpy")
    assert abs(a.objective - b.objective) <= 1e-6 * max(1.0, a.objective)
    with pytest.raises(NoSolverError, match="solution_m"):
        solve(MultipleRemoval(layer, Unstructured(0.5), update="solution_s"), backend="cvxpy")


def test_option_errors_are_clear():
    """Property: invalid option combinations raise FormulationError naming the fix."""
    layer = random_layer(np.random.default_rng(0), 3, 8)
    with pytest.raises(FormulationError, match=r"needs an NM spec.*Fix: use sparsity=NM\(2, 4\)"):
        MultipleRemoval(layer, Unstructured(0.5), mask_score="exact_groups")
    with pytest.raises(FormulationError, match="block_size"):
        MultipleRemoval(layer, NM(2, 4), update="solution_s", block_size=4)
    with pytest.raises(FormulationError, match="mask_score"):
        MultipleRemoval(layer, NM(2, 4), mask_score="obs")
    with pytest.raises(FormulationError, match="update"):
        MultipleRemoval(layer, NM(2, 4), update="m")
    with pytest.raises(FormulationError, match="positive int"):
        MultipleRemoval(layer, NM(2, 4), block_size=0)
    with pytest.raises(FormulationError, match="sparsity spec"):
        MultipleRemoval(layer)


def test_channels_use_shared_columns():
    """Property: a Channels spec yields a structured solution with kept_columns and the restore_columns optimum."""
    layer = random_layer(np.random.default_rng(1), 4, 8, conditioning="correlated")
    sol = solve(MultipleRemoval(layer, Channels(count=3)), backend="torch", dtype="float64")
    assert sol.kept_columns is not None and sol.kept_columns.numel() == 5
    assert bool((sol.mask == sol.mask[:1]).all()) and sol.residuals["stationarity"] < 1e-10


@given(seed=st.integers(0, 2**32 - 1))
def test_example_is_valid_and_small(seed):
    """Property: example() gives a valid instance (n <= 12) on which torch and the twin agree."""
    f = MultipleRemoval.example(np.random.default_rng(seed))
    assert f.layer.in_features <= 12
    a, b = solve(f, backend="torch", dtype="float64"), solve(f, backend="scipy")
    assert bool((a.mask == b.mask).all()) and abs(a.objective - b.objective) <= 1e-8 * max(1.0, b.objective)
