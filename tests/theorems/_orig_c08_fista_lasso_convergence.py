"""C8 -- FISTA converges to the lasso optimum at the Beck-Teboulle rate.

Statement: for F(W) = 1/2 ||W X* - W0 X||_F^2 + lambda ||W||_1, FISTA with step 1/L (L = lambda_max(X* X*^T))
from W_0 satisfies F(W_k) - F* <= 2 L ||W_0 - W*||_F^2 / (k+1)^2 for every k and converges to the optimum.
Assumptions: lambda >= 0; reference optimum from L-BFGS-B on the split W = W+ - W- (and CVXPY when installed).
Citation: Beck & Teboulle (2009), Thm 4.4; methods.md §5.2 and §11 (claim C8); FISTAPruner arXiv 2408.03728.
Claim id: C8.
"""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import prunekit
from prunekit.verification.claims import get_claim
from prunekit.verification.claims.c08_fista_lasso_convergence import draw_lasso


@settings(max_examples=10)
@given(seed=st.integers(0, 2**32 - 1))
def test_claim_c08_holds_on_random_instances(seed):
    """Property: the rate bound holds at every k and FISTA's limit matches the L-BFGS-B optimum."""
    claim = get_claim("C8")
    assert claim.check(np.random.default_rng(seed)) <= claim.tolerance


@pytest.mark.reference
@settings(max_examples=5)
@given(seed=st.integers(0, 2**32 - 1))
def test_fista_matches_cvxpy_optimum(seed):
    """Property: FISTA's objective after 3000 steps equals the CVXPY (interior-point) optimum to 1e-7."""
    f = draw_lasso(np.random.default_rng(seed))
    got = prunekit.solve(f, backend="torch", dtype="float64")
    ref = prunekit.solve(f, backend="cvxpy")
    assert abs(got.objective - ref.objective) <= 1e-7 * max(1.0, abs(ref.objective))
    assert got.residuals["lasso_kkt"] <= 1e-6


@settings(max_examples=10)
@given(seed=st.integers(0, 2**32 - 1))
def test_objective_trace_ends_at_reported_objective(seed):
    """Property: the recorded F(W_K) equals the formulation's lasso objective of the returned weights."""
    from dataclasses import replace

    f = replace(draw_lasso(np.random.default_rng(seed)), K=50)
    sol = prunekit.solve(f, backend="torch", dtype="float64")
    assert len(sol.extras["objective_trace"]) == 50
    assert abs(sol.extras["objective_trace"][-1] - sol.objective) <= 1e-9 * max(1.0, abs(sol.objective))
