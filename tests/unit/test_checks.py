"""The checker helpers and tolerances: they pass on correct inputs and raise VerificationError otherwise."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import prunekit
from prunekit.errors import VerificationError
from prunekit.formulations import Guarantee, NM, Unstructured
from prunekit.solvers.solution import Solution
from prunekit.verification import cases
from prunekit.verification.checks import (
    assert_kkt,
    assert_matches_reference,
    assert_reduction_equivalent,
    assert_relaxation_bound,
    assert_spec_obeyed,
    stationarity_violations,
)
from prunekit.verification.tolerances import Tolerance, for_dtype, objective_error, objectives_close, weights_close


def test_for_dtype_orders_precisions_and_backends():
    """Property: float64 < float32 < bfloat16 tolerances; cvxpy references loosen float64."""
    t64, t32, tbf = for_dtype("float64"), for_dtype(torch.float32), for_dtype("bfloat16")
    assert t64.rtol < t32.rtol < tbf.rtol and t64.kkt < t32.kkt
    assert for_dtype("float64", backend="cvxpy").rtol > t64.rtol
    with pytest.raises(ValueError, match="dtype"):
        for_dtype("int8")


def test_objective_and_weight_comparisons():
    t = Tolerance(1e-9, 1e-6)
    assert objectives_close(1.0 + 5e-7, 1.0, t) and not objectives_close(1.0 + 5e-6, 1.0, t)
    assert objectives_close(1e-12, 0.0, t, scale=10.0)  # absolute part scales with the problem
    assert not objectives_close(float("nan"), 1.0, t)
    assert objective_error(2.0, 1.0) == 1.0 and math.isinf(objective_error(float("inf"), 1.0))
    a = torch.ones(2, 2)
    assert weights_close(a, a.double(), t) and not weights_close(a + 1e-3, a, t)


def _restoration_solution():
    f, exp = cases.nm_identity(kind="restoration")
    return f, exp, prunekit.solve(f, backend="torch", dtype="float64")


def test_assert_spec_obeyed():
    spec = NM(2, 4)
    mask = spec.project(torch.randn(2, 8))
    assert_spec_obeyed(spec, mask)
    with pytest.raises(VerificationError, match="2:4"):
        assert_spec_obeyed(spec, torch.ones(2, 8, dtype=torch.bool))
    with pytest.raises(VerificationError, match="not zero off the mask"):
        assert_spec_obeyed(spec, Solution(weights=torch.ones(2, 8), mask=mask))


def test_assert_kkt_passes_at_optimum_and_fails_off_it():
    f, exp, sol = _restoration_solution()
    assert_kkt(f, sol, for_dtype("float64"))
    off = sol.replace(weights=sol.weights + 0.1 * sol.mask)
    with pytest.raises(VerificationError, match="stationarity"):
        assert_kkt(f, off, for_dtype("float64"))


def test_stationarity_variants_pass_when_one_holds():
    """Property: 'stationarity' and 'stationarity_undamped' are one certificate; 'bias_stationarity' another."""
    assert stationarity_violations({"stationarity": 0.1, "stationarity_undamped": 1e-12}, 1e-8) == {}
    assert stationarity_violations({"stationarity": 0.1, "bias_stationarity": 0.0}, 1e-8) == {"stationarity": 0.1}


def test_assert_matches_reference():
    f, exp, sol = _restoration_solution()
    ref = sol.replace(objective=exp["objective"])
    assert assert_matches_reference(sol, ref, for_dtype("float64"), compare_weights=True) < 1e-9
    worse = sol.replace(objective=exp["objective"] * 1.01 + 1e-3)
    with pytest.raises(VerificationError, match="differs from reference"):
        assert_matches_reference(worse, ref, for_dtype("float64"))
    other_mask = sol.replace(mask=~sol.mask)
    with pytest.raises(VerificationError, match="mask"):
        assert_matches_reference(other_mask, ref, for_dtype("float64"))
    assert_matches_reference(other_mask, ref, for_dtype("float64"), ties=True)


def test_assert_relaxation_bound():
    assert assert_relaxation_bound(0.9, 1.0) == pytest.approx(0.1)
    with pytest.raises(VerificationError, match="not a valid bound"):
        assert_relaxation_bound(1.1, 1.0)
    assert_relaxation_bound(1.1, 1.0, sense="max")


class _Identity:
    """An EXACT do-nothing reduction; and a 'cheating' HEURISTIC one that prunes differently."""

    guarantee = Guarantee.EXACT

    def accepts(self, f):
        return True

    def apply(self, f):
        return f, None

    def invert(self, solution, inverse):
        return solution


class _Worse(_Identity):
    def invert(self, solution, inverse):
        mask = solution.mask.roll(1, dims=1)
        w = solution.weights.roll(1, dims=1) * mask
        return solution.replace(weights=w, mask=mask)


def test_assert_reduction_equivalent():
    """Property: an exact identity reduction passes; an EXACT reduction whose inverse is worse fails."""
    f, _ = cases.diagonal_g_mrp(kind="mip")
    out = assert_reduction_equivalent(f, _Identity(), backend="bruteforce", reference_backend="bruteforce")
    assert out["inverted"] == pytest.approx(out["original"])
    with pytest.raises(VerificationError, match="EXACT"):
        assert_reduction_equivalent(f, _Worse(), backend="bruteforce", reference_backend="bruteforce")
    assert Unstructured(0.5).violations(_Worse().invert(prunekit.solve(f, backend="bruteforce"), None).mask) == 0


@given(st.data(), st.sampled_from(["float64", "float32"]))
def test_restoration_meets_kkt_and_reference_under_dtype_tolerances(data, dtype):
    """Property: on strategy-drawn layers (cond up to ~1e9) and feasible masks, the torch restoration
    satisfies assert_kkt and matches the SciPy twin within ``for_dtype(dtype)``: the tolerances are
    calibrated for the whole conditioning range the strategies reach."""
    from prunekit.formulations import FixedMaskRestoration
    from prunekit.verification import strategies as pst

    layer, spec = data.draw(pst.layers_and_specs())
    f = FixedMaskRestoration(layer, data.draw(pst.keep_masks(spec, layer.shape)))
    sol = prunekit.solve(f, backend="torch", dtype=dtype)
    assert_kkt(f, sol, for_dtype(dtype))
    ref = prunekit.solve(f, backend="scipy")
    assert_matches_reference(sol, ref, for_dtype(dtype, backend="scipy"), scale=layer.dense_energy())
