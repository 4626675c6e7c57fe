"""C11 -- W* = 0 is the lasso optimum iff lambda >= lambda_max = max_ij |(W X X*^T)_ij|.

Statement: 0 in grad f(0) + lambda d||0||_1 = -C + lambda [-1, 1]^{m x n} iff lambda >= max |C_ij|; FISTA therefore
returns exactly 0 at 1.001 lambda_max and a nonzero point that beats W = 0 at 0.999 lambda_max.
Assumptions: C = W X X*^T (error-corrected or not); FISTA from the dense weight.
Citation: methods.md §5.3 and §11 (claim C11).
Claim id: C11.
"""

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from prunekit.verification.claims import get_claim
from prunekit.verification.claims.c08_fista_lasso_convergence import draw_lasso


@settings(max_examples=10)
@given(seed=st.integers(0, 2**32 - 1))
def test_claim_c11_holds_on_random_instances(seed):
    """Property: exact zero at 1.001 lambda_max, a better nonzero point at 0.999 lambda_max."""
    claim = get_claim("C11")
    assert claim.check(np.random.default_rng(seed)) <= claim.tolerance


@given(seed=st.integers(0, 2**32 - 1))
def test_lambda_max_is_the_kkt_threshold(seed):
    """Property: lambda_max() = max|grad f(0)|, so W = 0 satisfies the lasso KKT conditions exactly at lambda_max."""
    f = draw_lasso(np.random.default_rng(seed), iterations=1)
    g0 = f.grad(torch.zeros(f.layer.shape, dtype=torch.float64))
    assert abs(float(g0.abs().max()) - f.lambda_max()) <= 1e-12 * f.lambda_max()
    assert torch.allclose(-g0, f.cross(), rtol=0, atol=1e-12 * f.lambda_max())
