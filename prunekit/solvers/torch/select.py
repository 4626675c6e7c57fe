"""Score-and-select heuristics without weight update: magnitude (§8.1) and Wanda with its variant (§8.2).

Scores are computed in the solver's dtype on its device; the keep-mask is the spec's projection (highest
scores kept, ties to the lower index).  Wanda's variant thresholds the per-row normalized cumulative score
``c_ir = cumsum(sorted ascending S_i)_r / sum_r S_ir`` at one alpha per layer found by bisection (start 0.4,
bracket [0, 0.8], stop within 0.001 of the target or when the bracket is narrower than 0.001); prunekit
then prunes exactly the target count of smallest ``c`` (the same threshold rule with the count made exact)
and reports the bisection's ``alpha`` and its sparsity in ``extras``.
"""

from __future__ import annotations

import torch

from ...formulations.magnitude import MagnitudePruning
from ...formulations.sparsity import _stable_topk_keep
from ...formulations.wanda import WandaPruning
from ..base import Solver
from ..options import SolverOptions
from ..registry import register_solver
from ..solution import Solution


def _finish(layer, keep: torch.Tensor, status: str = "heuristic", **extras) -> Solution:
    keep = keep.to(layer.weight.device)
    weights = layer.weight.detach().masked_fill(~keep, 0.0)
    return Solution(weights=weights, mask=keep, status=status, stats={"damping_used": 0.0}, extras=extras)


def wanda_scores(layer, dtype: torch.dtype, device) -> torch.Tensor:
    """``|W_ij| sqrt(G_jj)`` in ``dtype`` on ``device``."""
    w = layer.weight.detach().to(device=device, dtype=dtype)
    norms = layer.gram_diagonal().to(device=device, dtype=dtype).clamp_min(0).sqrt()
    return w.abs() * norms.unsqueeze(0)


def wanda_variant_prune(scores: torch.Tensor, ratio: float, num_pruned: int) -> tuple[torch.Tensor, float, float]:
    """Prune-mask of Wanda's variant with an exact count; returns ``(prune, alpha, bisection_sparsity)``."""
    sorted_scores, order = torch.sort(scores, dim=1, stable=True)
    cum = torch.cumsum(sorted_scores, dim=1)
    total = scores.sum(dim=1, keepdim=True)
    frac = cum / torch.where(total > 0, total, torch.ones_like(total))  # (m, n), nondecreasing per row

    def sparsity_at(alpha: float) -> float:
        return float((frac <= alpha).sum()) / frac.numel()

    alpha, lo, hi = 0.4, 0.0, 0.8
    cur = sparsity_at(alpha)
    while abs(cur - ratio) > 0.001 and hi - lo >= 0.001:
        if cur > ratio:
            alpha, hi = (alpha + lo) / 2.0, alpha
        else:
            alpha, lo = (alpha + hi) / 2.0, alpha
        cur = sparsity_at(alpha)
    m, n = scores.shape
    # True on the num_pruned smallest c (the complement of the stable top-k keep of c)
    prune_sorted = ~_stable_topk_keep(frac.reshape(-1), m * n - num_pruned, dim=0).reshape(m, n)
    prune = torch.zeros_like(prune_sorted).scatter_(1, order, prune_sorted)
    return prune, alpha, cur


@register_solver(MagnitudePruning, backend="torch")
class TorchMagnitude(Solver):
    """Keep the largest |W| under the spec."""

    def run(self, formulation: MagnitudePruning, options: SolverOptions) -> Solution:
        layer = formulation.layer
        w = layer.weight.detach().to(device=options.resolve_device(layer.weight), dtype=options.torch_dtype)
        return _finish(layer, formulation.sparsity.project(w.abs()))


@register_solver(WandaPruning, backend="torch")
class TorchWanda(Solver):
    """Keep the largest |W_ij| ||X_j|| under the spec (or Wanda's cumulative-score variant)."""

    def run(self, formulation: WandaPruning, options: SolverOptions) -> Solution:
        layer, spec = formulation.layer, formulation.sparsity
        scores = wanda_scores(layer, options.torch_dtype, options.resolve_device(layer.weight))
        if not formulation.variant:
            return _finish(layer, spec.project(scores))
        prune, alpha, cur = wanda_variant_prune(scores, spec.ratio, spec.num_pruned(layer.shape))
        return _finish(layer, ~prune, alpha=alpha, bisection_sparsity=cur)
