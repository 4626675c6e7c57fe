"""FLAPRemoval: formulation rules, torch solver vs its SciPy twin, bias compensation."""

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from prunekit import solve
from prunekit.errors import FormulationError
from prunekit.formulations import scores
from prunekit.formulations.flap import METRICS, FLAPRemoval
from prunekit.formulations.layer import LayerData
from prunekit.formulations.sparsity import Channels, NM
from prunekit.verification.toy import CONDITIONINGS, random_layer

seeds = st.integers(0, 2**32 - 1)


def _layer(seed, cond="well", bias=True, m=4, n=8):
    return random_layer(np.random.default_rng(seed), m, n, conditioning=cond, with_bias=bias, mean_shift=1.0)


@given(seed=seeds, cond=st.sampled_from(CONDITIONINGS), metric=st.sampled_from(METRICS),
       group=st.sampled_from([1, 2]), reduction=st.sampled_from(["sum", "squared_mean"]), bias=st.booleans())
def test_torch_matches_scipy_twin(seed, cond, metric, group, reduction, bias):
    """Property: torch (float64) and the SciPy twin agree on mask, weights and compensated bias."""
    layer = _layer(seed, cond, bias)
    f = FLAPRemoval(layer, Channels(ratio=0.5, group_size=group), metric=metric, group_reduction=reduction)
    a, b = solve(f, backend="torch", dtype="float64"), solve(f, backend="scipy")
    assert torch.equal(a.mask, b.mask) and torch.equal(a.weights, b.weights)
    torch.testing.assert_close(a.bias, b.bias, rtol=1e-8, atol=1e-8 * float(a.bias.abs().max()))
    assert a.residuals["mask_violations"] == 0 and a.residuals["bias_stationarity"] < 1e-10
    assert a.objective == pytest.approx(b.objective, rel=1e-8, abs=1e-10 * layer.dense_energy())


@given(seed=seeds)
def test_bias_formula_and_that_it_helps(seed):
    """Property: b_new = b + W_P mu_P exactly, and it never raises the bias-aware error vs the old bias."""
    layer = _layer(seed)
    f = FLAPRemoval(layer, Channels(count=3))
    sol = solve(f, backend="torch", dtype="float64")
    pruned = ~sol.mask[0]
    expected = layer.bias + layer.weight[:, pruned] @ layer.input_mean[pruned]
    torch.testing.assert_close(sol.bias, expected, rtol=1e-12, atol=1e-12)
    assert sol.objective <= layer.reconstruction_error(sol.weights) + 1e-9
    off = solve(FLAPRemoval(layer, Channels(count=3), bias_compensation=False), backend="torch")
    assert off.bias is None and "bias_stationarity" not in off.residuals


def test_wifv_selection_and_squared_mean_groups():
    """Property: single channels drop the lowest WIFV; groups under 'squared_mean' drop the lowest mean of squares."""
    layer = _layer(7, n=8)
    sol = solve(FLAPRemoval(layer, Channels(count=2)), backend="torch")
    dropped = sorted(set(range(8)) - set(sol.kept_columns.tolist()))
    assert dropped == sorted(torch.argsort(scores.flap_wifv(layer))[:2].tolist())
    sol = solve(FLAPRemoval(layer, Channels(count=1, group_size=4), group_reduction="squared_mean"), backend="torch")
    col = scores.flap_wifv(layer)
    worst = int(torch.argmin(torch.stack([(col[:4] ** 2).mean(), (col[4:] ** 2).mean()])))
    assert sol.kept_columns.tolist() == ([4, 5, 6, 7] if worst == 0 else [0, 1, 2, 3])


def test_dtype_device_and_inputs(device):
    """Property: float32 weights/bias come back float32 on their device; the layer is not modified."""
    base = _layer(3)
    layer = LayerData(base.weight.float().to(device), base.gram.float().to(device), base.num_tokens,
                      bias=base.bias.float().to(device), input_mean=base.input_mean.float().to(device))
    w0, b0 = layer.weight.clone(), layer.bias.clone()
    sol = solve(FLAPRemoval(layer, Channels(ratio=0.25)), backend="torch")
    assert sol.weights.dtype == torch.float32 and sol.bias.dtype == torch.float32
    assert sol.weights.device.type == device.type
    assert torch.equal(layer.weight, w0) and torch.equal(layer.bias, b0)


def test_clear_errors():
    """Property: missing input_mean, unknown metric, wrong spec and removing everything fail with a fix."""
    layer = _layer(0)
    no_mean = LayerData(layer.weight, layer.gram, layer.num_tokens, bias=layer.bias)
    with pytest.raises(FormulationError, match="input_mean"):
        FLAPRemoval(no_mean, Channels(count=1))
    with pytest.raises(FormulationError, match="input_mean"):
        FLAPRemoval(no_mean, Channels(count=1), metric="wifn")  # bias compensation still needs it
    FLAPRemoval(no_mean, Channels(count=1), metric="wifn", bias_compensation=False)  # fine
    with pytest.raises(FormulationError, match="unknown FLAP metric"):
        FLAPRemoval(layer, Channels(count=1), metric="variance")
    with pytest.raises(FormulationError, match="Channels"):
        FLAPRemoval(layer, NM(2, 4))
    with pytest.raises(FormulationError, match="at least one must remain"):
        FLAPRemoval(layer, Channels(count=8))


@given(seed=seeds)
def test_example_runs_on_both_backends(seed):
    """Property: example() instances are solvable by torch and scipy with feasible masks."""
    f = FLAPRemoval.example(np.random.default_rng(seed))
    for backend in ("torch", "scipy"):
        assert solve(f, backend=backend).residuals["mask_violations"] == 0
