"""Brute-force exact optima of the masked reconstruction MIP and of SPAP's relaxed model (toy layers).

Once the mask is fixed the weights follow by exact least squares (methods.md §1 facts 1-2, C1), so the
MIP optimum is a minimum over masks of the restored error:

* ``Channels``             -- every choice of k pruned groups, one shared kept set S, W_S = B_S A_SS^+;
* ``Unstructured(row)``/NM -- rows separate: every kept set (every N:M pattern product) is solved for all
                              rows at once and each row keeps its best;
* ``Unstructured(layer)``  -- the best error of every row for every kept count (all 2^n sets), then an
                              exact dynamic program over the per-row counts that meet the layer total.

A = G, B = W G (A = G*, B = C with error correction).  float64 numpy; SVD least squares (rcond 1e-12) so
singular G_SS is handled.  ``best_channel_set(layer, spec)`` is the public entry for gap reports.
"""

from __future__ import annotations

import itertools
import math
from typing import Iterable, Iterator

import numpy as np
import torch

from ...formulations.mip import MaskedReconstructionMIP
from ...formulations.reductions_spap import RelaxedChannelMIP
from ...formulations.sparsity import NM, Channels, Unstructured
from ..base import Solver
from ..options import ReferenceOptions
from ..registry import register_solver
from ..solution import Solution

MAX_SUBSETS = 60_000


