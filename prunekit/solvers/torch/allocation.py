"""Torch solver for :class:`~prunekit.formulations.allocation.LayerAllocation` (closed forms, float64).

Pure building blocks (public, reused by claim C19):

* :func:`softmax_fractions` -- q = softmax(-E / T);
* :func:`water_fill` -- s_l = min(s_max, c q_l) with sum_l n_l s_l = B, solved exactly in log space;
* :func:`round_counts` -- integer counts summing to B within the caps (largest remainders, ties to the
  lower index);
* :func:`global_threshold_counts` -- the B lowest scores overall within the caps.
"""

from __future__ import annotations

import math

import torch

from ...errors import FormulationError
from ...formulations.allocation import LayerAllocation
from ..base import Solver
from ..registry import register_solver
from ..solution import Solution


def softmax_fractions(energies: torch.Tensor, temperature: float) -> torch.Tensor:
    """q = softmax(-E / T) (float64): the minimizer of <q, E> + T sum q log q over the simplex."""
    return torch.softmax(-energies.double() / temperature, dim=0)


def water_fill(log_q: torch.Tensor, sizes: torch.Tensor, budget: int, s_max: float) -> torch.Tensor:
    """Continuous sparsities s = min(s_max, c exp(log_q)) with sum n s = budget (exact; log space for tiny q)."""
    n = sizes.double()
    if budget <= 0:
        return torch.zeros_like(n)
    order = torch.argsort(log_q, descending=True, stable=True)
    for k in range(len(order) + 1):
        top, rest = order[:k], order[k:]
        remaining = budget - s_max * float(n[top].sum())
        if remaining <= 0 or len(rest) == 0:
            continue
        log_c = math.log(remaining) - float(torch.logsumexp(torch.log(n[rest]) + log_q[rest], dim=0))
        if float(log_q[rest[0]]) + log_c <= math.log(s_max) + 1e-12:
            s = torch.full_like(n, s_max)
            s[rest] = torch.exp(log_q[rest] + log_c).clamp_max(s_max)
            return s
    return torch.full_like(n, s_max)  # budget == s_max * sum(n): everything saturated


def round_counts(target: torch.Tensor, budget: int, caps: torch.Tensor) -> torch.Tensor:
    """Integer counts near ``target`` (real, sum = budget, target_l <= caps_l + eps) with sum exactly ``budget``."""
    counts = torch.minimum(torch.floor(target + 1e-9).long(), caps)
    frac = target - counts.double()
    short = budget - int(counts.sum())
    while short > 0:
        eligible = (counts < caps).nonzero().squeeze(1)
        if eligible.numel() == 0:
            raise FormulationError("caps cannot absorb the budget (raise s_max).")
        key = frac[eligible]
        order = eligible[torch.argsort(-key, stable=True)]
        take = order[:short]
        counts[take] += 1
        frac[take] -= 1.0
        short = budget - int(counts.sum())
    while short < 0:  # only from numerical excess; remove from the smallest remainders
        eligible = (counts > 0).nonzero().squeeze(1)
        order = eligible[torch.argsort(frac[eligible], stable=True)]
        take = order[: -short]
        counts[take] -= 1
        frac[take] += 1.0
        short = budget - int(counts.sum())
    return counts


def global_threshold_counts(scores: list[torch.Tensor], budget: int, caps: torch.Tensor):
    """Remove the ``budget`` lowest scores overall (ties: lower layer, then lower unit), at most caps_l per layer.

    Returns (counts (L,), pruned unit indices per layer, threshold tau = the largest removed score).
    """
    flat = torch.cat([s.double() for s in scores])
    layer_of = torch.cat([torch.full((s.numel(),), i, dtype=torch.long) for i, s in enumerate(scores)])
    order = torch.argsort(flat, stable=True)  # stable: concatenation order breaks ties
    counts = torch.zeros(len(scores), dtype=torch.long)
    taken = torch.zeros(flat.numel(), dtype=torch.bool)
    got = 0
    for idx in order.tolist():
        if got == budget:
            break
        layer = int(layer_of[idx])
        if counts[layer] < caps[layer]:
            counts[layer] += 1
            taken[idx] = True
            got += 1
    pruned, start = [], 0
    for s in scores:
        pruned.append(taken[start:start + s.numel()].nonzero().squeeze(1))
        start += s.numel()
    tau = float(flat[taken].max()) if bool(taken.any()) else float("-inf")
    return counts, pruned, tau


def allocate(f: LayerAllocation) -> dict:
    """Closed-form allocation of ``f``: counts, sparsities and the rule's auxiliary outputs."""
    sizes, caps, budget = f.size_vector(), f.caps(), f.budget()
    extras: dict = {}
    if f.rule == "global_threshold":
        counts, pruned, tau = global_threshold_counts(f.score_vectors(), budget, caps)
        extras.update(pruned_units=pruned, threshold=tau)
        cont = counts.double() / sizes
    else:
        if f.rule == "softmax":
            log_q = torch.log_softmax(-f.energy_vector() / f.temperature, dim=0)
            extras["q"] = torch.exp(log_q)
        else:
            log_q = torch.zeros(sizes.numel(), dtype=torch.float64)
        cont = water_fill(log_q, sizes, budget, f.s_max)
        counts = round_counts(cont * sizes.double(), budget, caps)
    extras.update(counts=counts, continuous=cont)
    return extras


@register_solver(LayerAllocation, backend="torch")
class TorchAllocation(Solver):
    """Closed-form per-layer allocation (softmax water-filling, global threshold, uniform)."""

    def run(self, formulation: LayerAllocation, options) -> Solution:
        extras = allocate(formulation)
        counts = extras["counts"]
        sizes = formulation.size_vector()
        return Solution(weights=counts.double() / sizes, mask=counts > 0, status="optimal",
                        stats={"iterations": 0, "budget": formulation.budget()}, extras=extras)
