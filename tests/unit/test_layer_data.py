"""Unit tests of LayerData and GramAccumulator (shapes, statistics, objective identities)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given

from prunekit.errors import GramError, NonFiniteError, ShapeError
from prunekit.formulations import GramAccumulator, LayerData
from prunekit.verification import strategies as pst
from prunekit.verification.toy import random_layer


def _xw(seed=0, m=3, n=5, tokens=20):
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.standard_normal((tokens, n))), torch.from_numpy(rng.standard_normal((m, n)))


def test_from_inputs_statistics_match_definitions():
    """Property: G = X^T X, mu = mean, N = tokens, shape = (m, n)."""
    x, w = _xw()
    layer = LayerData.from_inputs(w, x)
    assert layer.shape == (3, 5) and layer.num_tokens == 20
    torch.testing.assert_close(layer.gram, x.T @ x)
    torch.testing.assert_close(layer.input_mean, x.mean(0))
    torch.testing.assert_close(layer.input_norms(), (x**2).sum(0).sqrt())
    torch.testing.assert_close(layer.input_variance(), x.var(0, unbiased=False))


def test_streaming_accumulation_equals_one_shot():
    """Property: accumulating chunks gives the same statistics as one update (bitwise-close)."""
    x, w = _xw(tokens=30)
    acc = GramAccumulator(5)
    for chunk in x.split(7):
        acc.update(chunk.reshape(1, -1, 5))
    one = LayerData.from_inputs(w, x)
    streamed = acc.layer_data(w)
    torch.testing.assert_close(streamed.gram, one.gram)
    torch.testing.assert_close(streamed.input_mean, one.input_mean)
    assert streamed.num_tokens == 30


@given(pst.toy_layers(with_bias=False))
def test_reconstruction_error_is_half_squared_output_difference(layer):
    """Property: F(W_hat) = 1/2 tr(dW G dW^T) >= 0, F(W) = 0 and F(0) = dense energy."""
    w = layer.weight
    assert layer.reconstruction_error(w) == pytest.approx(0.0, abs=1e-12)
    assert layer.reconstruction_error(torch.zeros_like(w)) == pytest.approx(layer.dense_energy(), rel=1e-12)
    d = torch.ones_like(w)
    expected = 0.5 * float(torch.sum((d @ layer.gram) * d))
    assert layer.reconstruction_error(w + d) == pytest.approx(expected, rel=1e-9, abs=1e-9)


def test_reconstruction_error_with_bias_matches_direct_outputs():
    """Property: the bias-aware error equals 1/2 sum_t ||W_hat x_t + b_hat - W x_t - b||^2."""
    x, w = _xw(tokens=40)
    b = torch.randn(3, dtype=torch.float64)
    layer = LayerData.from_inputs(w, x, bias=b)
    wh, bh = w * 0.5, b + 0.3
    direct = 0.5 * float(((x @ wh.T + bh) - (x @ w.T + b)).pow(2).sum())
    assert layer.reconstruction_error(wh, bh) == pytest.approx(direct, rel=1e-10)


def test_error_corrected_objective_matches_direct_outputs():
    """Property: with X*, F(W_hat) = 1/2 ||W_hat X* - W X||^2."""
    x, w = _xw(tokens=25)
    xs = x + 0.1 * torch.randn_like(x)
    layer = LayerData.from_inputs(w, x, inputs_star=xs)
    wh = w + 0.2
    direct = 0.5 * float((xs @ wh.T - x @ w.T).pow(2).sum())
    assert layer.reconstruction_error(wh) == pytest.approx(direct, rel=1e-10)


def test_damped_gram_adds_relative_damping_and_fixes_dead_inputs():
    """Property: damped G = G + damping*mean(diag G) I; dead inputs get G_jj = 1 first."""
    x, w = _xw()
    x[:, 2] = 0.0
    layer = LayerData.from_inputs(w, x, damping=0.1)
    lam = 0.1 * float(layer.gram.diagonal().mean())
    assert layer.damping_value() == pytest.approx(lam)
    damped = layer.damped_gram()
    assert damped[2, 2] == pytest.approx(1.0 + lam)
    assert damped[0, 0] == pytest.approx(float(layer.gram[0, 0]) + lam)
    assert layer.gram[2, 2] == 0.0  # input untouched


def test_layer_data_accepts_singular_psd_gram():
    """Property: a rank-deficient (PSD, singular) G is valid data; damping makes solves well posed."""
    layer = random_layer(np.random.default_rng(0), 3, 8, conditioning="rank_deficient")
    assert int(torch.linalg.matrix_rank(layer.gram)) == 4


@pytest.mark.parametrize("bad, error", [
    (dict(gram=torch.eye(4, dtype=torch.float64)), ShapeError),
    (dict(weight=torch.zeros(3, dtype=torch.float64)), ShapeError),
    (dict(num_tokens=0), ShapeError),
    (dict(bias=torch.zeros(4, dtype=torch.float64)), ShapeError),
    (dict(input_mean=torch.zeros(3, dtype=torch.float64)), ShapeError),
    (dict(damping=-1.0), GramError),
    (dict(weight=torch.full((3, 5), float("nan"), dtype=torch.float64)), NonFiniteError),
    (dict(gram=torch.tensor([[1.0, 2.0], [0.0, 1.0]], dtype=torch.float64).repeat(1, 1)), ShapeError),
])
def test_invalid_layer_data_is_rejected(bad, error):
    """Property: each malformed field raises its specific FormulationError subclass."""
    _, w = _xw()
    kwargs = dict(weight=w, gram=torch.eye(5, dtype=torch.float64), num_tokens=10)
    kwargs.update(bad)
    with pytest.raises(error):
        LayerData(**kwargs)


def test_integer_weight_is_a_type_error():
    """Property: non-float tensors are rejected with TypeError naming the field."""
    with pytest.raises(TypeError, match="weight"):
        LayerData(torch.zeros(2, 2, dtype=torch.int64), torch.eye(2), num_tokens=1)
