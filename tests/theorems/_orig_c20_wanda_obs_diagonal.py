"""C20 — Wanda equals OBS when features are uncorrelated.

Statement: if X X^T is diagonal, ``(|W_ij| ||X_j||)^2 = W_ij^2 / [H^{-1}]_jj`` (H = X X^T), so Wanda's mask is
the OBS/MRP Solution-S mask, and the C1 restoration on that mask leaves the kept weights unchanged (no update
is optimal).
Assumptions: inputs with orthogonal feature rows; no damping.
Citation: methods.md §8.2 and §11 C20; Sun et al. (Wanda, ICLR 2024).
Claim id: C20.
"""

import numpy as np
import torch
from hypothesis import given
from hypothesis import strategies as st

from prunekit.formulations.layer import LayerData
from prunekit.formulations.restoration import FixedMaskRestoration
from prunekit.solvers import solve
from prunekit.verification.claims import get_claim
from prunekit.verification.toy import random_layer

CLAIM = get_claim("C20")


@given(seed=st.integers(0, 2**32 - 1))
def test_claim_c20_holds(seed):
    """Property: with diagonal G, Wanda^2 = OBS saliency, the masks agree, and restoration changes nothing."""
    err = CLAIM.check(np.random.default_rng(seed))
    assert err <= CLAIM.tolerance, f"C20 error {err:.3g} > {CLAIM.tolerance}"


@given(seed=st.integers(0, 2**32 - 1))
def test_correlated_features_break_the_equivalence(seed):
    """Property: with strongly correlated features, restoration on a half mask does change the kept weights."""
    layer = random_layer(np.random.default_rng(seed), 3, 8, conditioning="correlated", damping=0.0)
    mask = torch.zeros(3, 8, dtype=torch.bool)
    mask[:, ::2] = True
    sol = solve(FixedMaskRestoration(layer, mask), backend="torch", dtype="float64")
    assert float((sol.weights - layer.weight)[mask].abs().max()) > 1e-6


def test_diagonal_gram_restoration_keeps_weights_exactly():
    """Property: a hand-built diagonal G (any damping) gives restored kept weights equal to W."""
    w = torch.tensor([[1.0, -2.0, 3.0, 0.5], [0.1, 0.2, -0.3, 4.0]], dtype=torch.float64)
    layer = LayerData(w, torch.diag(torch.tensor([1.0, 4.0, 9.0, 0.25], dtype=torch.float64)), num_tokens=4)
    mask = torch.tensor([[True, False, True, False], [False, True, True, False]])
    sol = solve(FixedMaskRestoration(layer, mask), backend="torch", dtype="float64")
    assert torch.equal(sol.weights, torch.where(mask, w, torch.zeros_like(w)))
