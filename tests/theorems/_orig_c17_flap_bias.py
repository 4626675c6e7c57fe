"""C17 — FLAP's bias compensation is the least-squares-optimal intercept (methods.md §8.4, §11 C17).

Statement: after removing input channels P without a weight update, b_new = b + W_{:,P} mu_P minimizes
sum_t ||W_hat x_t + b_new - (W x_t + b)||^2; the minimum is N tr(W_P Cov(X_P) W_P^T), which for a single
channel j is N Var(x_j) ||W_:,j||^2 = N x WIFV_j.
Assumptions: population covariance (1/N); mu is the token mean of the calibration inputs.
Citation: FLAP (An et al., AAAI 2024; CASIA-IVA-Lab/FLAP ``lib/prune.py``).  Claim id: C17.
"""

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from prunekit import solve
from prunekit.formulations.flap import FLAPRemoval
from prunekit.formulations.sparsity import Channels
from prunekit.verification.claims import assert_claim
from prunekit.verification.claims.c17_flap_bias import flap_errors
from prunekit.verification.toy import random_layer


@given(seed=st.integers(0, 2**32 - 1))
def test_claim_c17_holds(seed):
    """Property: the claim's check passes on hypothesis-drawn seeds."""
    assert assert_claim("C17", np.random.default_rng(seed)) <= 1e-9


@given(seed=st.integers(0, 2**32 - 1))
def test_all_identities(seed):
    """Property: intercept, covariance residual, moment-form objective, single-channel WIFV and solver bias agree."""
    errs = flap_errors(np.random.default_rng(seed))
    assert max(errs.values()) < 1e-9, errs


@given(seed=st.integers(0, 2**32 - 1), delta=st.floats(-1.0, 1.0).filter(lambda v: abs(v) > 1e-3))
def test_perturbing_the_bias_increases_the_error(seed, delta):
    """Property: any other bias has a strictly larger bias-aware reconstruction error."""
    layer = random_layer(np.random.default_rng(seed), 3, 6, with_bias=True, mean_shift=1.0)
    sol = solve(FLAPRemoval(layer, Channels(count=2)), backend="torch", dtype="float64")
    base = layer.reconstruction_error(sol.weights, sol.bias)
    bumped = sol.bias + delta * torch.ones_like(sol.bias)
    assert layer.reconstruction_error(sol.weights, bumped) > base
    assert layer.reconstruction_error(sol.weights, bumped) == pytest.approx(
        base + 0.5 * layer.num_tokens * 3 * delta**2, rel=1e-9)
