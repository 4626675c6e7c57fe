"""C11 -- W* = 0 is the lasso optimum iff lambda >= lambda_max = max_ij |(W X X*^T)_ij|.

Statement: 0 in grad f(0) + lambda d||0||_1 = -C + lambda [-1, 1]^{m x n} iff lambda >= max |C_ij|; FISTA therefore
returns exactly 0 at 1.001 lambda_max and a nonzero point that beats W = 0 at 0.999 lambda_max.
Assumptions: C = W X X*^T (error-corrected or not); FISTA from the dense weight.
Citation: methods.md §5.3 and §11 (claim C11).
Claim id: C11.
"""

import torch
from hypothesis import given, settings

from prunekit.verification import strategies as pst
from prunekit.verification.claims import get_claim
from prunekit.verification.claims.c11_lasso_zero_threshold import check_instance

CLAIM = get_claim("C11")


@settings(max_examples=10)
@given(pst.lasso_problems(iterations=500))
def test_claim_c11_holds_on_random_instances(f):
    """Property: exact zero at 1.001 lambda_max, a better nonzero point at 0.999 lambda_max."""
    assert check_instance(f) <= CLAIM.tolerance


@given(pst.lasso_problems(iterations=1))
def test_lambda_max_is_the_kkt_threshold(f):
    """Property: lambda_max() = max|grad f(0)|, so W = 0 satisfies the lasso KKT conditions exactly at lambda_max."""
    g0 = f.grad(torch.zeros(f.layer.shape, dtype=torch.float64))
    assert abs(float(g0.abs().max()) - f.lambda_max()) <= 1e-12 * f.lambda_max()
    assert torch.allclose(-g0, f.cross(), rtol=0, atol=1e-12 * f.lambda_max())
