"""SciPy/NumPy reference twins (float64, CPU): restoration by lstsq, MRP, SparseGPT, magnitude and Wanda.

Each twin recomputes its answer independently of the torch code path:

* ``FixedMaskRestoration``: per row, ``scipy.linalg.lstsq(R[:, S], R w^T)`` on the damped system
  ``G + lambda I = R^T R`` (R upper Cholesky) -- the stacked least-squares form of the QP (exact);
* ``MultipleRemoval``: the same mask rule in NumPy (OBS saliency with ``diag((G + lambda I)^{-1})``, or per-group
  enumeration of the C(M, N) patterns with ``np.linalg.solve``); Solution M by the lstsq restoration, Solution S by
  its formula, the blocked variant with ``(H_FF)^{-1}`` inverted directly (not through the Cholesky identity);
* ``SparseGPTPruning``: the un-batched column sweep (every update applied to all columns on the right at once,
  B = n for the arithmetic), with the masks chosen at the same block boundaries -- mathematically equal to the
  lazy version (claim C16);
* ``MagnitudePruning`` / ``WandaPruning``: NumPy scores and projections.

SciPy is imported inside the functions (never at import time of prunekit).
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import torch

from ...formulations.magnitude import MagnitudePruning
from ...formulations.mrp import MultipleRemoval
from ...formulations.restoration import FixedMaskRestoration
from ...formulations.sparsegpt import SparseGPTPruning
from ...formulations.sparsity import NM, Unstructured
from ...formulations.wanda import WandaPruning
from ..base import Solver
from ..options import ReferenceOptions
from ..registry import register_solver
from ..solution import Solution


# ----------------------------------------------------------------------------- numpy helpers
def np_layer(layer) -> tuple[np.ndarray, np.ndarray, float]:
    """(W, G with dead inputs G_jj := 1, lambda) in float64 NumPy."""
    w = layer.weight.detach().cpu().double().numpy().copy()
    g = layer.gram.detach().cpu().double().numpy().copy()
    mean_diag = float(np.mean(np.diag(g))) if g.size else 0.0
    lam = layer.damping * (mean_diag if mean_diag > 0 else 1.0)
    dead = np.diag(g) == 0
    g[dead, dead] = 1.0
    return w, g, lam


def np_cholesky(g: np.ndarray, lam: float, max_tries: int = 8) -> tuple[np.ndarray, float]:
    """Upper R with ``g + lam I = R^T R``, escalating lam x10 on failure (mirrors the torch policy)."""
    import scipy.linalg as sla

    scale = float(np.mean(np.abs(np.diag(g)))) or 1.0
    for _ in range(max_tries + 1):
        try:
            return sla.cholesky(g + lam * np.eye(len(g)), lower=False), lam
        except np.linalg.LinAlgError:
            lam = 1e-8 * scale if lam == 0 else 10.0 * lam
    raise np.linalg.LinAlgError("reference Cholesky failed after damping escalation")


def np_inverse(g: np.ndarray, lam: float) -> tuple[np.ndarray, float]:
    import scipy.linalg as sla

    r, lam = np_cholesky(g, lam)
    inv = sla.cho_solve((r, False), np.eye(len(g)))
    return 0.5 * (inv + inv.T), lam


def np_keep_top(scores: np.ndarray, keep: int) -> np.ndarray:
    """Keep the ``keep`` highest entries of a 1-D array; ties go to the lower index."""
    out = np.zeros(scores.shape, dtype=bool)
    out[np.argsort(-scores, kind="stable")[:max(keep, 0)]] = True
    return out


def np_project(spec, scores: np.ndarray) -> np.ndarray:
    """Keep-mask of ``spec`` for ``scores`` (m, n), computed in NumPy (Channels via the spec itself)."""
    m, n = scores.shape
    if isinstance(spec, Unstructured):
        if spec.scope == "layer":
            return np_keep_top(scores.reshape(-1), m * n - spec.num_pruned((m, n))).reshape(m, n)
        k = n - spec.pruned_per_row(n)
        return np.stack([np_keep_top(row, k) for row in scores])
    if isinstance(spec, NM):
        groups = scores.reshape(m, n // spec.m, spec.m)
        keep = np.stack([[np_keep_top(g, spec.m - spec.n) for g in row] for row in groups])
        return keep.reshape(m, n)
    return spec.project(torch.from_numpy(scores)).numpy()


def np_restore(w: np.ndarray, g: np.ndarray, lam: float, keep: np.ndarray) -> np.ndarray:
    """Per-row ``lstsq(R[:, S], R w_i^T)`` with ``g + lam I = R^T R``; zero off ``keep``."""
    import scipy.linalg as sla

    r, _ = np_cholesky(g, lam)
    out = np.zeros_like(w)
    for i in range(w.shape[0]):
        s = keep[i]
        if s.any():
            out[i, s] = sla.lstsq(r[:, s], r @ w[i])[0]
    return out


def _solution(layer, w_hat: np.ndarray, keep: np.ndarray, status: str, **stats) -> Solution:
    mask = torch.from_numpy(np.ascontiguousarray(keep)).to(layer.weight.device)
    weights = torch.from_numpy(np.where(keep, w_hat, 0.0)).to(device=layer.weight.device, dtype=layer.weight.dtype)
    return Solution(weights=weights, mask=mask, status=status, stats=stats)


# ----------------------------------------------------------------------------- MRP rules
def mrp_mask(formulation: MultipleRemoval, w: np.ndarray, hinv: np.ndarray) -> np.ndarray:
    """Keep-mask of the MRP mask rule (Solution-S saliency or exact per-group enumeration)."""
    spec = formulation.sparsity
    if formulation.mask_score != "exact_groups":
        return np_project(spec, w ** 2 / np.diag(hinv)[None, :])
    m, n = w.shape
    keep = np.ones((m, n), dtype=bool)
    patterns = list(itertools.combinations(range(spec.m), spec.n))
    for i in range(m):
        for g0 in range(0, n, spec.m):
            losses = []
            for pat in patterns:
                p = [g0 + j for j in pat]
                losses.append(float(w[i, p] @ np.linalg.solve(hinv[np.ix_(p, p)], w[i, p])))
            keep[i, [g0 + j for j in patterns[int(np.argmin(losses))]]] = False
    return keep


def mrp_update(formulation: MultipleRemoval, w, g, lam, hinv, keep) -> np.ndarray:
    prune = ~keep
    if formulation.update == "solution_s":
        coef = np.where(prune, w / np.diag(hinv)[None, :], 0.0)
        return np.where(prune, 0.0, w - coef @ hinv)
    if formulation.block_size is None:
        return np_restore(w, g, lam, keep)
    out = w.copy()
    n = w.shape[1]
    h = g + lam * np.eye(n)
    for i1 in range(0, n, formulation.block_size):
        i2 = min(i1 + formulation.block_size, n)
        hinv_f = np.linalg.inv(h[i1:, i1:])
        for i in range(w.shape[0]):
            p = np.nonzero(prune[i, i1:i2])[0]
            if p.size:
                z = np.linalg.solve(hinv_f[np.ix_(p, p)], out[i, i1 + p])
                out[i, i1:] -= z @ hinv_f[p, :]
                out[i, i1 + p] = 0.0
    return out


# ----------------------------------------------------------------------------- SparseGPT sweep
def sparsegpt_np(formulation: SparseGPTPruning) -> tuple[np.ndarray, np.ndarray, float]:
    """Un-batched SparseGPT column sweep; returns ``(W_hat, keep, lambda)``."""
    import scipy.linalg as sla

    layer, spec, bs = formulation.layer, formulation.sparsity, formulation.block_size
    w = layer.weight.detach().cpu().double().numpy().copy()
    g = layer.gram.detach().cpu().double().numpy().copy()
    dead = np.diag(g) == 0
    g[dead, dead] = 1.0
    w[:, dead] = 0.0
    lam = formulation.relative_damping * float(np.mean(np.diag(g)))
    hinv, lam = np_inverse(g, lam)
    u = sla.cholesky(hinv, lower=False)
    m, n = w.shape
    prune = np.zeros((m, n), dtype=bool)
    d = np.diag(u)
    fl = lambda r, s: int(math.floor(r * s + 1e-9))  # noqa: E731
    for i in range(n):
        if isinstance(spec, Unstructured) and i % bs == 0:
            i2 = min(i + bs, n)
            sc = w[:, i:i2] ** 2 / d[None, i:i2] ** 2
            if spec.scope == "layer":
                k = fl(spec.ratio, m * i2) - fl(spec.ratio, m * i)
                prune[:, i:i2] = ~np_keep_top(sc.reshape(-1), sc.size - k).reshape(sc.shape)
            else:
                k = fl(spec.ratio, i2) - fl(spec.ratio, i)
                prune[:, i:i2] = np.stack([~np_keep_top(row, sc.shape[1] - k) for row in sc])
        if isinstance(spec, NM) and i % spec.m == 0:
            sc = w[:, i:i + spec.m] ** 2 / d[None, i:i + spec.m] ** 2
            prune[:, i:i + spec.m] = np.stack([~np_keep_top(row, spec.m - spec.n) for row in sc])
        q = np.where(prune[:, i], 0.0, w[:, i])
        err = (w[:, i] - q) / u[i, i]
        w[:, i:] -= np.outer(err, u[i, i:])
        w[:, i] = q
    return w, ~prune, lam


# ----------------------------------------------------------------------------- registered twins
class _Ref(Solver):
    options_type = ReferenceOptions
    devices = ("cpu",)
    max_weights = 1 << 16


@register_solver(FixedMaskRestoration, backend="scipy")
class ScipyFixedMaskRestoration(_Ref):
    """Per-row ``scipy.linalg.lstsq`` on the damped least-squares system (exact)."""

    exact = True

    def run(self, formulation, options):
        w, g, lam = np_layer(formulation.layer)
        keep = formulation.mask.cpu().numpy().astype(bool)
        _, used = np_cholesky(g, lam, options.max_damping_tries)
        return _solution(formulation.layer, np_restore(w, g, lam, keep), keep, "optimal", damping_used=used)


@register_solver(MultipleRemoval, backend="scipy")
class ScipyMultipleRemoval(_Ref):
    """NumPy mask rule + lstsq Solution M (or the Solution S formula / directly-inverted blocked variant)."""

    def run(self, formulation, options):
        w, g, lam = np_layer(formulation.layer)
        hinv, used = np_inverse(g, lam)
        keep = mrp_mask(formulation, w, hinv)
        w_hat = mrp_update(formulation, w, g, used, hinv, keep)
        status = "solved" if formulation.exact_for_mask else "heuristic"
        return _solution(formulation.layer, w_hat, keep, status, damping_used=used)


@register_solver(SparseGPTPruning, backend="scipy")
class ScipySparseGPT(_Ref):
    """Plain NumPy loop of SparseGPT's column sweep without lazy batching."""

    def run(self, formulation, options):
        w_hat, keep, used = sparsegpt_np(formulation)
        return _solution(formulation.layer, w_hat, keep, "heuristic", damping_used=used)


