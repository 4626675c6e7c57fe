"""Unit tests of the sparsity specs: counts, projection (ties to the lower index), violations."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from prunekit.errors import SparsityError
from prunekit.formulations import NM, Channels, Unstructured
from prunekit.verification import strategies as pst


def test_unstructured_row_prunes_floor_per_row():
    """Property: Unstructured(0.5) on 3 x 5 prunes floor(2.5) = 2 per row; kept count is ceil(n(1-s))."""
    spec = Unstructured(0.5)
    mask = spec.project(torch.arange(15.0).reshape(3, 5))
    assert ((~mask).sum(1) == 2).all()
    assert spec.num_pruned((3, 5)) == 6
    assert mask[:, 2:].all() and not mask[:, :2].any()


def test_unstructured_layer_scope_uses_one_threshold():
    """Property: layer scope prunes the globally smallest floor(mn*ratio) entries."""
    scores = torch.tensor([[0.0, 1.0, 2.0], [10.0, 11.0, 12.0]])
    mask = Unstructured(0.5, scope="layer").project(scores)
    assert mask.tolist() == [[False, False, False], [True, True, True]]


def test_nm_keeps_top_per_group_and_ties_go_to_lower_index():
    """Property: 2:4 keeps the two highest of each group; equal scores keep the lower index."""
    spec = NM(2, 4)
    mask = spec.project(torch.tensor([[1.0, 1.0, 1.0, 1.0, 4.0, 3.0, 2.0, 1.0]]))
    assert mask.tolist() == [[True, True, False, False, True, True, False, False]]
    assert spec.violations(mask) == 0 and spec.num_pruned((1, 8)) == 4


@given(pst.tied_scores((3, 8), levels=2))
def test_projection_is_deterministic_under_ties(scores):
    """Property: projecting tied scores twice gives the same mask, and it is feasible."""
    for spec in (Unstructured(0.5), NM(2, 4), Channels(ratio=0.5)):
        a, b = spec.project(scores), spec.project(scores.clone())
        assert torch.equal(a, b) and spec.violations(a) == 0


def test_channels_groups_and_counts():
    """Property: Channels removes whole groups; kept columns come from group scores."""
    spec = Channels(count=1, group_size=2)
    col = torch.tensor([5.0, 5.0, 0.0, 1.0, 3.0, 3.0])
    mask = spec.project(col)
    assert mask.tolist() == [[True, True, False, False, True, True]]
    assert spec.groups_pruned(6) == 1 and spec.num_groups(6) == 3
    assert spec.structured and spec.num_pruned((4, 6)) == 8


def test_channels_explicit_groups_leave_outside_columns():
    """Property: with explicit groups, columns outside every group are never removed."""
    spec = Channels(count=1, groups=((0, 1), (2, 3)))
    mask = spec.project(torch.tensor([0.0, 0.0, 9.0, 9.0, -5.0]))
    assert mask.tolist() == [[False, False, True, True, True]]
    bad = mask.clone()
    bad[0, 4] = False
    assert spec.violations(bad) > 0


@pytest.mark.parametrize("spec, mask", [
    (Unstructured(0.5), torch.ones(2, 4, dtype=torch.bool)),
    (NM(2, 4), torch.tensor([[True, False, False, False]])),
    (Channels(count=1), torch.tensor([[True, False], [True, True]])),
])
def test_violations_detect_infeasible_masks(spec, mask):
    """Property: infeasible masks have violations > 0."""
    assert spec.violations(mask) > 0


@given(st.integers(2, 12).flatmap(lambda n: st.tuples(st.just(n), pst.sparsity_specs(n))), st.integers(1, 5))
def test_project_is_feasible_and_prunes_the_declared_count(n_spec, m):
    """Property: for any fitting spec, project(random scores) is feasible with num_pruned zeros."""
    n, spec = n_spec
    mask = spec.project(torch.randn(m, n, dtype=torch.float64))
    assert spec.violations(mask) == 0
    assert int((~mask).sum()) == spec.num_pruned((m, n))


@pytest.mark.parametrize("make", [
    lambda: Unstructured(1.0), lambda: Unstructured(-0.1), lambda: Unstructured(float("nan")),
    lambda: Unstructured(0.5, scope="block"), lambda: NM(4, 4), lambda: NM(0, 4), lambda: NM(2.0, 4),
    lambda: Channels(), lambda: Channels(ratio=0.5, count=1), lambda: Channels(count=-1),
    lambda: Channels(ratio=0.1, group_size=0), lambda: Channels(count=1, groups=((0, 1), (1, 2))),
])
def test_invalid_specs_raise_sparsity_error(make):
    """Property: every malformed spec raises SparsityError at construction."""
    with pytest.raises(SparsityError):
        make()


@pytest.mark.parametrize("spec, shape", [
    (NM(2, 4), (3, 6)), (Channels(ratio=0.5, group_size=4), (2, 6)), (Channels(count=3), (2, 3)),
    (Channels(count=1, groups=((0, 7),)), (2, 4)),
])
def test_specs_that_do_not_fit_the_shape(spec, shape):
    """Property: validate_for rejects specs that cannot be met on the shape, naming the fix."""
    with pytest.raises(SparsityError, match="Fix|outside"):
        spec.validate_for(shape)


def _sorted_keep(scores: torch.Tensor, keep: int, dim: int) -> torch.Tensor:
    order = torch.sort(scores, dim=dim, descending=True, stable=True).indices
    return torch.zeros_like(scores, dtype=torch.bool).scatter_(dim, order.narrow(dim, 0, keep), True)


@given(rows=st.integers(1, 3), size=st.integers(257, 700), levels=st.integers(1, 6), frac=st.floats(0.01, 0.99),
       seed=st.integers(0, 2**16), nan=st.booleans())
def test_selection_keeps_what_a_stable_sort_keeps(rows, size, levels, frac, seed, nan):
    """Long slices are cut by selection (kthvalue); the kept set equals a stable descending sort's, ties included
    (values drawn from a few levels), and NaN scores still sort above numbers."""
    from prunekit.formulations.sparsity import _stable_topk_keep

    gen = torch.Generator().manual_seed(seed)
    scores = torch.randint(0, levels, (rows, size), generator=gen).float()
    if nan:
        scores[0, size // 3] = float("nan")
    keep = max(1, min(size - 1, int(frac * size)))
    assert torch.equal(_stable_topk_keep(scores, keep, dim=1), _sorted_keep(scores, keep, 1))
    flat = scores.reshape(-1)
    assert torch.equal(_stable_topk_keep(flat, keep, dim=0), _sorted_keep(flat, keep, 0))


@given(size=st.integers(2, 8), rows=st.integers(1, 40), cols=st.sampled_from([1, 3, 2100]),
       levels=st.integers(1, 4), seed=st.integers(0, 2**16), data=st.data())
def test_short_slices_rank_by_comparison_as_a_stable_sort(size, rows, cols, levels, seed, data):
    """N:M-length slices are ranked by pairwise comparison (all pairs at once when small, pair by pair when
    large); the kept set equals a stable descending sort's, ties (few levels) included, along any dim."""
    from prunekit.formulations.sparsity import _pairwise_keep, _stable_topk_keep

    gen = torch.Generator().manual_seed(seed)
    scores = torch.randint(0, levels, (rows, size, cols), generator=gen).float()
    keep = data.draw(st.integers(1, size - 1))
    assert torch.equal(_pairwise_keep(scores, keep, 1), _sorted_keep(scores, keep, 1))
    moved = scores.movedim(1, 2).contiguous()
    assert torch.equal(_stable_topk_keep(moved, keep, dim=2), _sorted_keep(moved, keep, 2))
