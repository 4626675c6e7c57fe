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
* :func:`layers_and_specs` -- a layer together with a spec that fits it;
* :func:`calibrated_layers` -- a toy layer *with* the inputs X (and X*) it was accumulated from;
* :func:`gaussian_arrays`, :func:`index_subsets`, :func:`capped_simplex_points` -- numeric vectors and
  matrices (optionally with ties), index sets (pruned sets, supports) and relaxed selections;
* :func:`lasso_problems`, :func:`allocation_problems` -- valid FISTAPruner lasso and layer-allocation
  formulations.

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

from dataclasses import dataclass
from typing import Optional, Sequence, Union

import numpy as np
import torch
from hypothesis import strategies as st

from ..formulations.layer import LayerData
from ..formulations.sparsity import NM, Channels, SparsitySpec, Unstructured

CONDITIONINGS = ("well", "ill", "rank_deficient", "correlated")
ALL_CONDITIONINGS = CONDITIONINGS + ("orthogonal",)
SPEC_KINDS = ("unstructured", "nm", "channels")
IntLike = Union[int, st.SearchStrategy]
FloatLike = Union[float, st.SearchStrategy]

_SEEDS = st.integers(0, 2**32 - 1)


def _as_strategy(value: IntLike) -> st.SearchStrategy:
    return value if isinstance(value, st.SearchStrategy) else st.just(value)


