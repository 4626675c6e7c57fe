"""Batched calibration forwards (``prunekit.models.calibration.window_batches``) equal one window per call."""

from __future__ import annotations

import pytest
import torch

from _tiny_models import FAMILY_TYPES, tiny_model, tokens

from prunekit.calibration_set import CalibrationSet
from prunekit.models.adapters import adapter_for
from prunekit.models.calibration import capture_block_inputs, collect_grams, forward_block, window_batches

pytestmark = pytest.mark.hf


@pytest.mark.parametrize("family", sorted(FAMILY_TYPES))
def test_batched_forward_and_statistics_equal_single_window_calls(family):
    model = tiny_model(family)
    adapter = adapter_for(model)
    windows = tokens(n=5, t=12)
    inputs = capture_block_inputs(model, adapter, windows)
    assert window_batches(inputs, "cpu", batch_tokens=24) == [[0, 1], [2, 3], [4]]
    assert window_batches(inputs, "cpu") == [[i] for i in range(5)]  # CPU default: one window per call
    block = adapter.blocks(model)[0]
    names = adapter.linear_names(block)
    one = forward_block(block, inputs, device="cpu")
    many = forward_block(block, inputs, device="cpu", batch_tokens=10_000)
    for a, b in zip(one.hidden, many.hidden):
        assert a.shape == b.shape and torch.allclose(a, b, atol=1e-5, rtol=1e-5)
    g1 = collect_grams(block, inputs, names, device="cpu")
    g2 = collect_grams(block, inputs, names, device="cpu", batch_tokens=10_000)
    for n in names:
        assert g1[n].num_tokens == g2[n].num_tokens == 5 * 12
        assert torch.allclose(g1[n].gram, g2[n].gram, rtol=1e-6, atol=1e-6 * float(g1[n].gram.abs().max()))


def test_padded_windows_are_never_batched():
    model = tiny_model("llama")
    adapter = adapter_for(model)
    ids = tokens(n=4, t=10)
    mask = torch.ones_like(ids, dtype=torch.bool)
    mask[1, :3] = False  # window 1 is left-padded
    inputs = capture_block_inputs(model, adapter, CalibrationSet(ids, mask))
    groups = window_batches(inputs, "cpu", batch_tokens=10_000)
    assert [1] in groups and sorted(i for g in groups for i in g) == [0, 1, 2, 3]
    assert all(len(g) == 1 for g in groups if 1 in g)