class _Problem:
    """Float64 numpy statistics with the per-row restored error of any kept set."""

    def __init__(self, layer):
        self.w = layer.weight.detach().double().cpu().numpy()
        if layer.has_error_correction:
            self.a = layer.gram_star.detach().double().cpu().numpy()
            self.b = layer.cross.detach().double().cpu().numpy()
            g = layer.gram.detach().double().cpu().numpy()
            self.c = np.einsum("ij,jk,ik->i", self.w, g, self.w)
        else:
            self.a = layer.gram.detach().double().cpu().numpy()
            self.b = self.w @ self.a
            self.c = np.einsum("ij,jk,ik->i", self.w, self.a, self.w)
        self.m, self.n = self.w.shape

    def restore(self, kept: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(W_hat (m, n), per-row errors (m,)) for the kept column indices ``kept``."""
        w_hat = np.zeros_like(self.w)
        if len(kept):
            a_ss = self.a[np.ix_(kept, kept)]
            sol = np.linalg.lstsq(a_ss, self.b[:, kept].T, rcond=1e-12)[0]
            w_hat[:, kept] = sol.T
        errs = 0.5 * (np.einsum("ij,jk,ik->i", w_hat, self.a, w_hat) - 2 * np.sum(w_hat * self.b, axis=1) + self.c)
        return w_hat, np.maximum(errs, 0.0)


def _channel_kept_sets(spec: Channels, n: int) -> Iterator[np.ndarray]:
    index = spec.group_index(n)
    k = spec.groups_pruned(n)
    for pruned in itertools.combinations(range(len(index)), k):
        drop = {c for g in pruned for c in index[g]}
        yield np.array([c for c in range(n) if c not in drop], dtype=np.int64)


def _nm_kept_sets(spec: NM, n: int) -> Iterator[np.ndarray]:
    patterns = list(itertools.combinations(range(spec.m), spec.m - spec.n))
    for combo in itertools.product(patterns, repeat=n // spec.m):
        yield np.array([blk * spec.m + j for blk, pat in enumerate(combo) for j in pat], dtype=np.int64)


def num_masks(spec, shape: tuple[int, int]) -> int:
    """How many kept sets the brute force solves for ``spec`` on ``shape``."""
    m, n = shape
    if isinstance(spec, Channels):
        return math.comb(spec.num_groups(n), spec.groups_pruned(n))
    if isinstance(spec, NM):
        return math.comb(spec.m, spec.n) ** (n // spec.m)
    if isinstance(spec, Unstructured):
        return math.comb(n, spec.pruned_per_row(n)) if spec.scope == "row" else 2 ** n
    raise TypeError(f"no brute force for {type(spec).__name__}")


def _best_shared(prob: _Problem, sets: Iterable[np.ndarray]) -> tuple[np.ndarray, np.ndarray, int]:
    """Best single kept set for the whole layer: (kept, W_hat, count)."""
    best, best_kept, best_w, count = math.inf, None, None, 0
    for kept in sets:
        count += 1
        w_hat, errs = prob.restore(kept)
        total = float(errs.sum())
        if total < best:
            best, best_kept, best_w = total, kept, w_hat
    return best_kept, best_w, count


def _best_per_row(prob: _Problem, sets: Iterable[np.ndarray]) -> tuple[np.ndarray, np.ndarray, int]:
    """Each row's best kept set among ``sets``: (W_hat (m, n), keep-mask (m, n), count)."""
    best = np.full(prob.m, math.inf)
    w_best = np.zeros_like(prob.w)
    keep = np.zeros(prob.w.shape, dtype=bool)
    count = 0
    for kept in sets:
        count += 1
        w_hat, errs = prob.restore(kept)
        better = errs < best
        best[better] = errs[better]
        w_best[better] = w_hat[better]
        row = np.zeros(prob.n, dtype=bool)
        row[kept] = True
        keep[better] = row
    return w_best, keep, count


def _best_layer_scope(prob: _Problem, pruned_total: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Exact per-layer unstructured optimum: best row error per kept count, then a DP over counts."""
    m, n = prob.m, prob.n
    err = np.full((m, n + 1), math.inf)
    rows = np.zeros((m, n + 1, n))
    sets = np.zeros((m, n + 1, n), dtype=bool)
    count = 0
    for size in range(n + 1):
        for kept in itertools.combinations(range(n), size):
            count += 1
            w_hat, errs = prob.restore(np.array(kept, dtype=np.int64))
            better = errs < err[:, size]
            err[better, size] = errs[better]
            rows[better, size] = w_hat[better]
            row = np.zeros(n, dtype=bool)
            row[list(kept)] = True
            sets[better, size] = row
    # dp[i, p] = best error of the first i rows with p weights pruned among them
    dp = np.full((m + 1, pruned_total + 1), math.inf)
    choice = np.zeros((m + 1, pruned_total + 1), dtype=np.int64)
    dp[0, 0] = 0.0
    for i in range(m):
        for p in range(pruned_total + 1):
            if not math.isfinite(dp[i, p]):
                continue
            for pr in range(0, min(n, pruned_total - p) + 1):
                val = dp[i, p] + err[i, n - pr]
                if val < dp[i + 1, p + pr]:
                    dp[i + 1, p + pr] = val
                    choice[i + 1, p + pr] = pr
    w_best = np.zeros_like(prob.w)
    keep = np.zeros((m, n), dtype=bool)
    p = pruned_total
    for i in range(m, 0, -1):
        pr = choice[i, p]
        w_best[i - 1] = rows[i - 1, n - pr]
        keep[i - 1] = sets[i - 1, n - pr]
        p -= pr
    return w_best, keep, count


def best_channel_set(layer, spec: Channels) -> tuple[torch.Tensor, float]:
    """Brute-force best kept columns for a Channels spec with exact (undamped) restoration.

    Returns ``(kept_columns (long, ascending), objective)`` where objective = 1/2 ||W_hat X - W X||^2 of
    the C1-restored weights.  Enumerates C(n_groups, k) sets: keep n_groups <= ~16.
    """
    spec.validate_for(layer.shape)
    prob = _Problem(layer)
    kept, w_hat, _ = _best_shared(prob, _channel_kept_sets(spec, layer.in_features))
    return torch.from_numpy(kept.copy()), float(layer.reconstruction_error(torch.from_numpy(w_hat)))


def _solution(layer, w_hat: np.ndarray, keep_mask: np.ndarray, kept_columns=None, **extra) -> Solution:
    dev, dt = layer.weight.device, layer.weight.dtype
    w = torch.from_numpy(np.where(keep_mask, w_hat, 0.0))
    return Solution(
        weights=w.to(device=dev, dtype=dt),
        mask=torch.from_numpy(keep_mask).to(dev),
        status="optimal",
        kept_columns=None if kept_columns is None else torch.from_numpy(np.asarray(kept_columns, dtype=np.int64)).to(dev),
        **extra,
    )


@register_solver(MaskedReconstructionMIP, backend="bruteforce")
class BruteForceMIP(Solver):
    """Exact MIP optimum by enumerating masks (see the module docstring)."""

    handles_integer = True
    exact = True
    max_in_features = 16
    devices = ("cpu",)
    options_type = ReferenceOptions

    def _accepts(self, formulation):
        count = num_masks(formulation.sparsity, formulation.layer.shape)
        if count > MAX_SUBSETS:
            return False, (f"{count} masks to enumerate > {MAX_SUBSETS}. " + MaskedReconstructionMIP.advice)
        return True, ""

    def run(self, formulation, options) -> Solution:
        layer, spec = formulation.layer, formulation.sparsity
        prob = _Problem(layer)
        m, n = layer.shape
        if isinstance(spec, Channels):
            kept, w_hat, count = _best_shared(prob, _channel_kept_sets(spec, n))
            keep = np.zeros((m, n), dtype=bool)
            keep[:, kept] = True
            return _solution(layer, w_hat, keep, kept, stats={"masks_enumerated": count})
        if isinstance(spec, NM):
            w_hat, keep, count = _best_per_row(prob, _nm_kept_sets(spec, n))
        elif spec.scope == "row":
            k = n - spec.pruned_per_row(n)
            sets = (np.array(c, dtype=np.int64) for c in itertools.combinations(range(n), k))
            w_hat, keep, count = _best_per_row(prob, sets)
        else:
            w_hat, keep, count = _best_layer_scope(prob, spec.num_pruned((m, n)))
        return _solution(layer, w_hat, keep, stats={"masks_enumerated": count})


@register_solver(RelaxedChannelMIP, backend="bruteforce")
class BruteForceRelaxedChannels(Solver):
    """Exact optimum of the [0, 1]-relaxed channel model: min over supports T with |T| >= k (C4).

    For a support T the best point zeroes the groups of T (s = k/|T| on T) and restores the rest; the
    minimum over all |T| >= k is returned, ties going to the smallest |T|.  ``extras["best_by_size"]``
    maps |T| to the best error with that support size (monotone non-decreasing by C4).
    """

    handles_integer = True
    exact = True
    max_in_features = 14
    devices = ("cpu",)
    options_type = ReferenceOptions

    def _accepts(self, formulation):
        total = 2 ** formulation.num_groups
        if total > MAX_SUBSETS:
            return False, f"{total} supports to enumerate > {MAX_SUBSETS}; use fewer channel groups."
        return True, ""

    def run(self, formulation, options) -> Solution:
        layer, spec = formulation.layer, formulation.sparsity
        m, n = layer.shape
        index = spec.group_index(n)
        k, ng = formulation.k, formulation.num_groups
        prob = _Problem(layer)
        best, best_t, best_w, by_size = math.inf, None, None, {}
        for size in range(k, ng + 1):
            for t in itertools.combinations(range(ng), size):
                drop = {c for g in t for c in index[g]}
                kept = np.array([c for c in range(n) if c not in drop], dtype=np.int64)
                w_hat, errs = prob.restore(kept)
                total = float(errs.sum())
                by_size[size] = min(by_size.get(size, math.inf), total)
                if total < best:
                    best, best_t, best_w = total, t, w_hat
        s = torch.zeros(ng, dtype=torch.float64)
        s[list(best_t)] = k / len(best_t) if best_t else 0.0
        keep = np.ones((m, n), dtype=bool)
        for g in best_t:
            keep[:, index[g]] = False
        kept_cols = np.nonzero(keep[0])[0]
        return _solution(layer, best_w, keep, kept_cols, extras={"s": s, "best_by_size": by_size},
                         stats={"supports_enumerated": sum(math.comb(ng, j) for j in range(k, ng + 1))})
