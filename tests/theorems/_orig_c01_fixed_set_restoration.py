"""C1 — fixed-set restoration is least squares.

Statement: with a kept set S shared by all rows, ``W'_S = Y X_S^T (X_S X_S^T)^{-1}``, ``W'_P = 0`` is the unique
least-squares optimum of ``1/2 ||W' X - W X||^2`` and equals ``lstsq(X_S^T, Y^T)``; per-row kept sets separate
into independent row problems (fact 1) with the same characterization.
Assumptions: X has full row rank on S (Gaussian X with N = 3n tokens); damping 0.
Citation: methods.md §1 fact 2 and §11 C1 (FASP arXiv 2501.09412, SPAP arXiv 2505.03373).
Claim id: C1.
"""

import numpy as np
import torch
from hypothesis import given
from hypothesis import strategies as st

from prunekit.formulations.restoration import FixedMaskRestoration
from prunekit.solvers import solve
from prunekit.verification.claims import get_claim
from prunekit.verification.claims.c01_fixed_set_restoration import draw

CLAIM = get_claim("C1")


@given(seed=st.integers(0, 2**32 - 1))
def test_claim_c1_holds(seed):
    """Property: the torch restoration equals lstsq(X_S^T, Y^T), is zero on P, and no perturbation lowers it."""
    err = CLAIM.check(np.random.default_rng(seed))
    assert err <= CLAIM.tolerance, f"C1 error {err:.3g} > {CLAIM.tolerance}"


@given(seed=st.integers(0, 2**32 - 1))
def test_per_row_kept_sets_are_row_lstsq(seed):
    """Property: with per-row kept sets, each restored row equals lstsq(X_{S_i}^T, X^T w_i^T) for its own S_i."""
    rng = np.random.default_rng(seed)
    layer, x, w, mask = draw(rng, shared=False)
    sol = solve(FixedMaskRestoration(layer, torch.from_numpy(mask)), backend="torch", dtype="float64")
    w_hat = sol.weights.numpy()
    for i in range(w.shape[0]):
        s = mask[i]
        assert np.all(w_hat[i, ~s] == 0.0)
        if s.any():
            ref = np.linalg.lstsq(x[:, s], x @ w[i], rcond=None)[0]
            assert np.allclose(w_hat[i, s], ref, rtol=1e-8, atol=1e-8 * max(1.0, np.abs(ref).max()))
    assert sol.residuals["stationarity"] < 1e-10


@given(seed=st.integers(0, 2**32 - 1))
def test_restoration_never_worse_than_plain_masking(seed):
    """Property: the restored error is <= the error of simply zeroing the pruned weights (M ⊙ W)."""
    layer, _, w, mask = draw(np.random.default_rng(seed), shared=bool(seed % 2))
    sol = solve(FixedMaskRestoration(layer, torch.from_numpy(mask)), backend="torch", dtype="float64")
    masked = layer.reconstruction_error(torch.from_numpy(np.where(mask, w, 0.0)))
    assert sol.objective <= masked * (1 + 1e-12) + 1e-12
