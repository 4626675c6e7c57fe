"""Unit tests of SparseLLMSplit and the SparseLLM loop (torch vs float64 reference twin; tiny blocks)."""

import importlib.util
import math

import numpy as np
import pytest
import torch

from prunekit import solve
from prunekit.errors import FormulationError, ShapeError
from prunekit.formulations.sparsellm import SparseLLMSplit
from prunekit.formulations.sparsity import NM, Channels, Unstructured
from prunekit.solvers.torch.sparsellm import prune_magnitude, sparsellm_loop


def _opt(seed=0, d=8, h=16, n=40, spec=Unstructured(0.5), **kw):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, dtype=torch.float64, generator=g) / math.sqrt(s[-1])  # noqa: E731
    return SparseLLMSplit.opt(r(h, d), r(h), r(d, h), r(d), torch.randn(n, d, dtype=torch.float64, generator=g),
                              spec, **kw)


def _llama(seed=0, d=8, h=16, n=40, spec=NM(2, 4), **kw):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, dtype=torch.float64, generator=g) / math.sqrt(s[-1])  # noqa: E731
    return SparseLLMSplit.llama(r(h, d), r(h, d), r(d, h), torch.randn(n, d, dtype=torch.float64, generator=g), spec, **kw)


@pytest.mark.parametrize("seed", range(8))
def test_torch_matches_reference_twin(seed):
    f = SparseLLMSplit.example(np.random.default_rng(seed))
    a, b = solve(f, backend="torch", dtype="float64"), solve(f, backend="scipy")
    for k in a.extras["weights"]:
        assert torch.equal(a.extras["masks"][k], b.extras["masks"][k]), k
        assert torch.allclose(a.extras["weights"][k], b.extras["weights"][k], atol=1e-9), k
    assert abs(a.objective - b.objective) <= 1e-9 * max(1.0, abs(b.objective))


@pytest.mark.parametrize("make", [_opt, _llama])
@pytest.mark.parametrize("inner", ["magnitude", "wanda"])
def test_spec_obeyed(make, inner):
    f = make(inner_pruner=inner, epochs=3)
    sol = solve(f, backend="torch")
    assert sol.residuals["mask_violations"] == 0 and sol.residuals["pruned_max_abs"] == 0
    for k, w in sol.extras["weights"].items():
        assert f.sparsity.violations(sol.extras["masks"][k]) == 0, k
        assert w.dtype == torch.float64


@pytest.mark.parametrize("make", [_opt, _llama])
def test_structured_shares_neuron_mask(make):
    f = make(spec=Channels(ratio=0.25), structured=True, epochs=3)
    sol = solve(f, backend="torch")
    assert sol.residuals["mask_violations"] == 0
    down = "fc2" if f.family == "opt" else "down"
    keep = sol.extras["masks"][down][0]
    assert int((~keep).sum()) == 4
    for k, w in sol.extras["weights"].items():
        if k == down:
            assert (w[:, ~keep] == 0).all()
        else:
            assert (w[~keep] == 0).all()
    assert torch.equal(sol.kept_columns, keep.nonzero().squeeze(1))


def test_one_epoch_with_magnitude_is_magnitude_pruning():
    """Epoch 0 has no W-step: the result is the magnitude-pruned dense block."""
    f = _opt(epochs=1, inner_pruner="magnitude")
    sol = solve(f, backend="torch", dtype="float64")
    for k, w in f.dense_weights().items():
        expected, _ = prune_magnitude(w, None, 0, f.sparsity)
        assert torch.equal(sol.extras["weights"][k], expected)


def test_loop_accepts_callable_inner_pruner():
    calls = []

    def inner(w, g, n, spec):
        calls.append(tuple(w.shape))
        return prune_magnitude(w, g, n, spec)

    out = sparsellm_loop(_llama(epochs=2), inner)
    assert calls == [(16, 8), (16, 8), (8, 16)] * 2
    assert set(out["weights"]) == {"gate", "up", "down"}


def test_reconstruction_steps_help_against_dense_target():
    """The W-steps refit the block: 4 epochs beat plain magnitude pruning (1 epoch) on this instance."""
    one = solve(_opt(seed=3, epochs=1, inner_pruner="wanda", n=200), backend="torch", dtype="float64").objective
    four = solve(_opt(seed=3, epochs=4, inner_pruner="wanda", n=200, alpha=1.0, beta=1.0, gamma=1.0,
                      w2_steps=0), backend="torch", dtype="float64").objective
    assert four < one


@pytest.mark.skipif(importlib.util.find_spec("prunekit.formulations.sparsegpt") is None, reason="SparseGPT not present")
def test_sparsegpt_inner_pruner():
    sol = solve(_opt(epochs=2, inner_pruner="sparsegpt"), backend="torch", dtype="float64")
    assert sol.residuals["mask_violations"] == 0


def test_inputs_unchanged():
    f = _opt(epochs=2, inner_pruner="magnitude")
    before = {k: v.clone() for k, v in f.dense_weights().items()}
    x = f.inputs.clone()
    solve(f, backend="torch")
    solve(f, backend="scipy")
    assert torch.equal(f.inputs, x)
    assert all(torch.equal(before[k], v) for k, v in f.dense_weights().items())


def test_reference_declines_sparsegpt_inner():
    from prunekit.errors import NoSolverError

    with pytest.raises(NoSolverError, match="magnitude"):
        solve(_opt(inner_pruner="sparsegpt"), backend="scipy")


def test_clear_errors():
    f = _opt()
    with pytest.raises(ShapeError):
        SparseLLMSplit.opt(f.up, f.up_bias, f.layer.weight.T, None, f.inputs, Unstructured(0.5))
    with pytest.raises(FormulationError, match="structured=True"):
        _opt(spec=Channels(ratio=0.25))
    with pytest.raises(FormulationError, match="Channels"):
        _opt(structured=True)
    with pytest.raises(FormulationError):
        _opt(alpha=0.0)
    with pytest.raises(FormulationError):
        _opt(inner_pruner="obs")
    with pytest.raises(ShapeError):
        _opt(d=8, n=10).__class__.opt(torch.randn(16, 8, dtype=torch.float64), None, torch.randn(8, 16, dtype=torch.float64),
                                      None, torch.randn(10, 7, dtype=torch.float64), Unstructured(0.5))
