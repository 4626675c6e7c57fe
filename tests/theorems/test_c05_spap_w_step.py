"""C5 -- the SPAP W-step is a stacked least-squares solve and converges to the C1 restoration at rate O(1/rho).

Statement: for a fixed pruned set P and D = diag(s * omega), W(rho) = W0 G (G + rho D)^{-1} minimizes
1/2 ||(W - W0) Z||^2 + rho/2 ||W D^{1/2}||^2 (Z Z^T = G, the damped Gram), i.e. equals lstsq on
[Z^T; sqrt(rho) D^{1/2}] vs [Y^T; 0]; and ||W(rho) - W_inf|| = O(1/rho) with W_inf the exact restoration on S.
Assumptions: G + lambda I positive definite (damping > 0); omega_j > 0 on P.
Citation: methods.md §3.3 and §11 (claim C5); SPAP, arXiv 2505.03373 (update rules derived).
Claim id: C5.
"""

import numpy as np
import torch
from hypothesis import given
from hypothesis import strategies as st

from prunekit.verification import strategies as pst
from prunekit.verification.claims import get_claim
from prunekit.verification.claims.c05_spap_w_step import (
    PENALTY_WEIGHTS, RHO_GRID, check_instance, make_instance, rho_errors,
)

CLAIM = get_claim("C5")


@st.composite
def w_step_instances(draw):
    """(PenaltyRelaxation, pruned indicator) with max(1, n // 3) pruned channels of a drawn layer (every
    conditioning: the damped G is positive definite even for ill-conditioned or rank-deficient inputs)."""
    layer = draw(pst.toy_layers(m=st.integers(3, 6), n=st.integers(5, 10), conditionings=pst.CONDITIONINGS))
    n = layer.in_features
    k = max(1, n // 3)
    return make_instance(layer, draw(st.sampled_from(PENALTY_WEIGHTS)), draw(pst.index_subsets(n, k, k)))


@given(w_step_instances(), st.floats(-2.0, 3.0))
def test_claim_c05_holds_on_random_instances(instance, log_rho):
    """Property: the W-step matches stacked lstsq and rho*||W(rho) - W_inf|| has converged at rho = 1e6 tr(G)/f."""
    assert check_instance(*instance, 10.0**log_rho) <= CLAIM.tolerance


@given(w_step_instances())
def test_log_log_slope_is_minus_one(instance):
    """Property: log ||W(rho) - W_inf|| against log rho has slope -1 for large rho (between 1e4 and 1e6)."""
    f, pruned = instance
    q = rho_errors(f, pruned)
    errs = q / np.array(RHO_GRID)
    slope = (np.log(errs[-1]) - np.log(errs[-3])) / (np.log(RHO_GRID[-1]) - np.log(RHO_GRID[-3]))
    assert abs(slope + 1.0) < 1e-2, slope


@given(w_step_instances())
def test_w_step_is_stationary_for_penalized_objective(instance):
    """Property: the gradient (W - W0) G + rho W D of the penalized objective vanishes at the W-step."""
    from prunekit.solvers.torch.penalty import w_step

    f, pruned = instance
    g, w0 = f.gram(), f.layer.weight.double()
    rho = 3.7 * float(g.diagonal().mean())
    d = pruned.double() * f.omega()
    w, _ = w_step(w0 @ g, g, rho, d)
    grad = (w - w0) @ g + rho * w * d.unsqueeze(0)
    assert float(grad.abs().max()) <= 1e-10 * float((w0 @ g).abs().max())
    assert torch.isfinite(w).all()
