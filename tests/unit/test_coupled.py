"""CoupledStructuredRemoval (FASP): formulation rules, torch solver vs its SciPy twin."""

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from prunekit import solve
from prunekit.errors import FormulationError
from prunekit.formulations import scores
from prunekit.formulations.coupled import CoupledStructuredRemoval
from prunekit.formulations.layer import LayerData
from prunekit.formulations.sparsity import Channels, Unstructured
from prunekit.verification.toy import CONDITIONINGS, random_layer

seeds = st.integers(0, 2**32 - 1)


@given(seed=seeds, cond=st.sampled_from(CONDITIONINGS), group=st.sampled_from([1, 2]),
       ratio=st.sampled_from([0.25, 0.5, 0.75]), restore=st.booleans())
def test_torch_matches_scipy_twin(seed, cond, group, ratio, restore):
    """Property: torch (float64) and the SciPy twin pick the same columns and the same restored weights."""
    layer = random_layer(np.random.default_rng(seed), 4, 8, conditioning=cond)
    f = CoupledStructuredRemoval(layer, Channels(ratio=ratio, group_size=group), restore=restore)
    a = solve(f, backend="torch", dtype="float64")
    b = solve(f, backend="scipy")
    assert torch.equal(a.mask, b.mask) and torch.equal(a.kept_columns, b.kept_columns)
    scale = float(layer.weight.abs().max())
    torch.testing.assert_close(a.weights, b.weights, rtol=1e-7, atol=1e-7 * scale)
    assert a.residuals["mask_violations"] == 0 and a.residuals["pruned_max_abs"] == 0
    if restore:
        assert a.residuals["stationarity"] < 1e-8
        assert a.stats["damping_used"] >= layer.damping_value()


@given(seed=seeds)
def test_restoration_never_hurts_and_is_c1_without_damping(seed):
    """Property: restoration lowers the error vs plain zeroing; with damping 0 it equals lstsq(X_S^T, Y^T)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((40, 6))
    w = rng.standard_normal((3, 6))
    layer = LayerData.from_inputs(torch.from_numpy(w), torch.from_numpy(x), damping=0.0)
    spec = Channels(count=2)
    restored = solve(CoupledStructuredRemoval(layer, spec), backend="torch", dtype="float64")
    zeroed = solve(CoupledStructuredRemoval(layer, spec, restore=False), backend="torch", dtype="float64")
    assert restored.objective <= zeroed.objective + 1e-12
    keep = restored.kept_columns.numpy()
    ref = np.linalg.lstsq(x[:, keep], x @ w.T, rcond=None)[0].T
    np.testing.assert_allclose(restored.weights[:, keep].numpy(), ref, rtol=1e-9, atol=1e-9)


def test_selection_follows_the_fasp_score():
    """Property: the dropped columns are the lowest ||W_:,j||_1 ||X_j||_2; restore=False keeps W on S."""
    layer = random_layer(np.random.default_rng(5), 3, 8)
    sol = solve(CoupledStructuredRemoval(layer, Channels(count=3), restore=False), backend="torch")
    dropped = sorted(set(range(8)) - set(sol.kept_columns.tolist()))
    assert dropped == sorted(torch.argsort(scores.fasp_column(layer))[:3].tolist())
    torch.testing.assert_close(sol.weights[:, sol.kept_columns], layer.weight[:, sol.kept_columns])


def test_dtype_device_and_inputs(device):
    """Property: float32 weights come back float32 on their device; the layer is not modified."""
    base = random_layer(np.random.default_rng(2), 4, 8)
    layer = LayerData(base.weight.float().to(device), base.gram.float().to(device), base.num_tokens)
    w0 = layer.weight.clone()
    for dtype in ("float32", "float64"):
        sol = solve(CoupledStructuredRemoval(layer, Channels(ratio=0.5)), backend="torch", dtype=dtype)
        assert sol.weights.dtype == torch.float32 and sol.weights.device.type == device.type
        assert sol.kept_columns.numel() == 4
    assert torch.equal(layer.weight, w0)


def test_clear_errors():
    """Property: wrong spec, unknown score, a variance score without mean, and removing every group all fail clearly."""
    layer = random_layer(np.random.default_rng(0), 3, 6)
    with pytest.raises(FormulationError, match="Channels"):
        CoupledStructuredRemoval(layer, Unstructured(0.5))
    with pytest.raises(FormulationError, match="unknown column score"):
        CoupledStructuredRemoval(layer, Channels(count=1), score="nope")
    no_mean = LayerData(layer.weight, layer.gram, layer.num_tokens)
    with pytest.raises(FormulationError, match="input_mean"):
        CoupledStructuredRemoval(no_mean, Channels(count=1), score="wifv")
    with pytest.raises(FormulationError, match="at least one must remain"):
        CoupledStructuredRemoval(layer, Channels(count=6))
    with pytest.raises(FormulationError, match="at least one must remain"):
        CoupledStructuredRemoval(layer, Channels(count=3, group_size=2))
    # a ratio < 1 always leaves a group: 0.99 of 6 channels removes 5
    sol = solve(CoupledStructuredRemoval(layer, Channels(ratio=0.99)), backend="torch")
    assert sol.kept_columns.numel() == 1 and sol.residuals["mask_violations"] == 0


@given(seed=seeds)
def test_example_runs_on_both_backends(seed):
    """Property: example() instances are solvable by torch and scipy with feasible masks."""
    f = CoupledStructuredRemoval.example(np.random.default_rng(seed))
    assert f.layer.in_features <= 10
    for backend in ("torch", "scipy"):
        assert solve(f, backend=backend).residuals["mask_violations"] == 0
