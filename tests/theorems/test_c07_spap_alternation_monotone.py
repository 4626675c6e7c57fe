"""C7 -- with rho fixed, SPAP's alternating exact steps never increase the penalized objective.

Statement: for fixed rho, the s-step (k smallest c_j, the exact LP optimum) and the W-step (closed form) are exact
block minimizations of (P_rho), so the objective is non-increasing over 30 alternations.
Assumptions: kappa = 1 (no continuation); damped G positive definite.
Citation: methods.md §3.3 and §11 (claim C7).
Claim id: C7.
"""

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

import prunekit
from prunekit.verification import strategies as pst
from prunekit.verification.claims import get_claim
from prunekit.verification.claims.c07_spap_alternation_monotone import (
    PENALTY_WEIGHTS, check_instance, fixed_rho_problem, interleaved_trace, worst_increase,
)

CLAIM = get_claim("C7")
FIXED_RHO_PROBLEMS = st.builds(
    fixed_rho_problem,
    pst.toy_layers(m=st.integers(3, 6), n=st.integers(5, 10), conditionings=pst.CONDITIONINGS),
    st.sampled_from(PENALTY_WEIGHTS),
    st.floats(-3.0, 1.0).map(lambda e: 10.0**e),
)


@given(FIXED_RHO_PROBLEMS)
def test_claim_c07_holds_on_random_instances(f):
    """Property: the interleaved s-step/W-step trace of the torch solver never goes up."""
    assert check_instance(f) <= CLAIM.tolerance


@given(FIXED_RHO_PROBLEMS)
def test_scipy_twin_is_monotone_and_agrees(f):
    """Property: the scipy twin (linprog + stacked lstsq) is monotone too and gives the same trace as torch."""
    ref = prunekit.solve(f, backend="scipy")
    got = prunekit.solve(f, backend="torch", dtype="float64")
    t_ref, t_got = interleaved_trace(ref), interleaved_trace(got)
    assert worst_increase(t_ref) <= 1e-12
    assert np.allclose(t_ref, t_got, rtol=1e-9, atol=0)


@given(cost=st.lists(st.floats(0.0, 10.0, allow_nan=False), min_size=3, max_size=12, unique=True), data=st.data())
def test_s_step_is_the_lp_optimum(cost, data):
    """Property: the s-step's pruned set attains the optimum of the LP over {0 <= s <= 1, 1^T s = k}."""
    import torch
    from scipy.optimize import linprog

    from prunekit.formulations.sparsity import Channels
    from prunekit.solvers.reference.scipy_lp import HIGHS_TIGHT
    from prunekit.solvers.torch.penalty import s_step

    c = np.array(cost)
    k = data.draw(st.integers(1, len(c) - 1))
    pruned = s_step(torch.from_numpy(c), Channels(count=k), len(c)).numpy()
    assert pruned.sum() == k
    lp = linprog(c, A_eq=np.ones((1, len(c))), b_eq=[k], bounds=[(0, 1)] * len(c), method="highs",
                 options=HIGHS_TIGHT)  # HiGHS' default tolerances accept a vertex 1e-8 above the optimum
    assert abs(c[pruned].sum() - lp.fun) <= 1e-9 * max(1.0, abs(lp.fun))
