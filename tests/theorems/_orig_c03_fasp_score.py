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
from prunekit.verification.claims import assert_claim
from prunekit.verification.claims.c03_fasp_score import fasp_vs_optimum
from prunekit.verification.toy import CONDITIONINGS, random_layer


@given(seed=st.integers(0, 2**32 - 1))
def test_claim_c03_holds(seed):
    """Property: the claim's check passes (score identity exact, no beating of the optimum)."""
    assert assert_claim("C3", np.random.default_rng(seed)) <= 1e-12


@given(seed=st.integers(0, 2**32 - 1), cond=st.sampled_from(CONDITIONINGS))
def test_fasp_score_is_column_sum_of_wanda(seed, cond):
    """Property: fasp_column equals the column sum of the Wanda score matrix."""
    layer = random_layer(np.random.default_rng(seed), 3, 6, conditioning=cond)
    torch.testing.assert_close(scores.fasp_column(layer), scores.wanda(layer).sum(dim=0), rtol=1e-13, atol=0.0)


@given(seed=st.integers(0, 2**32 - 1))
def test_fasp_gap_is_at_least_one(seed):
    """Property: FASP error / optimum >= 1 (exact and damped restoration), and the optimum is finite."""
    r = fasp_vs_optimum(np.random.default_rng(seed))
    assert np.isfinite(r["optimum"])
    tol = 1e-10 * r["energy"]
    assert r["fasp"] >= r["optimum"] - tol
    assert r["fasp_solver"] >= r["fasp"] - tol  # damping can only cost accuracy against the exact restoration