def inputs_array(rng: np.random.Generator, n: int, tokens: int, conditioning: str) -> np.ndarray:
    """Calibration inputs X^T of shape (tokens, n) with the requested conditioning of X^T X.

    ``"ill"`` scales the features by ``logspace(-4, 0)`` (so cond(G) reaches ~1e8), ``"rank_deficient"`` has
    rank ``max(1, n // 2)``, ``"correlated"`` mixes features through a random matrix with a shared factor,
    ``"orthogonal"`` (in :data:`ALL_CONDITIONINGS` only) has orthogonal feature columns scaled by
    ``10^U(-1, 1)``, so ``G`` is exactly diagonal up to rounding (needs ``tokens >= n``).
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
    if conditioning == "orthogonal":
        q, _ = np.linalg.qr(rng.standard_normal((tokens, n)))
        return q * 10.0 ** rng.uniform(-1.0, 1.0, n)
    raise ValueError(f"conditioning must be one of {ALL_CONDITIONINGS}, got {conditioning!r}.")


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


@dataclass(frozen=True, eq=False)
class CalibratedLayer:
    """A toy layer together with the calibration inputs its statistics were accumulated from.

    Attributes
    ----------
    layer : LayerData
        float64 CPU layer with ``G = X X^T`` of ``inputs`` (and ``G*``, ``C`` of ``inputs_star`` when given).
    inputs : ndarray, shape (tokens, n)
        The calibration inputs X^T (one token per row).
    inputs_star : ndarray, shape (tokens, n), optional
        The error-corrected inputs X*^T (FISTAPruner), or None.
    """

    layer: LayerData
    inputs: np.ndarray
    inputs_star: Optional[np.ndarray] = None


@st.composite
def calibrated_layers(draw, m: IntLike = st.integers(1, 8), n: IntLike = st.integers(2, 12),
                      conditionings: Sequence[str] = CONDITIONINGS, with_bias: Optional[bool] = None,
                      with_mean: bool = True, mean_shift: Optional[float] = None, tokens: Optional[int] = None,
                      damping: FloatLike = 0.01, error_correction: Optional[bool] = False) -> CalibratedLayer:
    """A :class:`CalibratedLayer`: random float64 weights and bias with drawn inputs X (and X*).

    Parameters are those of :func:`toy_layers`, plus ``conditionings`` may name ``"orthogonal"``
    (see :data:`ALL_CONDITIONINGS`) and

    error_correction : bool, optional
        Also draw error-corrected inputs ``X* = X + 0.1 noise`` and fill ``gram_star``/``cross``
        (FISTAPruner's objective ``1/2 ||W* X* - W X||^2``); None draws it.
    """
    rows, cols = draw(_as_strategy(m)), draw(_as_strategy(n))
    kind = draw(st.sampled_from(tuple(conditionings)))
    bias_on = draw(st.booleans()) if with_bias is None else with_bias
    shift = draw(st.sampled_from((0.0, 1.0))) if mean_shift is None else mean_shift
    star_on = draw(st.booleans()) if error_correction is None else error_correction
    rng = np.random.default_rng(draw(_SEEDS))
    x = inputs_array(rng, cols, tokens or 4 * cols, kind) + shift * rng.standard_normal(cols)
    w = rng.standard_normal((rows, cols))
    bias = torch.from_numpy(rng.standard_normal(rows)) if bias_on else None
    xs = x + 0.1 * rng.standard_normal(x.shape) if star_on else None
    layer = LayerData.from_inputs(torch.from_numpy(w), torch.from_numpy(x), bias=bias,
                                  inputs_star=None if xs is None else torch.from_numpy(xs),
                                  damping=draw(_as_strategy(damping)), with_mean=with_mean)
    return CalibratedLayer(layer, x, xs)


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
    return draw(calibrated_layers(m=m, n=n, conditionings=conditionings, with_bias=with_bias, with_mean=with_mean,
                                  mean_shift=mean_shift, tokens=tokens, damping=damping)).layer


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
                     kinds: Sequence[str] = SPEC_KINDS, max_m: int = 16, **layer_kwargs) -> tuple[LayerData, SparsitySpec]:
    """A :func:`toy_layers` layer and a :func:`sparsity_specs` spec (N:M with ``M <= max_m``) drawn to fit its
    width; ``layer_kwargs`` go to :func:`toy_layers`."""
    layer = draw(toy_layers(m=m, n=n, **layer_kwargs))
    return layer, draw(sparsity_specs(layer.in_features, kinds=kinds, max_m=max_m))


def _shape(draw, shape) -> tuple[int, ...]:
    value = draw(_as_strategy(shape))
    dims = (value,) if isinstance(value, int) else tuple(value)
    return tuple(draw(_as_strategy(d)) for d in dims)


@st.composite
def gaussian_arrays(draw, shape, scale: FloatLike = 1.0, ties: Optional[bool] = False) -> np.ndarray:
    """Float64 NumPy arrays of standard normal entries times ``scale``.

    Parameters
    ----------
    shape : int, tuple of (int or strategy), or strategy
        The array shape; each dimension may be drawn.
    scale : float or strategy
        Multiplies every entry.
    ties : bool, optional
        Round the entries to multiples of ``scale / 2`` so repeated values and exact zeros occur (the
        tie-breaking and degenerate cases of scores, thresholds and LP costs); None draws it.
    """
    dims = _shape(draw, shape)
    factor = float(draw(_as_strategy(scale)))
    tied = draw(st.booleans()) if ties is None else ties
    values = np.random.default_rng(draw(_SEEDS)).standard_normal(dims)
    if tied:
        values = np.round(2.0 * values) / 2.0
    return values * factor


@st.composite
def index_subsets(draw, n: IntLike, min_size: IntLike = 0, max_size: Optional[IntLike] = None) -> np.ndarray:
    """Sorted int64 index sets ``P`` of ``{0, ..., n-1}`` with ``min_size <= |P| <= max_size`` (default n).

    Drawn as a prefix of a permutation, so failures shrink towards ``{0, ..., |P| - 1}``.
    """
    width = draw(_as_strategy(n))
    low = draw(_as_strategy(min_size))
    high = width if max_size is None else draw(_as_strategy(max_size))
    if not 0 <= low <= min(high, width):
        raise ValueError(f"no subset of size in [{low}, {high}] of {width} elements.")
    size = draw(st.integers(low, min(high, width)))
    perm = draw(st.permutations(range(width)))
    return np.sort(np.asarray(perm[:size], dtype=np.int64))


@st.composite
def capped_simplex_points(draw, n: IntLike, k: IntLike) -> torch.Tensor:
    """Points of SPAP's relaxed selection set ``{s in [0, 1]^n : 1^T s = k}`` (float64 torch, shape (n,)).

    The support ``T`` is a drawn :func:`index_subsets` set with ``|T| >= k``; on ``T``, ``s`` is
    ``k / |T|`` plus a zero-sum perturbation scaled into the box (so every ``s_j`` on ``T`` is > 0 and
    fractional unless ``|T| = k``), and ``s`` is 0 off ``T``.
    """
    width, count = draw(_as_strategy(n)), draw(_as_strategy(k))
    support = draw(index_subsets(width, min_size=count))
    s = np.zeros(width)
    if support.size:
        base = count / support.size
        v = draw(gaussian_arrays(support.size))
        v -= v.mean()
        room = min(base, 1.0 - base)
        spread = draw(st.sampled_from((0.0, 0.5, 0.9)))
        s[support] = base + (spread * room / max(float(np.abs(v).max()), 1e-12)) * v
    return torch.from_numpy(s)


@st.composite
def lasso_problems(draw, m: IntLike = st.integers(1, 4), n: IntLike = st.integers(3, 8),
                   conditionings: Sequence[str] = ("well", "correlated"), error_correction: Optional[bool] = None,
                   lam_fraction: FloatLike = st.floats(0.05, 0.6), iterations: IntLike = 3000,
                   eps: FloatLike = 0.0, mean_shift: Optional[float] = 0.0):
    """Pure-lasso :class:`~prunekit.formulations.l1.L1Relaxation` problems (FISTAPruner's inner problem).

    ``lam = lam_fraction * lambda_max`` on a :func:`calibrated_layers` layer (with drawn error correction),
    ``adaptive=False``, ``project=False``, dense warm start, ``K = iterations`` and early-stop ``eps``.
    """
    from ..formulations.l1 import L1Relaxation

    layer = draw(calibrated_layers(m=m, n=n, conditionings=conditionings, with_bias=False, mean_shift=mean_shift,
                                   error_correction=error_correction)).layer
    spec = Unstructured(0.5)
    probe = L1Relaxation(layer, spec, lam=0.0, adaptive=False, project=False)
    lam = float(draw(_as_strategy(lam_fraction))) * probe.lambda_max()
    return L1Relaxation(layer, spec, lam=lam, adaptive=False, project=False, K=draw(_as_strategy(iterations)),
                        eps=float(draw(_as_strategy(eps))), warm_start="dense")


@st.composite
def allocation_problems(draw, num_layers: IntLike = st.integers(2, 8), sizes: IntLike = st.integers(3, 59),
                        mean_sparsity: FloatLike = st.floats(0.05, 0.7),
                        s_max: Optional[FloatLike] = None,
                        temperature: FloatLike = st.floats(-0.5, 1.0).map(lambda e: 10.0**e),
                        energy_scale: FloatLike = st.sampled_from((0.3, 1.0, 3.0)), ties: Optional[bool] = None):
    """Valid softmax :class:`~prunekit.formulations.allocation.LayerAllocation` problems.

    ``s_max`` (None: drawn in ``[mean_sparsity, 1]``) is raised to 1 when the floored caps cannot meet the
    budget, so the problem is feasible by construction; ``energies`` are :func:`gaussian_arrays` (with
    drawn ties: equal energies are the degenerate case of the allocation).
    """
    from ..formulations.allocation import LayerAllocation

    count = draw(_as_strategy(num_layers))
    size = tuple(draw(st.lists(_as_strategy(sizes), min_size=count, max_size=count)))
    s_bar = float(draw(_as_strategy(mean_sparsity)))
    cap = float(draw(st.floats(s_bar, 1.0)) if s_max is None else draw(_as_strategy(s_max)))
    cap = min(1.0, max(cap, 1e-3))
    if sum(int(np.floor(cap * v + 1e-9)) for v in size) < int(round(s_bar * sum(size))):
        cap = 1.0
    energies = draw(gaussian_arrays(count, scale=energy_scale, ties=ties))
    return LayerAllocation(sizes=size, mean_sparsity=s_bar, energies=tuple(energies.tolist()),
                           temperature=float(draw(_as_strategy(temperature))), s_max=cap)


__all__ = [
    "ALL_CONDITIONINGS", "CONDITIONINGS", "CalibratedLayer", "SPEC_KINDS", "allocation_problems",
    "calibrated_layers", "capped_simplex_points", "gaussian_arrays", "index_subsets", "inputs_array", "keep_masks",
    "lasso_problems", "layers_and_specs", "pd_grams", "sparsity_specs", "tied_layers", "tied_scores", "toy_layers",
]
