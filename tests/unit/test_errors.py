"""Every bad input raises one clear error that names the problem and proposes the fix.

Covered: NaN/Inf weights and statistics, non-symmetric / non-PSD Gram, a singular Gram where a solve needs
it, sparsity outside [0, 1), N:M not dividing the width, shape mismatches, unknown backend and option.

Singular Gram, the honest behaviour: ``LayerData`` accepts a singular PSD G (it is valid data: X X^T of
rank-deficient inputs).  A restoration solve with ``damping=0`` then needs ``G_SS^{-1}``.  LAPACK's
Cholesky often *succeeds* on an exactly singular PSD matrix (rounding leaves tiny positive pivots); the
solve then returns one of the (many) minimizers, whose objective is the undamped lstsq optimum.  When the
factorization does fail (G indefinite by rounding), the damped Cholesky escalates the damping (from
1e-8 mean(diag G), x10 per try) and reports it in ``stats["damping_used"]``; only when the escalation
budget (``max_damping_tries``) is exhausted does it raise ``NumericalError`` with the fix.  What is
tested is the objective, never the (non-unique) weights.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import prunekit
from prunekit.errors import (
    GramError,
    NoSolverError,
    NonFiniteError,
    NumericalError,
    ShapeError,
    SparsityError,
)
from prunekit.formulations import NM, FixedMaskRestoration, GramAccumulator, LayerData, MultipleRemoval, Unstructured
from prunekit.verification.toy import random_layer

F64 = torch.float64


def _layer(**kw):
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.standard_normal((24, 6)))
    args = dict(weight=torch.from_numpy(rng.standard_normal((3, 6))), gram=x.T @ x, num_tokens=24)
    args.update(kw)
    return LayerData(**args)


def _assert_clear(info, *words):
    msg = str(info.value)
    assert "Fix" in msg, f"no fix proposed: {msg}"
    for w in words:
        assert w.lower() in msg.lower(), f"{w!r} not named in: {msg}"


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_weight(value):
    w = _layer().weight.clone()
    w[1, 2] = value
    with pytest.raises(NonFiniteError) as info:
        _layer(weight=w)
    _assert_clear(info, "weight", "NaN/Inf")


def test_non_finite_gram_and_calibration_inputs():
    g = _layer().gram.clone()
    g[0, 0] = float("nan")
    with pytest.raises(NonFiniteError) as info:
        _layer(gram=g)
    _assert_clear(info, "gram")
    acc = GramAccumulator(4)
    with pytest.raises(NonFiniteError) as info:
        acc.update(torch.tensor([[1.0, float("inf"), 0.0, 0.0]]))
        acc.check_finite()
    _assert_clear(info, "inputs")


def test_non_psd_gram():
    g = torch.diag(torch.tensor([1.0, 2.0, -3.0, 1.0, 1.0, 1.0], dtype=F64))
    with pytest.raises(GramError) as info:
        _layer(gram=g)
    _assert_clear(info, "gram")
    indefinite = torch.tensor([[1.0, 2.0], [2.0, 1.0]], dtype=F64)  # eigenvalues 3, -1
    with pytest.raises(GramError) as info:
        LayerData(torch.ones(1, 2, dtype=F64), indefinite, num_tokens=2)
    _assert_clear(info, "positive semidefinite")


def test_non_symmetric_gram():
    g = _layer().gram.clone()
    g[0, 1] += 1.0
    with pytest.raises(GramError) as info:
        _layer(gram=g)
    _assert_clear(info, "symmetric")


def _rounding_indefinite_restoration():
    """G = diag(1, 1, 1, -1e-9): PSD up to rounding (accepted by LayerData), but its Cholesky fails undamped."""
    gram = torch.diag(torch.tensor([1.0, 1.0, 1.0, -1e-9], dtype=F64))
    layer = LayerData(torch.tensor([[1.0, -2.0, 3.0, 0.5]], dtype=F64), gram, num_tokens=10, damping=0.0)
    return FixedMaskRestoration(layer, torch.tensor([[True, False, False, True]]))


def test_exactly_singular_gram_solve_returns_a_minimizer():
    """Property: G = 2 ones(4, 4) (rank 1), damping 0: the solve returns finite weights at the undamped
    optimum (0 here: the kept columns reproduce the output), whichever of the many minimizers it picks."""
    layer = LayerData.from_inputs(torch.tensor([[1.0, -2.0, 3.0, 0.5]], dtype=F64), torch.ones(2, 4, dtype=F64),
                                  damping=0.0)
    sol = prunekit.solve(FixedMaskRestoration(layer, torch.tensor([[True, True, False, False]])),
                         backend="torch", dtype="float64")
    assert torch.isfinite(sol.weights).all() and "damping_used" in sol.stats
    assert sol.objective <= 1e-12 * layer.dense_energy()


def test_failed_factorization_escalates_damping_and_reports_it():
    """Property: when the undamped Cholesky fails, the damping escalates, is reported, and stays tiny."""
    f = _rounding_indefinite_restoration()
    sol = prunekit.solve(f, backend="torch", dtype="float64")
    assert 0 < sol.stats["damping_used"] < 1e-6
    assert torch.isfinite(sol.weights).all()
    assert sol.weights[0, 0] == pytest.approx(1.0)  # G diagonal: kept weights unchanged


def test_exhausted_escalation_raises_numerical_error():
    """Property: with max_damping_tries=0 the failed Cholesky is a NumericalError naming the fix."""
    with pytest.raises(NumericalError) as info:
        prunekit.solve(_rounding_indefinite_restoration(), backend="torch", dtype="float64", max_damping_tries=0)
    _assert_clear(info, "Cholesky", "damping")


def test_rank_deficient_layer_with_zero_damping_matches_lstsq():
    """Property: a random rank-deficient layer, damping 0, per-row masks: objective = lstsq optimum."""
    rng = np.random.default_rng(3)
    layer = random_layer(rng, 3, 8, conditioning="rank_deficient", damping=0.0)
    mask = torch.from_numpy(rng.random((3, 8)) < 0.7)
    sol = prunekit.solve(FixedMaskRestoration(layer, mask), backend="torch", dtype="float64")
    evals, evecs = np.linalg.eigh(layer.gram.numpy())
    x = (evecs * np.sqrt(np.clip(evals, 0, None))).T
    best = 0.0
    for i in range(3):
        s = mask[i].numpy()
        y = x @ layer.weight.numpy()[i]
        r = y - x[:, s] @ np.linalg.lstsq(x[:, s], y, rcond=None)[0] if s.any() else y
        best += 0.5 * float(r @ r)
    assert abs(sol.objective - best) <= 1e-8 * layer.dense_energy()


@pytest.mark.parametrize("ratio", [1.0, 1.5, -0.1, float("nan"), "0.5"])
def test_sparsity_outside_unit_interval(ratio):
    with pytest.raises(SparsityError) as info:
        Unstructured(ratio)
    _assert_clear(info, "ratio")


def test_nm_not_dividing_width():
    with pytest.raises(SparsityError) as info:
        MultipleRemoval(_layer(), NM(2, 4))  # n = 6
    _assert_clear(info, "2:4", "6")


@pytest.mark.parametrize("kw, words", [
    (dict(gram=torch.eye(5, dtype=F64)), ("gram", "6 x 6")),
    (dict(weight=torch.zeros(6, dtype=F64)), ("2-D",)),
    (dict(bias=torch.zeros(6, dtype=F64)), ("bias",)),
    (dict(num_tokens=0), ("num_tokens",)),
])
def test_shape_mismatch(kw, words):
    with pytest.raises(ShapeError) as info:
        _layer(**kw)
    msg = str(info.value)
    for w in words:
        assert w in msg
    if "bias" not in kw:
        _assert_clear(info)


def test_mask_shape_mismatch_in_restoration():
    with pytest.raises(ShapeError) as info:
        FixedMaskRestoration(_layer(), torch.ones(6, 3, dtype=torch.bool))
    _assert_clear(info, "mask")


def test_unknown_backend():
    f = MultipleRemoval(_layer(), Unstructured(0.5))
    with pytest.raises(NoSolverError) as info:
        prunekit.solve(f, backend="tensorflow")
    _assert_clear(info, "tensorflow")


def test_backend_without_solver_lists_the_able_ones():
    f = MultipleRemoval(_layer(), Unstructured(0.5))
    with pytest.raises(NoSolverError, match="Backends that can solve this problem: .*torch"):
        prunekit.solve(f, backend="bruteforce")


def test_unknown_option():
    f = MultipleRemoval(_layer(), Unstructured(0.5))
    with pytest.raises(TypeError, match="valid options"):
        prunekit.solve(f, backend="torch", tolerance=1e-3)
