"""Unit tests: magnitude and Wanda formulations, their torch selectors and NumPy twins."""

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from prunekit.errors import FormulationError
from prunekit.formulations.magnitude import MagnitudePruning
from prunekit.formulations.sparsity import NM, Channels, Unstructured
from prunekit.formulations.wanda import WandaPruning
from prunekit.solvers import solve
from prunekit.verification.toy import CONDITIONINGS, random_layer

SPECS = [Unstructured(0.5), Unstructured(0.3, scope="layer"), NM(2, 4), Channels(ratio=0.5)]

layers = st.builds(
    lambda seed, m, g, cond: random_layer(np.random.default_rng(seed), m, 4 * g, conditioning=cond),
    st.integers(0, 2**32 - 1), st.integers(1, 6), st.integers(1, 3), st.sampled_from(CONDITIONINGS),
)


@given(layer=layers, spec=st.sampled_from(SPECS), cls=st.sampled_from([MagnitudePruning, WandaPruning]))
def test_torch_matches_numpy_twin(layer, spec, cls):
    """Property: torch and NumPy select the same mask; weights are W on the mask, 0 off it; the spec holds."""
    f = cls(layer, spec)
    a, b = solve(f, backend="torch", dtype="float64"), solve(f, backend="scipy")
    assert bool((a.mask == b.mask).all()) and torch.equal(a.weights, b.weights)
    assert a.residuals["mask_violations"] == 0
    assert torch.equal(a.weights, torch.where(a.mask, layer.weight, torch.zeros_like(layer.weight)))


@given(layer=layers, ratio=st.floats(0.05, 0.9))
def test_wanda_variant_exact_count_and_prefix(layer, ratio):
    """Property: the variant prunes exactly floor(r m n) weights, a lowest-score prefix of each row, as the twin does."""
    f = WandaPruning(layer, ratio, variant=True)
    a, b = solve(f, backend="torch", dtype="float64"), solve(f, backend="scipy")
    assert bool((a.mask == b.mask).all()) and a.residuals["mask_violations"] == 0
    scores = layer.weight.abs() * layer.gram.diagonal().sqrt()
    for i in range(layer.out_features):
        pruned, kept = scores[i][~a.mask[i]], scores[i][a.mask[i]]
        if pruned.numel() and kept.numel():
            assert float(pruned.max()) <= float(kept.min())
    assert 0.0 <= a.extras["alpha"] <= 0.8


def test_wanda_scores_row_scope_and_magnitude_layer_scope():
    """Property: Wanda keeps per row by |W| ||X||; bare ratios default to row (Wanda) and layer (magnitude) scope."""
    w = torch.tensor([[1.0, 2.0, 3.0, 4.0], [10.0, 20.0, 30.0, 40.0]], dtype=torch.float64)
    g = torch.diag(torch.tensor([100.0, 1.0, 1.0, 1.0], dtype=torch.float64))
    from prunekit.formulations.layer import LayerData

    layer = LayerData(w, g, num_tokens=10)
    assert WandaPruning(layer, 0.5).sparsity == Unstructured(0.5, scope="row")
    assert MagnitudePruning(layer, 0.5).sparsity == Unstructured(0.5, scope="layer")
    wanda = solve(WandaPruning(layer, 0.5), backend="torch")
    assert wanda.mask.tolist() == [[True, False, False, True], [True, False, False, True]]
    mag = solve(MagnitudePruning(layer, 0.5), backend="torch")
    assert mag.mask.tolist() == [[False, False, False, False], [True, True, True, True]]


def test_variant_needs_layer_scope_and_no_mutation():
    """Property: variant with a row/N:M spec raises FormulationError with a fix; solving mutates nothing."""
    layer = random_layer(np.random.default_rng(0), 3, 8)
    with pytest.raises(FormulationError, match="scope='layer'"):
        WandaPruning(layer, Unstructured(0.5), variant=True)
    with pytest.raises(FormulationError, match="Fix"):
        WandaPruning(layer, NM(2, 4), variant=True)
    before = layer.weight.clone()
    sol = solve(WandaPruning(layer, NM(2, 4)), backend="torch")
    assert torch.equal(layer.weight, before) and sol.weights.data_ptr() != layer.weight.data_ptr()


@given(seed=st.integers(0, 2**32 - 1), cls=st.sampled_from([MagnitudePruning, WandaPruning]))
def test_example_is_valid_and_small(seed, cls):
    """Property: example() gives a valid instance (n <= 12) on which torch and the twin agree."""
    f = cls.example(np.random.default_rng(seed))
    assert f.layer.in_features <= 12
    a, b = solve(f, backend="torch", dtype="float64"), solve(f, backend="scipy")
    assert bool((a.mask == b.mask).all())
