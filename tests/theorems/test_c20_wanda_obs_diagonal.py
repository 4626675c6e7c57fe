"""C20 — Wanda equals OBS when features are uncorrelated.

Statement: if X X^T is diagonal, ``(|W_ij| ||X_j||)^2 = W_ij^2 / [H^{-1}]_jj`` (H = X X^T), so Wanda's mask is
the OBS/MRP Solution-S mask, and the C1 restoration on that mask leaves the kept weights unchanged (no update
is optimal).
Assumptions: inputs with orthogonal feature rows; no damping.
Citation: methods.md §8.2 and §11 C20; Sun et al. (Wanda, ICLR 2024).
Claim id: C20.
"""

from dataclasses import replace

import torch
from hypothesis import given
from hypothesis import strategies as st

from prunekit.formulations.layer import LayerData
from prunekit.formulations.restoration import FixedMaskRestoration
from prunekit.solvers import solve
from prunekit.verification import strategies as pst
from prunekit.verification.claims import get_claim
from prunekit.verification.claims.c20_wanda_obs_diagonal import check_instance

CLAIM = get_claim("C20")
# orthogonal feature columns (G diagonal), no damping, zero-mean shift (a shift would correlate the features)
ORTHOGONAL = pst.layers_and_specs(m=st.integers(2, 6), n=st.sampled_from((4, 8, 12)), kinds=("unstructured", "nm"),
                                  max_m=4, conditionings=("orthogonal",), damping=0.0, mean_shift=0.0, with_bias=False)
# G = c I with quantized weights: Wanda and OBS scores tie, so both must break ties the same way
TIED = pst.tied_layers(m=st.integers(2, 6), n=st.sampled_from((4, 8, 12))).map(lambda l: replace(l, damping=0.0)).flatmap(
    lambda l: st.tuples(st.just(l), pst.sparsity_specs(l.in_features, kinds=("unstructured", "nm"), max_m=4)))


@given(ORTHOGONAL | TIED)
def test_claim_c20_holds(instance):
    """Property: with diagonal G, Wanda^2 = OBS saliency, the masks agree, and restoration changes nothing."""
    err = check_instance(*instance)
    assert err <= CLAIM.tolerance, f"C20 error {err:.3g} > {CLAIM.tolerance}"


@given(pst.toy_layers(m=3, n=8, conditionings=("correlated",), damping=0.0))
def test_correlated_features_break_the_equivalence(layer):
    """Property: with strongly correlated features, restoration on a half mask does change the kept weights."""
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
