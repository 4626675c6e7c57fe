"""C14 — sequential OBS with exact downdates equals Solution M in any order.

Statement: removing a row's pruned weights one at a time with the single-removal OBS update and the exact
inverse-Hessian downdate ``Hinv -= Hinv_{:,p} Hinv_{p,:} / Hinv_pp`` reproduces MRP Solution M for any order.
Assumptions: H positive definite.
Citation: methods.md §6.2 and §11 C14 (OBS: Hassibi & Stork 1993; MRP arXiv 2410.15567).
Claim id: C14.
"""

import itertools

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from prunekit.verification.claims import get_claim
from prunekit.verification.claims.c13_mrp_solution_s import solution_m
from prunekit.verification.claims.c14_sequential_obs import sequential_obs

CLAIM = get_claim("C14")


@given(seed=st.integers(0, 2**32 - 1))
def test_claim_c14_holds(seed):
    """Property: sorted, reversed and random removal orders all reproduce the solver's Solution M."""
    err = CLAIM.check(np.random.default_rng(seed))
    assert err <= CLAIM.tolerance, f"C14 error {err:.3g} > {CLAIM.tolerance}"


@given(seed=st.integers(0, 2**32 - 1))
def test_every_order_of_three_removals_agrees(seed):
    """Property: all 3! orders of removing 3 weights give the same weights, equal to the closed-form Solution M."""
    rng = np.random.default_rng(seed)
    n = 6
    a = rng.standard_normal((n, n))
    hinv = a @ a.T + 0.3 * np.eye(n)
    w = rng.standard_normal(n)
    p = np.sort(rng.choice(n, 3, replace=False))
    mask = np.zeros(n, dtype=bool)
    mask[p] = True
    ref = solution_m(w, mask, hinv)
    for order in itertools.permutations(p):
        assert np.allclose(sequential_obs(w, order, hinv), ref, atol=1e-9 * max(1.0, np.abs(w).max()))