@register_solver(MagnitudePruning, backend="scipy")
class NumpyMagnitude(_Ref):
    """NumPy |W| projection."""

    def run(self, formulation, options):
        w = formulation.layer.weight.detach().cpu().double().numpy()
        keep = np_project(formulation.sparsity, np.abs(w))
        return _solution(formulation.layer, w, keep, "heuristic", damping_used=0.0)


def wanda_variant_np(scores: np.ndarray, num_pruned: int) -> np.ndarray:
    """Keep-mask of Wanda's variant with an exact count: prune the smallest normalized cumulative scores."""
    m, n = scores.shape
    order = np.argsort(scores, axis=1, kind="stable")
    srt = np.take_along_axis(scores, order, axis=1)
    total = scores.sum(axis=1, keepdims=True)
    frac = np.cumsum(srt, axis=1) / np.where(total > 0, total, 1.0)
    prune_sorted = ~np_keep_top(frac.reshape(-1), m * n - num_pruned).reshape(m, n)
    prune = np.zeros((m, n), dtype=bool)
    np.put_along_axis(prune, order, prune_sorted, axis=1)
    return ~prune


@register_solver(WandaPruning, backend="scipy")
class NumpyWanda(_Ref):
    """NumPy Wanda scores ``|W| sqrt(diag G)`` and projection (and the exact-count variant)."""

    def run(self, formulation, options):
        layer = formulation.layer
        w = layer.weight.detach().cpu().double().numpy()
        scores = np.abs(w) * np.sqrt(np.clip(np.diag(layer.gram.detach().cpu().double().numpy()), 0, None))[None, :]
        if formulation.variant:
            keep = wanda_variant_np(scores, formulation.sparsity.num_pruned(layer.shape))
        else:
            keep = np_project(formulation.sparsity, scores)
        return _solution(layer, w, keep, "heuristic", damping_used=0.0)
