"""C9 -- the prox of tau ||.||_1 is soft thresholding; the FISTAPruner gradient at W* = 0 is -W X X*^T.

Statement: argmin_x 1/2 (x - v)^2 + tau |x| = sign(v) max(|v| - tau, 0); for f(W*) = 1/2 ||W* X* - W X||^2,
grad f(0) = -W X X*^T = -C.
Assumptions: tau >= 0; X, X* real with the same number of tokens.
Citation: methods.md §5.2 and §11 (claim C9); Beck & Teboulle (2009).
Claim id: C9.
"""

import torch
from hypothesis import given
from hypothesis import strategies as st

from prunekit.solvers.torch.prox import project_n_m, project_topk, prox_l1
from prunekit.formulations.sparsity import NM, Unstructured
from prunekit.verification import strategies as pst
from prunekit.verification.claims import get_claim
from prunekit.verification.claims.c09_soft_threshold_prox import gradient_at_zero_error_for, grid_prox, prox_error

CLAIM = get_claim("C9")


@given(pst.gaussian_arrays(10, scale=2.0, ties=None), st.floats(0.0, 2.0),
       pst.calibrated_layers(m=st.integers(1, 4), n=st.integers(3, 8), conditionings=pst.CONDITIONINGS,
                             error_correction=True))
def test_claim_c09_holds_on_random_instances(v, tau, cal):
    """Property: soft thresholding matches the refined 1-D grid minimizer and grad f(0) = -W X X*^T."""
    assert prox_error(v, tau) <= CLAIM.tolerance
    assert gradient_at_zero_error_for(cal.layer, cal.inputs, cal.inputs_star) <= CLAIM.tolerance


@given(v=st.floats(-50, 50, allow_nan=False), tau=st.floats(0, 20, allow_nan=False))
def test_prox_scalar_against_grid(v, tau):
    """Property: for any scalar v and tau >= 0 the prox equals the grid minimizer within 1e-6."""
    got = float(prox_l1(torch.tensor([v], dtype=torch.float64), tau)[0])
    assert abs(got - grid_prox(v, tau)) <= 1e-6 * max(1.0, abs(v))


@given(pst.gaussian_arrays((4, 8), ties=None), pst.gaussian_arrays((4, 8), ties=None))
def test_prox_is_firmly_nonexpansive_and_pure(a, b):
    """Property: prox_l1 leaves its input unchanged and is 1-Lipschitz; projections obey their specs (with ties)."""
    a, b = torch.from_numpy(a), torch.from_numpy(b)
    a0 = a.clone()
    pa, pb = prox_l1(a, 0.3), prox_l1(b, 0.3)
    assert torch.equal(a, a0)
    assert float(torch.linalg.norm(pa - pb)) <= float(torch.linalg.norm(a - b)) + 1e-12
    w, mask = project_n_m(a, NM(2, 4))
    assert NM(2, 4).violations(mask) == 0 and torch.equal(w, a * mask)
    w, mask = project_topk(a, Unstructured(0.5))
    assert Unstructured(0.5).violations(mask) == 0
    for i in range(a.shape[0]):  # per-row threshold: every kept |w| beats every pruned |w| of its row
        assert float(w[i].abs()[mask[i]].min()) >= float(a[i].abs()[~mask[i]].max())
