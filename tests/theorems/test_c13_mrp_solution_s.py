"""C13 — MRP Solution S is feasible but never better than Solution M.

Statement: Solution S (summed single-removal OBS updates, then zeroing P) is feasible, its loss is >= that of
Solution M on the same mask, and its estimate ``sum_p w_p^2/(2 [H^{-1}]_pp)`` equals the true loss iff
``H^{-1}_PP`` is diagonal (then S = M); in general the estimate bounds L* neither from above nor from below.
Assumptions: H positive definite.
Citation: methods.md §6.2 and §11 C13; Zhao et al. arXiv 2410.15567, Eq. 14.
Claim id: C13.
"""

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from prunekit.verification import strategies as pst
from prunekit.verification.claims import get_claim
from prunekit.verification.claims.c13_mrp_solution_s import check_instance, estimate_gap_for, solution_m

CLAIM = get_claim("C13")
PD = ("well", "correlated", "ill")


def as_mask(n, idx):
    mask = np.zeros(n, dtype=bool)
    mask[idx] = True
    return mask


@given(pst.layers_and_specs(m=st.integers(2, 5), n=st.sampled_from((4, 8, 12)), kinds=("unstructured", "nm"), max_m=4,
                            conditionings=pst.CONDITIONINGS),
       pst.gaussian_arrays(8), pst.index_subsets(8, 2, 7), pst.pd_grams(8, conditioning=PD))
def test_claim_c13_holds(instance, w, pruned, g):
    """Property: S is feasible, never beats M, and its estimate is exact when H^{-1}_PP is diagonal."""
    err = check_instance(*instance, w, as_mask(8, pruned), g.numpy())
    assert err <= CLAIM.tolerance, f"C13 error {err:.3g} > {CLAIM.tolerance}"


@given(st.integers(3, 9).flatmap(lambda n: st.tuples(pst.gaussian_arrays(n), pst.index_subsets(n, 2, 2),
                                                     pst.pd_grams(n, conditioning=PD))))
def test_solution_s_loss_at_least_solution_m(instance):
    """Property: for random SPD H^{-1} and random P, the true S loss >= the M loss = 1/2 w_P (Hinv_PP)^{-1} w_P^T."""
    w, pruned, hinv = instance
    est, true_s, true_m = estimate_gap_for(w, as_mask(w.size, pruned), hinv.numpy())
    assert true_s >= true_m * (1 - 1e-10)


def test_estimate_is_neither_upper_nor_lower_bound():
    """Property: the 2x2 example A = [[1, r], [r, 1]], w_P = (1, 1) gives L* = 1/(1+r) vs the estimate 1, on both sides."""
    w = np.ones(2)
    for r, side in ((0.5, "above"), (-0.5, "below")):
        hinv = np.array([[1.0, r], [r, 1.0]])
        l_star = 0.5 * w @ np.linalg.solve(hinv, w)
        est = float(np.sum(w ** 2 / (2 * np.diag(hinv))))
        assert np.isclose(l_star, 1 / (1 + r))
        assert (est > l_star) if side == "above" else (est < l_star)
    full = np.array([[1.0, 0.5, 0.2], [0.5, 1.0, 0.1], [0.2, 0.1, 1.0]])
    assert np.allclose(solution_m(np.array([1.0, 1.0, 1.0]), np.array([True, True, False]), full)[:2], 0.0)
