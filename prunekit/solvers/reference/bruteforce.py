"""Brute-force exact optima of the masked reconstruction MIP and of SPAP's relaxed model (toy layers).

Once the mask is fixed the weights follow by exact least squares (methods.md §1 facts 1-2, C1), so the
MIP optimum is a minimum over masks of the restored error:

* ``Channels``             -- every choice of k pruned groups, one shared kept set S, W_S = B_S A_SS^+;
* ``Unstructured(row)``/NM -- rows separate: every kept set (every N:M pattern product) is solved for all
                              rows at once and each row keeps its best;
* ``Unstructured(layer)``  -- the best error of every row for every kept count (all 2^n sets), then an
                              exact dynamic program over the per-row counts that meet the layer total.

A = G, B = W G (A = G*, B = C with error correction).  Every restricted solve is exact on the stated
(A, B), including ill-conditioned, collinear, duplicated and all-zero inputs
(:class:`~prunekit.solvers.reference.exact_lstsq.RestrictedLstsq`: an equilibrated float64 solve where
its condition is certified <= 1e8, exact rational arithmetic otherwise; the former
``lstsq(A_SS, rcond=1e-12)`` said "optimal" at up to 73x the optimum for 2:4 and 2900x for channels
when cond(X_S) ~ 1e7-1e9, tests/unit/test_exact_references.py).

Status: "optimal" only when the certificate holds on the returned weights (in the layer's dtype): the
exact restricted stationarity gap sum_i r_i A_SS^+ r_i^T / 2 with r_i = (B - W_hat A)_{i,S} is at most
1e-9 of the objective plus 1e-15 of the dense energy, and the weights vanish off the mask; otherwise
"solved".  ``stats`` carries ``optimality_gap``, ``stationarity_exact`` (max |r| / max |B|),
``objective_exact`` and ``exact_solves`` (masks that needed rational arithmetic).
``best_channel_set(layer, spec)`` is the public entry for gap reports.
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
from .exact_lstsq import RestrictedLstsq

MAX_SUBSETS = 60_000


def _problem(layer) -> RestrictedLstsq:
    """The layer's exact restricted least-squares problems (A = G or G*, B = W G or C), float64."""
    return RestrictedLstsq.from_layer(layer)


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


def _best_shared(prob: RestrictedLstsq, sets: Iterable[np.ndarray]) -> tuple[np.ndarray, np.ndarray, int]:
    """Best single kept set for the whole layer: (kept, W_hat, count); ties go to the first set."""
    best, best_kept, best_w, count = math.inf, None, None, 0
    for kept in sets:
        count += 1
        w_hat, errs = prob.restore(kept)
        total = float(errs.sum())
        if total < best:
            best, best_kept, best_w = total, kept, w_hat
    return best_kept, best_w, count


def _best_per_row(prob: RestrictedLstsq, sets: Iterable[np.ndarray]) -> tuple[np.ndarray, np.ndarray, int]:
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


def _best_layer_scope(prob: RestrictedLstsq, pruned_total: int) -> tuple[np.ndarray, np.ndarray, int]:
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
    the C1-restored weights, evaluated exactly on (G, W) (``LayerData.reconstruction_error`` sums d G d
    in float64, whose rounding can exceed the objective itself when cond(G) ~ 1e16).  Enumerates
    C(n_groups, k) sets: keep n_groups <= ~16.
    """
    spec.validate_for(layer.shape)
    prob = _problem(layer)
    kept, w_hat, _ = _best_shared(prob, _channel_kept_sets(spec, layer.in_features))
    keep = np.zeros(prob.w.shape, dtype=bool)
    keep[:, kept] = True
    return torch.from_numpy(kept.copy()), prob.optimality_gap(w_hat, keep)["objective"]


def _solution(layer, prob: RestrictedLstsq, w_hat: np.ndarray, keep_mask: np.ndarray, kept_columns=None,
              stats=None, **extra) -> Solution:
    """The Solution, "optimal" only when the exact certificate holds on the weights as returned (layer dtype)."""
    dev, dt = layer.weight.device, layer.weight.dtype
    w = torch.from_numpy(np.where(keep_mask, w_hat, 0.0)).to(dtype=dt)
    ok, cert = prob.certified(w.double().numpy(), keep_mask)
    stats = {**(stats or {}), "optimality_gap": cert["gap"], "stationarity_exact": cert["stationarity"],
             "objective_exact": cert["objective"], "exact_solves": prob.exact_solves}
    return Solution(
        weights=w.to(device=dev),
        mask=torch.from_numpy(keep_mask).to(dev),
        status="optimal" if ok else "solved",
        kept_columns=None if kept_columns is None else torch.from_numpy(np.asarray(kept_columns, dtype=np.int64)).to(dev),
        stats=stats,
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
        prob = _problem(layer)
        m, n = layer.shape
        if isinstance(spec, Channels):
            kept, w_hat, count = _best_shared(prob, _channel_kept_sets(spec, n))
            keep = np.zeros((m, n), dtype=bool)
            keep[:, kept] = True
            return _solution(layer, prob, w_hat, keep, kept, stats={"masks_enumerated": count})
        if isinstance(spec, NM):
            w_hat, keep, count = _best_per_row(prob, _nm_kept_sets(spec, n))
        elif spec.scope == "row":
            k = n - spec.pruned_per_row(n)
            sets = (np.array(c, dtype=np.int64) for c in itertools.combinations(range(n), k))
            w_hat, keep, count = _best_per_row(prob, sets)
        else:
            w_hat, keep, count = _best_layer_scope(prob, spec.num_pruned((m, n)))
        return _solution(layer, prob, w_hat, keep, stats={"masks_enumerated": count})


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
        prob = _problem(layer)
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
        return _solution(layer, prob, best_w, keep, kept_cols, extras={"s": s, "best_by_size": by_size},
                         stats={"supports_enumerated": sum(math.comb(ng, j) for j in range(k, ng + 1))})
