"""C16 — SparseGPT's lazy batching is exact.

Statement: for 2:4 sparsity the SparseGPT-pruned weight is identical for block sizes B in {4, 8, 128} (and equal
to the un-batched sweep), every group of 4 has exactly 2 zeros, and ``U_jj^2 = [(H_FF)^{-1}]_jj`` for
F = {j, ..., n-1}, where ``H^{-1} = U^T U`` with U upper triangular.
Assumptions: H = G + lambda I positive definite; B a multiple of M.
Citation: methods.md §1 fact 4, §8.3 and §11 C16; IST-DASLab/sparsegpt ``fasterprune``.
Claim id: C16.
"""

import torch
from hypothesis import given
from hypothesis import strategies as st

from prunekit.verification import strategies as pst
from prunekit.verification.claims import get_claim
from prunekit.verification.claims.c16_sparsegpt_lazy_batching import check_instance, trailing_identity_error

CLAIM = get_claim("C16")


@given(pst.toy_layers(m=st.integers(2, 5), n=st.sampled_from((8, 12, 16, 24)), conditionings=pst.CONDITIONINGS)
       | pst.tied_layers(m=st.integers(2, 5), n=st.sampled_from((8, 12))))
def test_claim_c16_holds(layer):
    """Property: the 2:4 result does not depend on B and matches the un-batched NumPy sweep (tied scores too)."""
    err = check_instance(layer)
    assert err <= CLAIM.tolerance, f"C16 error {err:.3g} > {CLAIM.tolerance}"


@given(pst.pd_grams(st.integers(2, 10), conditioning=("well", "correlated")))
def test_trailing_inverse_identity(h):
    """Property: U_jj^2 = [(H_FF)^{-1}]_jj for every j, and (H_FF)^{-1} = U_FF^T U_FF, for drawn SPD H."""
    assert trailing_identity_error(h) < 1e-9
    u = torch.linalg.cholesky(torch.linalg.inv(h), upper=True)
    for j in range(h.shape[0]):
        assert torch.allclose(u[j:, j:].T @ u[j:, j:], torch.linalg.inv(h[j:, j:]), rtol=1e-8, atol=1e-10)
