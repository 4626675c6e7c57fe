"""C18 -- SparseLLM's updates are exact block minimizers.

Statement: with W2, b2, Y, act fixed, the p-step p = (beta (Y - b2) W2 + gamma act)(beta W2^T W2 + gamma I)^{-1}
minimizes beta ||p W2^T + b2 - Y||^2 + gamma ||p - act||^2; the OPT ReLU z-step (better of
max(0, (gamma p + alpha m)/(gamma + alpha)) and min(0, m)) minimizes gamma (p - ReLU(z))^2 + alpha (z - m)^2
elementwise; the SwiGLU z-step (alpha m + gamma a p)/(alpha + gamma a^2), a = SiLU(s), is the stationary point
(and minimizer) of alpha (z - m)^2 + gamma (p - a z)^2.
Assumptions: alpha, beta, gamma > 0 (the p-system is then positive definite).
Citation: Bai et al., SparseLLM (NeurIPS 2024), code BaiTheBest/SparseLLM ``model_utils.py``; methods.md §7.2.
Claim id: C18 (methods.md §11).
"""

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from prunekit.solvers.torch.sparsellm import p_step, relu_z_objective, z_step_relu, z_step_swiglu
from prunekit.verification import strategies as pst
from prunekit.verification.claims import get_claim
from prunekit.verification.claims.c18_sparsellm_exact_steps import check_instance

CLAIM = get_claim("C18")
PENALTIES = st.floats(-2.0, 1.0).map(lambda e: 10.0**e)


@st.composite
def sparsellm_blocks(draw):
    """((W2, b2, Y, act >= 0) of drawn sizes, (p, m, s) vectors of 64 entries with drawn ties)."""
    n_tok, d, h = draw(st.integers(3, 11)), draw(st.integers(2, 5)), draw(st.integers(2, 7))
    p_block = (draw(pst.gaussian_arrays((d, h))), draw(pst.gaussian_arrays(d)), draw(pst.gaussian_arrays((n_tok, d))),
               np.maximum(draw(pst.gaussian_arrays((n_tok, h), ties=None)), 0.0))
    z_block = tuple(draw(pst.gaussian_arrays(64, scale=2.0, ties=None)) for _ in range(3))
    return p_block, z_block


@given(sparsellm_blocks(), PENALTIES, PENALTIES, PENALTIES)
def test_claim_c18_holds(blocks, alpha, beta, gamma):
    """Property: on drawn instances the three steps reach the block minimum within 1e-8 (relative)."""
    assert check_instance(*blocks, alpha, beta, gamma) <= CLAIM.tolerance


@given(p=st.floats(-5, 5), m=st.floats(-5, 5), alpha=st.floats(0.01, 10), gamma=st.floats(0.01, 10))
def test_relu_z_step_beats_perturbations(p, m, alpha, gamma):
    """Property: no perturbation of the ReLU z-step lowers its scalar objective."""
    pt, mt = torch.tensor([p], dtype=torch.float64), torch.tensor([m], dtype=torch.float64)
    z = z_step_relu(pt, mt, alpha, gamma)
    f0 = float(relu_z_objective(z, pt, mt, alpha, gamma))
    for dz in (-1.0, -1e-3, 1e-3, 1.0, -z.item() - 1e-9, -z.item() + 1e-9):
        assert f0 <= float(relu_z_objective(z + dz, pt, mt, alpha, gamma)) + 1e-12


def test_relu_z_step_known_cases():
    """Property: m < 0 with p = 0 gives z = m (zero loss); p = m > 0 gives z = m."""
    z = z_step_relu(torch.tensor([0.0, 2.0]), torch.tensor([-1.5, 2.0]), 0.1, 0.1)
    assert torch.allclose(z, torch.tensor([-1.5, 2.0]))


def test_swiglu_z_step_reduces_to_code_formula_when_alpha_equals_gamma():
    """Property: with alpha = gamma the z-step is the code's (m + SiLU(s) p) / (SiLU(s)^2 + 1)."""
    g = torch.Generator().manual_seed(0)
    m, s, p = (torch.randn(50, dtype=torch.float64, generator=g) for _ in range(3))
    a = torch.nn.functional.silu(s)
    assert torch.allclose(z_step_swiglu(m, s, p, 5.0, 5.0), (m + a * p) / (a * a + 1), atol=1e-14)


def test_p_step_gradient_vanishes():
    """Property: the gradient of the p-objective at the p-step is zero (relative 1e-10)."""
    rng = np.random.default_rng(1)
    w2, b2, y, act = rng.standard_normal((4, 6)), rng.standard_normal(4), rng.standard_normal((9, 4)), rng.random((9, 6))
    p = p_step(*(torch.from_numpy(v) for v in (w2, b2, y, act)), 0.1, 0.1).numpy()
    grad = 0.2 * (p @ w2.T + b2 - y) @ w2 + 0.2 * (p - act)
    assert np.abs(grad).max() < 1e-10
    with pytest.raises(AssertionError):  # a wrong p has a clearly non-zero gradient (the test can fail)
        q = p + 0.01
        assert np.abs(0.2 * (q @ w2.T + b2 - y) @ w2 + 0.2 * (q - act)).max() < 1e-10
