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


@pytest.mark.parametrize("family", ["llama", "opt"])
def test_modules_fed_one_tensor_share_sums_equal_to_separate_collection(family):
    """q/k/v (and gate/up) receive the same tensor object: accumulated once, each name gets an independent copy
    equal to what collecting that module alone gives."""
    model = tiny_model(family)
    adapter = adapter_for(model)
    inputs = capture_block_inputs(model, adapter, tokens(n=3, t=9))
    block = adapter.blocks(model)[0]
    names = adapter.linear_names(block)
    together = collect_grams(block, inputs, names, device="cpu")
    for n in names:
        alone = collect_grams(block, inputs, [n], device="cpu")[n]
        assert together[n].num_tokens == alone.num_tokens
        assert torch.equal(together[n].gram, alone.gram) and torch.equal(together[n].sum, alone.sum)
    grams = [together[n].gram for n in names]
    assert len({g.data_ptr() for g in grams}) == len(grams)  # no two names hold the same storage


class _Switching(torch.nn.Module):
    """Two linears that get the same tensor in the first call and different tensors afterwards."""

    def __init__(self):
        super().__init__()
        self.a = torch.nn.Linear(4, 3)
        self.b = torch.nn.Linear(4, 3)
        self.calls = 0

    def forward(self, h, *args, **kwargs):
        self.calls += 1
        y = self.a(h)
        z = self.b(h if self.calls == 1 else 2.0 * h)
        return y + z


def test_a_broken_alias_gets_exactly_its_own_sums():
    from prunekit.models.calibration import BlockInputs

    torch.manual_seed(0)
    hidden = [torch.randn(1, 5, 4) for _ in range(3)]
    inputs = BlockInputs(hidden)
    block = _Switching()
    accs = collect_grams(block, inputs, ["a", "b"], device="cpu")
    x = torch.cat([h.reshape(-1, 4) for h in hidden]).double()
    xb = torch.cat([hidden[0].reshape(-1, 4), 2.0 * hidden[1].reshape(-1, 4), 2.0 * hidden[2].reshape(-1, 4)]).double()
    assert torch.allclose(accs["a"].gram, x.T @ x) and torch.allclose(accs["b"].gram, xb.T @ xb)
