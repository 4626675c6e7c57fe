"""Unit tests: SparseGPTPruning, the torch lazy-block sweep and its un-batched NumPy twin."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from prunekit.errors import FormulationError
from prunekit.formulations.layer import LayerData
from prunekit.formulations.sparsegpt import SparseGPTPruning
from prunekit.formulations.sparsity import NM, Channels, Unstructured
from prunekit.solvers import solve
from prunekit.verification.toy import CONDITIONINGS, random_layer

SPECS = [Unstructured(0.5, scope="layer"), Unstructured(0.37, scope="layer"), Unstructured(0.5), Unstructured(0.3),
         NM(2, 4), NM(1, 4)]

layers = st.builds(
    lambda seed, m, g, cond: random_layer(np.random.default_rng(seed), m, 4 * g, conditioning=cond),
    st.integers(0, 2**32 - 1), st.integers(1, 5), st.integers(1, 4), st.sampled_from(CONDITIONINGS),
)


@given(layer=layers, spec=st.sampled_from(SPECS), block=st.sampled_from([4, 8, 128]))
def test_torch_matches_unbatched_twin(layer, spec, block):
    """Property: the lazy torch sweep equals the un-batched NumPy sweep (mask and weights); the spec holds exactly."""
    f = SparseGPTPruning(layer, spec, block_size=block)
    a, b = solve(f, backend="torch", dtype="float64"), solve(f, backend="scipy")
    assert bool((a.mask == b.mask).all())
    assert float((a.weights - b.weights).abs().max()) <= 1e-8 * max(1.0, float(b.weights.abs().max()))
    assert a.residuals["mask_violations"] == 0 and a.residuals["pruned_max_abs"] == 0
    assert int((~a.mask).sum()) == spec.num_pruned(layer.shape)


@given(layer=layers, batch=st.integers(1, 3))
def test_row_batch_does_not_change_the_answer(layer, batch):
    """Property: sweeping rows in chunks gives the same weights (the block mask is chosen for all rows first)."""
    f = SparseGPTPruning(layer, Unstructured(0.5, scope="layer"), block_size=4)
    a = solve(f, backend="torch", dtype="float64")
    b = solve(f, backend="torch", dtype="float64", row_batch=batch)
    assert torch.allclose(a.weights, b.weights, atol=1e-12) and bool((a.mask == b.mask).all())


@settings(max_examples=5)
@given(layer=layers)
def test_float32_and_no_mutation(layer):
    """Property: float32 compute returns the weight's dtype, meets the spec; W and G are untouched."""
    before = layer.weight.clone(), layer.gram.clone()
    sol = solve(SparseGPTPruning(layer, NM(2, 4)), backend="torch", dtype="float32")
    assert sol.weights.dtype == layer.weight.dtype and sol.residuals["mask_violations"] == 0
    assert torch.equal(layer.weight, before[0]) and torch.equal(layer.gram, before[1])
    assert sol.stats["damping_used"] > 0


def test_dead_inputs_are_zeroed_and_pruned_first():
    """Property: a dead input (G_jj = 0) gets W[:, j] = 0 and, under 2:4, is among the pruned weights."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((32, 8))
    x[:, 3] = 0.0
    layer = LayerData.from_inputs(torch.from_numpy(rng.standard_normal((4, 8))), torch.from_numpy(x))
    sol = solve(SparseGPTPruning(layer, NM(2, 4)), backend="torch", dtype="float64")
    assert bool((~sol.mask[:, 3]).all()) and sol.stats["dead_inputs"] == 1
    ref = solve(SparseGPTPruning(layer, NM(2, 4)), backend="scipy")
    assert torch.allclose(sol.weights, ref.weights, atol=1e-10)


def test_bare_ratio_means_layer_scope_and_errors():
    """Property: a ratio is Unstructured(scope='layer'); Channels, bad block sizes and percdamp raise with a fix."""
    layer = random_layer(np.random.default_rng(0), 3, 8)
    assert SparseGPTPruning(layer, 0.5).sparsity == Unstructured(0.5, scope="layer")
    with pytest.raises(FormulationError, match="Fix"):
        SparseGPTPruning(layer, Channels(count=2))
    with pytest.raises(FormulationError, match="multiple of M"):
        SparseGPTPruning(layer, NM(2, 4), block_size=6)
    with pytest.raises(FormulationError, match="percdamp"):
        SparseGPTPruning(layer, NM(2, 4), percdamp=-1.0)


def test_percdamp_overrides_layer_damping():
    """Property: percdamp changes the damping used (lambda = percdamp * mean diag G) and so the result."""
    layer = random_layer(np.random.default_rng(2), 3, 8, conditioning="correlated")
    a = solve(SparseGPTPruning(layer, NM(2, 4)), backend="torch", dtype="float64")
    b = solve(SparseGPTPruning(layer, NM(2, 4), percdamp=0.5), backend="torch", dtype="float64")
    mean_diag = float(layer.gram.diagonal().mean())
    assert np.isclose(a.stats["damping_used"], 0.01 * mean_diag) and np.isclose(b.stats["damping_used"], 0.5 * mean_diag)
    assert not torch.allclose(a.weights, b.weights)


@given(seed=st.integers(0, 2**32 - 1))
def test_example_is_valid_and_small(seed):
    """Property: example() gives a valid instance (n <= 12) on which torch and the twin agree."""
    f = SparseGPTPruning.example(np.random.default_rng(seed))
    assert f.layer.in_features <= 12
    a, b = solve(f, backend="torch", dtype="float64"), solve(f, backend="scipy")
    assert bool((a.mask == b.mask).all()) and abs(a.objective - b.objective) <= 1e-8 * max(1.0, b.objective)
