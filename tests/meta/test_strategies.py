"""Meta-tests of ``prunekit.verification.strategies``: the strategies produce valid and varied inputs.

Validity is checked per example (hypothesis ``@given``); variety (conditioning range actually reached,
ties occurring, every spec kind drawn) is checked over a fixed sample of draws with ``find``-style loops,
because a narrow strategy (array-api-tests' identity-only "PD matrices") passes every per-example test.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from prunekit.formulations import NM, Channels, LayerData, Unstructured
from prunekit.verification import strategies as pst


def _sample(strategy, count=60, seed=0):
    """``count`` draws of ``strategy`` (deterministic), outside ``@given`` for distribution checks."""
    out = []

    @settings(max_examples=count, derandomize=True, database=None, deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(strategy)
    def collect(x):
        out.append(x)

    collect()
    return out


@given(pst.pd_grams())
def test_pd_grams_are_symmetric_psd(g):
    """Property: every drawn Gram is symmetric PSD and accepted by LayerData."""
    assert g.dtype == torch.float64
    assert torch.equal(g, g.T)
    lam_min = float(torch.linalg.eigvalsh(g).min())
    assert lam_min >= -1e-9 * float(g.diagonal().mean())
    LayerData(torch.zeros(2, g.shape[0], dtype=torch.float64), g, num_tokens=4 * g.shape[0])


def test_pd_grams_reach_every_conditioning():
    """Property: draws reach cond(G) >= 1e7 (ill), singular G (rank-deficient) and well-conditioned G."""
    grams = _sample(pst.pd_grams(n=st.integers(6, 10)), count=80)
    conds = [float(np.linalg.cond(g.numpy())) for g in grams]
    ranks = [int(np.linalg.matrix_rank(g.numpy(), tol=1e-9 * float(g.diagonal().max()))) for g in grams]
    assert max(c for c in conds if np.isfinite(c)) >= 1e7, sorted(conds)[-3:]
    assert min(conds) < 1e3
    assert any(r < g.shape[0] for r, g in zip(ranks, grams)), "no rank-deficient G drawn"
    offdiag = [float((g - torch.diag(g.diagonal())).abs().max() / g.diagonal().max()) for g in grams]
    assert max(offdiag) > 0.5, "no strongly correlated G drawn"


@pytest.mark.parametrize("kind", pst.CONDITIONINGS)
def test_pd_grams_honours_requested_conditioning(kind):
    """Property: asking for one conditioning yields it (ill >= 1e7, rank-deficient singular, well < 1e3)."""
    grams = _sample(pst.pd_grams(n=8, conditioning=kind), count=10)
    conds = [float(np.linalg.cond(g.numpy())) for g in grams]
    if kind == "ill":
        assert min(conds) >= 1e7
    elif kind == "rank_deficient":
        assert all(np.linalg.matrix_rank(g.numpy(), tol=1e-9 * float(g.diagonal().max())) == 4 for g in grams)
    elif kind == "well":
        assert max(conds) < 1e3


@given(pst.toy_layers())
def test_toy_layers_are_valid_float64(layer):
    """Property: toy layers are float64 CPU LayerData with consistent statistics (variance >= 0)."""
    m, n = layer.shape
    assert layer.weight.dtype == torch.float64 and layer.gram.dtype == torch.float64
    assert 1 <= m <= 8 and 2 <= n <= 12
    assert layer.input_mean is not None
    assert bool((layer.gram.diagonal() / layer.num_tokens - layer.input_mean**2 >= -1e-9).all())
    assert layer.dense_energy() >= 0.0


def test_toy_layers_vary_bias_and_shape():
    """Property: bias presence, widths and mean shifts all vary across draws."""
    layers = _sample(pst.toy_layers(), count=40)
    assert {l.bias is None for l in layers} == {True, False}
    assert len({l.shape for l in layers}) > 5
    assert max(float(l.input_mean.abs().max()) for l in layers) > 0.5


@given(st.integers(1, 16).flatmap(lambda n: st.tuples(st.just(n), pst.sparsity_specs(n))))
def test_sparsity_specs_fit_the_width(n_spec):
    """Property: every drawn spec validates for a layer with n inputs and projects to a feasible mask."""
    n, spec = n_spec
    spec.validate_for((3, n))
    mask = spec.project(torch.randn(3, n, dtype=torch.float64))
    assert spec.violations(mask) == 0
    assert int((~mask).sum()) == spec.num_pruned((3, n))


def test_sparsity_specs_cover_every_kind():
    """Property: unstructured (both scopes), N:M and grouped channel specs are all drawn."""
    specs = _sample(pst.sparsity_specs(12), count=80)
    assert any(isinstance(s, Unstructured) and s.scope == "row" for s in specs)
    assert any(isinstance(s, Unstructured) and s.scope == "layer" for s in specs)
    assert {s.m for s in specs if isinstance(s, NM)} >= {2, 4}
    assert any(isinstance(s, Channels) and s.group_size > 1 for s in specs)
    assert any(isinstance(s, Channels) and s.count is not None for s in specs)


def test_sparsity_specs_for_prime_width_avoid_impossible_nm():
    """Property: for n = 7 the only N:M drawn is M = 7, for n = 1 none at all."""
    specs = _sample(pst.sparsity_specs(7, kinds=("nm",)), count=10)
    assert all(isinstance(s, NM) and s.m == 7 for s in specs)
    with pytest.raises(ValueError, match="no spec"):
        _sample(pst.sparsity_specs(1, kinds=("nm",)), count=1)


@given(st.data())
def test_keep_masks_are_feasible(data):
    """Property: keep_masks draws feasible masks for any drawn spec."""
    n = data.draw(st.integers(2, 12))
    spec = data.draw(pst.sparsity_specs(n))
    mask = data.draw(pst.keep_masks(spec, (4, n)))
    assert mask.dtype == torch.bool and spec.violations(mask) == 0


def test_tied_scores_and_layers_have_ties():
    """Property: tied strategies really produce ties (repeated scores / equal input norms)."""
    scores = _sample(pst.tied_scores((4, 8), levels=3), count=20)
    assert all(len(torch.unique(s[0])) < 8 for s in scores)
    layers = _sample(pst.tied_layers(), count=20)
    for layer in layers:
        norms = layer.input_norms()
        assert torch.allclose(norms, norms[0].expand_as(norms))
    assert any(len(torch.unique(l.weight.abs())) < l.weight.numel() for l in layers)


@given(pst.layers_and_specs())
def test_layers_and_specs_fit(layer_spec):
    """Property: the paired spec always fits the paired layer."""
    layer, spec = layer_spec
    spec.validate_for(layer.shape)
