"""C3 — the FASP score is Wanda summed over the column; FASP never beats the brute-force optimum.

Statement: S_j = ||W_:,j||_1 ||Z_j||_2 = sum_i |W_ij| ||Z_j||_2, and FASP's kept set with the C1
least-squares restoration has a reconstruction error >= the best kept set of the same size.
Assumptions: one shared kept set (structured), restoration on G = Z Z^T (damped in the solver).
Citation: FASP, arXiv 2501.09412 (methods.md §4.2, §11 C3).  Claim id: C3.
"""

import numpy as np
import torch
from hypothesis import given
from hypothesis import strategies as st

from prunekit.formulations import scores
from prunekit.verification import strategies as pst
from prunekit.verification.claims import get_claim
from prunekit.verification.claims.c03_fasp_score import check_instance, fasp_vs_optimum_for

CLAIM = get_claim("C3")
CHANNEL_INSTANCES = pst.layers_and_specs(m=st.integers(2, 6), n=st.integers(4, 9), kinds=("channels",))


@given(CHANNEL_INSTANCES)
def test_claim_c03_holds(instance):
    """Property: the claim's check passes (score identity exact, no beating of the optimum)."""
    assert check_instance(*instance) <= CLAIM.tolerance


@given(pst.toy_layers(m=3, n=6, conditionings=pst.CONDITIONINGS) | pst.tied_layers(m=3, n=6))
def test_fasp_score_is_column_sum_of_wanda(layer):
    """Property: fasp_column equals the column sum of the Wanda score matrix (every conditioning, tied scores)."""
    torch.testing.assert_close(scores.fasp_column(layer), scores.wanda(layer).sum(dim=0), rtol=1e-13, atol=0.0)


@given(CHANNEL_INSTANCES)
def test_fasp_gap_is_at_least_one(instance):
    """Property: FASP error / optimum >= 1 (exact and damped restoration), and the optimum is finite."""
    r = fasp_vs_optimum_for(*instance)
    assert np.isfinite(r["optimum"])
    tol = 1e-10 * r["energy"]
    assert r["fasp"] >= r["optimum"] - tol
    assert r["fasp_solver"] >= r["fasp"] - tol  # damping can only cost accuracy against the exact restoration
