"""Public hypothesis strategies for pruning problems (constructive: no ``assume`` filtering).

Every strategy builds a *valid* input by construction, so property tests never waste examples:

* :func:`pd_grams` -- Gram matrices ``G = X X^T + lambda I`` (PSD by construction) spanning
  well-conditioned, ill-conditioned (condition number up to ~1e8), rank-deficient and correlated inputs;
* :func:`toy_layers` -- :class:`~prunekit.formulations.layer.LayerData` (float64, CPU) built from drawn
  calibration inputs, optionally with a bias and the input mean (FLAP);
* :func:`tied_layers` -- layers whose magnitude/Wanda/column scores tie (quantized weights, ``G = c I``);
* :func:`tied_scores` -- score matrices with many equal entries (tie-breaking rules);
* :func:`sparsity_specs` -- :class:`Unstructured`, :class:`NM` (M dividing n) and :class:`Channels`
  (group size dividing n, at least one group kept) that fit the width ``n``;
* :func:`keep_masks` -- feasible keep-masks of a spec;
* :func:`layers_and_specs` -- a layer together with a spec that fits it.

Numeric content is drawn from a numpy ``Generator`` seeded by hypothesis, structural choices (sizes,
conditioning, spec kind) by hypothesis itself, so failures shrink to small shapes and simple structures.

Examples
--------
>>> from hypothesis import given
>>> from prunekit.verification import strategies as pst
>>> @given(pst.layers_and_specs(n=8))
... def test_feasible(layer_spec):
...     layer, spec = layer_spec
...     spec.validate_for(layer.shape)
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import numpy as np
import torch
from hypothesis import strategies as st

from ..formulations.layer import LayerData
from ..formulations.sparsity import NM, Channels, SparsitySpec, Unstructured

CONDITIONINGS = ("well", "ill", "rank_deficient", "correlated")
SPEC_KINDS = ("unstructured", "nm", "channels")
IntLike = Union[int, st.SearchStrategy]

_SEEDS = st.integers(0, 2**32 - 1)


def _as_strategy(value: IntLike) -> st.SearchStrategy:
    return value if isinstance(value, st.SearchStrategy) else st.just(value)


def inputs_array(rng: np.random.Generator, n: int, tokens: int, conditioning: str) -> np.ndarray:
    """Calibration inputs X^T of shape (tokens, n) with the requested conditioning of X^T X.

    ``"ill"`` scales the features by ``logspace(-4, 0)`` (so cond(G) reaches ~1e8), ``"rank_deficient"`` has
    rank ``max(1, n // 2)``, ``"correlated"`` mixes features through a random matrix with a shared factor.
    """
    if conditioning == "well":
        return rng.standard_normal((tokens, n))
    if conditioning == "ill":
        scales = np.logspace(-4.0, 0.0, n) if n > 1 else np.ones(1)
        return rng.standard_normal((tokens, n)) * scales[rng.permutation(n)]
    if conditioning == "rank_deficient":
        r = max(1, n // 2)
        return rng.standard_normal((tokens, r)) @ rng.standard_normal((r, n))
    if conditioning == "correlated":
        shared = rng.standard_normal((tokens, 1)) * rng.standard_normal((1, n))
        mix = np.eye(n) + 0.8 * rng.standard_normal((n, n)) / np.sqrt(n)
        return rng.standard_normal((tokens, n)) @ mix + 2.0 * shared
    raise ValueError(f"conditioning must be one of {CONDITIONINGS}, got {conditioning!r}.")


@st.composite
def pd_grams(draw, n: IntLike = st.integers(1, 12), conditioning: Optional[Union[str, Sequence[str]]] = None,
             tokens: Optional[int] = None) -> torch.Tensor:
    """Symmetric PSD Gram matrices ``G = X X^T + lambda I`` (float64 torch tensor, shape (n, n)).

    Parameters
    ----------
    n : int or strategy
        Width of G.
    conditioning : str or sequence of str, optional
        One of :data:`CONDITIONINGS` or several to draw from (default: all).
    tokens : int, optional
        Number of calibration tokens (default ``4 n``; rank-deficient inputs keep rank n // 2 regardless).

    Notes
    -----
    ``lambda`` is 0 for rank-deficient draws (G exactly singular), and otherwise drawn from
    {0, 1e-12 mean(diag), 1e-10 mean(diag)}, so the ill-conditioned draws keep cond(G) near 1e8.
    """
    width = draw(_as_strategy(n))
    kinds = CONDITIONINGS if conditioning is None else ((conditioning,) if isinstance(conditioning, str) else tuple(conditioning))
    kind = draw(st.sampled_from(kinds))
    rng = np.random.default_rng(draw(_SEEDS))
    x = inputs_array(rng, width, tokens or 4 * width, kind)
    gram = x.T @ x
    gram = 0.5 * (gram + gram.T)
    if kind != "rank_deficient":
        rel = draw(st.sampled_from((0.0, 1e-12, 1e-10)))
        gram = gram + rel * float(np.mean(np.diag(gram))) * np.eye(width)
    return torch.from_numpy(gram)


@st.composite
def toy_layers(draw, m: IntLike = st.integers(1, 8), n: IntLike = st.integers(2, 12),
               conditionings: Sequence[str] = CONDITIONINGS, with_bias: Optional[bool] = None,
               with_mean: bool = True, mean_shift: Optional[float] = None, tokens: Optional[int] = None,
               damping: Union[float, st.SearchStrategy] = 0.01) -> LayerData:
    """Random float64 CPU :class:`LayerData` with ``G = X X^T`` of drawn inputs X.

    Parameters
    ----------
    m, n : int or strategy
        Output and input widths.
    conditionings : sequence of str
        Conditionings of the inputs to draw from (see :func:`inputs_array`).
    with_bias : bool, optional
        Attach a random bias; None draws it.
    with_mean : bool
        Record the token mean of the inputs (FLAP needs it).
    mean_shift : float, optional
        Offset added to the inputs (non-zero means); None draws it from {0, 1}.
    tokens : int, optional
        Number of calibration tokens (default ``4 n``).
    damping : float or strategy
        ``LayerData.damping``.
    """
    rows, cols = draw(_as_strategy(m)), draw(_as_strategy(n))
    kind = draw(st.sampled_from(tuple(conditionings)))
    bias_on = draw(st.booleans()) if with_bias is None else with_bias
    shift = draw(st.sampled_from((0.0, 1.0))) if mean_shift is None else mean_shift
    rng = np.random.default_rng(draw(_SEEDS))
    x = inputs_array(rng, cols, tokens or 4 * cols, kind) + shift * rng.standard_normal(cols)
    w = rng.standard_normal((rows, cols))
    bias = torch.from_numpy(rng.standard_normal(rows)) if bias_on else None
    return LayerData.from_inputs(torch.from_numpy(w), torch.from_numpy(x), bias=bias,
                                 damping=draw(_as_strategy(damping)), with_mean=with_mean)


@st.composite
def tied_layers(draw, m: IntLike = st.integers(1, 6), n: IntLike = st.integers(2, 12),
                levels: Sequence[float] = (-2.0, -1.0, 1.0, 2.0)) -> LayerData:
    """Layers whose importance scores tie: weights from a few ``levels`` and ``G = c I``.

    The inputs are ``+-sqrt(c / 2) e_j`` (2 n tokens, zero mean), so every input norm is equal and the
    magnitude, Wanda and column scores repeat; tie-breaking rules (lower index kept) become observable.
    """
    rows, cols = draw(_as_strategy(m)), draw(_as_strategy(n))
    c = draw(st.sampled_from((1.0, 4.0)))
    rng = np.random.default_rng(draw(_SEEDS))
    w = rng.choice(np.asarray(levels, dtype=np.float64), size=(rows, cols))
    eye = np.sqrt(c / 2.0) * np.eye(cols)
    x = np.concatenate([eye, -eye], axis=0)
    return LayerData.from_inputs(torch.from_numpy(w), torch.from_numpy(x), damping=0.01)


@st.composite
def tied_scores(draw, shape: tuple[int, int] = (4, 8), levels: int = 3) -> torch.Tensor:
    """Float64 score matrices of ``shape`` taking at most ``levels`` distinct values (ties guaranteed for
    ``levels < shape[1]``)."""
    rows, cols = shape
    values = draw(st.lists(st.integers(0, levels - 1), min_size=rows * cols, max_size=rows * cols))
    return torch.tensor(values, dtype=torch.float64).reshape(rows, cols)


def _divisors(n: int, low: int, high: int) -> list[int]:
    return [d for d in range(low, min(n, high) + 1) if n % d == 0]


@st.composite
def sparsity_specs(draw, n: IntLike, kinds: Sequence[str] = SPEC_KINDS, max_m: int = 16) -> SparsitySpec:
    """A sparsity spec that fits a layer with ``n`` inputs (``spec.validate_for((m, n))`` never raises).

    Parameters
    ----------
    n : int or strategy
        The input width the spec must fit.
    kinds : sequence of {"unstructured", "nm", "channels"}
        Spec kinds to draw from; kinds that cannot fit ``n`` (N:M for n < 2 or without a divisor
        ``2 <= M <= max_m``) are left out.
    max_m : int
        Largest M of an N:M spec.
    """
    width = draw(_as_strategy(n))
    nm_sizes = _divisors(width, 2, max_m)
    usable = [k for k in kinds if k != "nm" or nm_sizes]
    if not usable:
        raise ValueError(f"no spec of kinds {tuple(kinds)} fits n={width}.")
    kind = draw(st.sampled_from(usable))
    if kind == "unstructured":
        ratio = draw(st.sampled_from((0.0, 0.25, 0.5, 0.75)) | st.floats(0.0, 0.9, allow_nan=False))
        return Unstructured(ratio, scope=draw(st.sampled_from(("row", "layer"))))
    if kind == "nm":
        mm = draw(st.sampled_from(nm_sizes))
        return NM(draw(st.integers(1, mm - 1)), mm)
    group = draw(st.sampled_from(_divisors(width, 1, width)))
    groups = width // group
    if groups < 2:
        group, groups = 1, width
    pruned = draw(st.integers(0, groups - 1))
    if draw(st.booleans()):
        return Channels(count=pruned, group_size=group)
    return Channels(ratio=(pruned + draw(st.sampled_from((0.0, 0.5)))) / groups, group_size=group)


@st.composite
def keep_masks(draw, spec: SparsitySpec, shape: tuple[int, int]) -> torch.Tensor:
    """A feasible keep-mask (bool, ``shape``) of ``spec``: the projection of a random permutation score."""
    rows, cols = shape
    spec.validate_for(shape)
    perm = draw(st.permutations(range(rows * cols)))
    scores = torch.tensor(perm, dtype=torch.float64).reshape(rows, cols)
    return spec.project(scores)


@st.composite
def layers_and_specs(draw, m: IntLike = st.integers(1, 6), n: IntLike = st.integers(2, 12),
                     kinds: Sequence[str] = SPEC_KINDS, **layer_kwargs) -> tuple[LayerData, SparsitySpec]:
    """A :func:`toy_layers` layer and a :func:`sparsity_specs` spec drawn to fit its width."""
    layer = draw(toy_layers(m=m, n=n, **layer_kwargs))
    return layer, draw(sparsity_specs(layer.in_features, kinds=kinds))


__all__ = [
    "CONDITIONINGS", "SPEC_KINDS", "inputs_array", "keep_masks", "layers_and_specs", "pd_grams",
    "sparsity_specs", "tied_layers", "tied_scores", "toy_layers",
]
