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

from prunekit.verification import strategies as pst
from prunekit.verification.claims import get_claim
from prunekit.verification.claims.c13_mrp_solution_s import solution_m
from prunekit.verification.claims.c14_sequential_obs import check_instance, sequential_obs

CLAIM = get_claim("C14")


@st.composite
def obs_instances(draw):
    """(layer, unstructured or N:M spec, a removal order: a permutation of range(n))."""
    layer, spec = draw(pst.layers_and_specs(m=st.integers(2, 5), n=st.sampled_from((4, 8, 12)),
                                            kinds=("unstructured", "nm"), max_m=4, conditionings=pst.CONDITIONINGS))
    return layer, spec, draw(st.permutations(range(layer.in_features)))


@given(obs_instances())
def test_claim_c14_holds(instance):
    """Property: sorted, reversed and drawn removal orders all reproduce the solver's Solution M."""
    err = check_instance(*instance)
    assert err <= CLAIM.tolerance, f"C14 error {err:.3g} > {CLAIM.tolerance}"


@given(pst.pd_grams(6, conditioning=("well", "correlated")), pst.gaussian_arrays(6), pst.index_subsets(6, 3, 3))
def test_every_order_of_three_removals_agrees(hinv, w, p):
    """Property: all 3! orders of removing 3 weights give the same weights, equal to the closed-form Solution M."""
    hinv = hinv.numpy()
    mask = np.zeros(6, dtype=bool)
    mask[p] = True
    ref = solution_m(w, mask, hinv)
    for order in itertools.permutations(p):
        assert np.allclose(sequential_obs(w, order, hinv), ref, atol=1e-9 * max(1.0, np.abs(w).max()))
