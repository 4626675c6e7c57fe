"""C17 — FLAP's bias compensation is the least-squares-optimal intercept (methods.md §8.4, §11 C17).

Statement: after removing input channels P without a weight update, b_new = b + W_{:,P} mu_P minimizes
sum_t ||W_hat x_t + b_new - (W x_t + b)||^2; the minimum is N tr(W_P Cov(X_P) W_P^T), which for a single
channel j is N Var(x_j) ||W_:,j||^2 = N x WIFV_j.
Assumptions: population covariance (1/N); mu is the token mean of the calibration inputs.
Citation: FLAP (An et al., AAAI 2024; CASIA-IVA-Lab/FLAP ``lib/prune.py``).  Claim id: C17.
"""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from prunekit import solve
from prunekit.formulations.flap import FLAPRemoval
from prunekit.formulations.sparsity import Channels
from prunekit.verification import strategies as pst
from prunekit.verification.claims import get_claim
from prunekit.verification.claims.c17_flap_bias import flap_errors_for

CLAIM = get_claim("C17")


@st.composite
def flap_instances(draw):
    """(biased layer with shifted inputs of every conditioning, its inputs, a proper pruned channel set)."""
    cal = draw(pst.calibrated_layers(m=st.integers(2, 6), n=st.integers(3, 9), with_bias=True, mean_shift=2.0))
    n = cal.layer.in_features
    return cal.layer, cal.inputs, draw(pst.index_subsets(n, 1, n - 1))


@given(flap_instances())
def test_claim_c17_holds(instance):
    """Property: the claim's error (worst identity) is within its tolerance on drawn instances."""
    assert max(flap_errors_for(*instance).values()) <= CLAIM.tolerance


@given(flap_instances())
def test_all_identities(instance):
    """Property: intercept, covariance residual, moment-form objective, single-channel WIFV and solver bias agree."""
    errs = flap_errors_for(*instance)
    assert max(errs.values()) < 1e-9, errs


@given(pst.toy_layers(m=3, n=6, with_bias=True, mean_shift=1.0), st.floats(-1.0, 1.0).filter(lambda v: abs(v) > 1e-3))
def test_perturbing_the_bias_increases_the_error(layer, delta):
    """Property: any other bias has a strictly larger bias-aware reconstruction error."""
    sol = solve(FLAPRemoval(layer, Channels(count=2)), backend="torch", dtype="float64")
    base = layer.reconstruction_error(sol.weights, sol.bias)
    bumped = sol.bias + delta * torch.ones_like(sol.bias)
    assert layer.reconstruction_error(sol.weights, bumped) > base
    assert layer.reconstruction_error(sol.weights, bumped) == pytest.approx(
        base + 0.5 * layer.num_tokens * 3 * delta**2, rel=1e-9)
