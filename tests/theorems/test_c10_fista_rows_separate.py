"""C10 -- the FISTAPruner lasso separates over rows.

Statement: 1/2 ||W* X* - W X||^2 + lambda ||W*||_1 = sum_i [1/2 ||w*_i X* - w_i X||^2 + lambda ||w*_i||_1], so FISTA on
the rows one at a time gives the same iterates as the joint (batched) solve, including the per-row early stop.
Assumptions: same G*, C rows; pure-lasso mode (adaptive lambda couples the rows through E_round/E_total).
Citation: methods.md §5.1 and §11 (claim C10); FISTAPruner arXiv 2408.03728.
Claim id: C10.
"""

import torch
from hypothesis import given
from hypothesis import strategies as st

import prunekit
from prunekit.verification import strategies as pst
from prunekit.verification.claims import get_claim
from prunekit.verification.claims.c10_fista_rows_separate import check_instance

CLAIM = get_claim("C10")


@given(pst.lasso_problems(iterations=st.integers(20, 199), eps=st.sampled_from((0.0, 1e-8, 1e-4))))
def test_claim_c10_holds_on_random_instances(f):
    """Property: per-row FISTA solutions stacked equal the joint FISTA solution (and objectives add up)."""
    assert check_instance(f) <= CLAIM.tolerance


@given(pst.lasso_problems(iterations=100), st.integers(1, 3))
def test_row_batches_equal_joint_solve(f, batch):
    """Property: the row_batch option (rows processed in chunks) does not change the result."""
    joint = prunekit.solve(f, backend="torch", dtype="float64")
    batched = prunekit.solve(f, backend="torch", dtype="float64", row_batch=batch)
    assert torch.allclose(joint.weights, batched.weights, rtol=0, atol=1e-13 * float(joint.weights.abs().max() + 1))
