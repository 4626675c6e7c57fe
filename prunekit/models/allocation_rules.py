"""Per-target sparsities from dense-pass statistics: the model-level allocation rules, with an exact global budget.

:mod:`prunekit.models.allocate` runs one pass over the **dense** model and summarizes each target (a linear module
for unstructured sparsity, a coupled group for channels) as a :class:`TargetStats`.  The rules here turn those
summaries into per-target sparsities s_l meeting one global budget on **weights** (for channels: the weights of
every module a unit spans, i.e. parameters without biases):

* ``"softmax"`` -- StructPrune's closed form (methods.md §7.3, [derived], claim C19).  Energies
  E_l = mean_l / mean_k(mean_k), mean_l the target's mean importance score (Wanda |W_ij| ||X_j||_2 for modules; the
  method's column score summed over a unit for groups); q = softmax(-E / T) minimizes <q, E> + T sum q log q over
  the simplex; s_l = min(s_max, c q_l) with c such that sum_l n_l s_l = S sum_l n_l, n_l the target's weights.
  This is ``prunekit.solve(LayerAllocation(rule="softmax", sizes=n))`` exactly (water-filling, closed form).
* ``"global_threshold"`` -- one threshold on per-target normalized scores (StructPrune's explicit rule, [derived]);
  ``LayerAllocation(rule="global_threshold")`` on the score summaries.
* ``"owl"`` -- Outlier Weighed Layerwise sparsity (Yin et al., ICML 2024; official code luuyin/OWL).  Per decoder
  block b, the outlier ratio D_b = #{Wanda scores > M x mean score} / #scores over all its targeted linear modules
  together; D~ = (D - min D) / (max D - min D) (all 0 when the D are equal); s_b = S - 2 lambda (D~_b - mean_w D~)
  (the code's density 1 - S + 2 lambda D~_b - mean(2 lambda D~), with the mean weighted by block weights so that
  sum_b n_b s_b = S sum_b n_b also when blocks differ in size; equal blocks give the paper's rule exactly).  More
  outliers -> lower sparsity.  Defaults M = 5, lambda = 0.08 (the repository's scripts for LLaMA).
* ``"adaptive"`` -- FLAP's adaptive structure AL-AM (An et al., AAAI 2024; CASIA-IVA-Lab/FLAP): the method's column
  scores of each target (squared for attention targets, as FLAP squares its head metric) are standardized per
  target, (x - mean) / std, a unit scores the mean of its columns, and one global threshold over all units of all
  targets (MLP and attention alike) removes the lowest-scoring units whose weights add up to the budget, each unit
  weighing its parameter count (FLAP's 512/3 for a LLaMA-7B head against 1 for a neuron).

Every rule's sparsities then go through :func:`meet_budget` (clip to [0, s_max], one additive shift so that
sum_l n_l s_l = S sum_l n_l: a no-op for rules that already meet it) and :func:`realize`, which rounds them to what
each target can actually prune (:class:`Grid`: whole per-row counts for row-scoped methods, whole units -- and kept
widths that are multiples of ``round_to`` -- for channels).  Guarantee: the pruned weights sum to
B = round(S sum_l n_l) up to less than one grid step of one target (``max_l step_l``; exact where steps are single
weights), and no target exceeds ``s_max``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from ..errors import FormulationError

RULES = ("uniform", "softmax", "global_threshold", "owl", "adaptive")
RULE_STRUCTURES = {"uniform": ("unstructured", "nm", "channels"), "softmax": ("unstructured", "channels"),
                   "global_threshold": ("unstructured", "channels"), "owl": ("unstructured",),
                   "adaptive": ("channels",)}


def check_allocation(allocation, kind: str, owl_m, owl_lambda) -> None:
    """Refuse an allocation rule that cannot apply to structure ``kind`` or OWL options out of range.

    Raises
    ------
    FormulationError
        Naming the field, the value and the fix.
    """
    if allocation == "auto":  # resolved per run (models.allocation_default); only its OWL options are checked
        allocation = "uniform"
    if not isinstance(allocation, str) or allocation not in RULES:
        raise FormulationError(f"allocation must be one of {['auto', *RULES]}, got {allocation!r}. Fix: use one of "
                               f"those (auto: the measured best; owl for unstructured, adaptive for channels, softmax "
                               f"for either).")
    if kind == "nm" and allocation != "uniform":
        raise FormulationError(f"allocation={allocation!r} cannot change an N:M ratio (N:M prunes a fixed n/m of "
                               f"every group). Fix: use allocation='uniform' with an N:M structure.")
    if kind not in RULE_STRUCTURES[allocation]:
        fix = ("'adaptive' (FLAP's AL-AM) or 'softmax'" if kind == "channels" else "'owl' or 'softmax'")
        raise FormulationError(f"allocation={allocation!r} applies to structure {RULE_STRUCTURES[allocation][0]!r} "
                               f"only, not {kind!r}. Fix: use {fix} for {kind}.")
    for name, value, low, high in (("owl_m", owl_m, 0.0, math.inf), ("owl_lambda", owl_lambda, 0.0, 1.0)):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        if not ok or not (low < value if name == "owl_m" else low <= value < high):
            raise FormulationError(f"{name} must be {'a finite number > 0' if name == 'owl_m' else 'in [0, 1)'}, "
                                   f"got {value!r}. Fix: e.g. {'owl_m=5' if name == 'owl_m' else 'owl_lambda=0.08'} "
                                   f"(OWL's defaults).")


@dataclass(frozen=True)
class Grid:
    """What one target can prune: ``count`` units of ``unit_weight`` weights each, ``count`` in ``counts``
    (sorted realizable counts from 0) or, when ``counts`` is None, any integer in [0, num_units - 1]."""

    num_units: int
    unit_weight: int
    counts: Optional[tuple[int, ...]] = None

    @property
    def weights(self) -> int:
        return self.num_units * self.unit_weight

    def cap(self, s_max: float) -> int:
        """The largest realizable count with count <= s_max * num_units."""
        top = min(int(math.floor(s_max * self.num_units + 1e-9)), self.num_units - 1)
        if self.counts is None:
            return max(top, 0)
        return max([c for c in self.counts if c <= top], default=0)

    def floor(self, units: float, cap: int) -> int:
        """The largest realizable count <= min(units, cap)."""
        bound = min(cap, int(math.floor(units + 1e-9)))
        if self.counts is None:
            return max(bound, 0)
        return max([c for c in self.counts if c <= bound], default=0)

    def step(self, count: int, cap: int, up: bool) -> Optional[int]:
        """The next realizable count above (``up``) or below ``count`` within [0, cap]; None when there is none."""
        if self.counts is None:
            nxt = count + 1 if up else count - 1
        else:
            cands = [c for c in self.counts if (c > count if up else c < count)]
            nxt = (min(cands) if up else max(cands)) if cands else None
        return nxt if nxt is not None and 0 <= nxt <= cap else None


@dataclass(frozen=True)
class TargetStats:
    """The dense pre-pass summary of one target (see :mod:`prunekit.models.allocate`).

    ``score_mean``: mean importance score (per weight for modules, per unit for groups); ``scores``: the unit
    scores (groups; standardized for ``adaptive``) or a score summary (modules, ``global_threshold`` only);
    ``outliers`` / ``num_scores``: Wanda scores above ``owl_m`` x the block's mean score, and the scores counted
    (``owl`` only)."""

    key: str
    block: int
    grid: Grid
    score_mean: float = 0.0
    scores: Optional[torch.Tensor] = None
    score_sum: float = 0.0
    num_scores: int = 0
    outliers: Optional[int] = None


@dataclass(frozen=True)
class Allocation:
    """A model-level allocation: per-target continuous sparsities (after :func:`meet_budget`), realized counts
    (units of each target's grid), the ratios to hand the runner (ratio_l = counts_l / num_units_l), the budget
    B (weights) and the pruned weights."""

    keys: tuple[str, ...]
    continuous: tuple[float, ...]
    counts: tuple[int, ...]
    ratios: dict
    budget: int
    pruned_weights: int

    @property
    def budget_error(self) -> int:
        return self.pruned_weights - self.budget


# ---------------------------------------------------------------------------------------------- rules
def owl_block_sparsities(outlier_ratios: Sequence[float], block_weights: Sequence[int], sparsity: float,
                         lam: float) -> torch.Tensor:
    """OWL: s_b = S - 2 lam (D~_b - sum_b n_b D~_b / sum_b n_b), D~ the outlier ratios scaled to [0, 1] (float64)."""
    d = torch.as_tensor(list(outlier_ratios), dtype=torch.float64)
    w = torch.as_tensor(list(block_weights), dtype=torch.float64)
    spread = float(d.max() - d.min()) if d.numel() else 0.0
    dn = (d - d.min()) / spread if spread > 0 else torch.zeros_like(d)
    return sparsity - 2.0 * lam * (dn - float((w * dn).sum() / w.sum()))


def standardized_unit_scores(columns: torch.Tensor, units: Sequence[Sequence[int]], square: bool) -> torch.Tensor:
    """FLAP's per-target standardization: (c - mean c) / std c over the target's columns (``c**2`` first when
    ``square``), then each unit's mean over its columns (float64; a constant score gives zeros)."""
    c = columns.double().flatten()
    c = c * c if square else c
    std = float(c.std()) if c.numel() > 1 else 0.0
    z = (c - c.mean()) / std if std > 0 else torch.zeros_like(c)
    return torch.stack([z[list(u)].mean() for u in units])


def adaptive_sparsities(stats: Sequence[TargetStats], sparsity: float, s_max: float) -> torch.Tensor:
    """One global threshold on the (standardized) unit scores of every target: remove the lowest units, each
    weighing its parameters, until the removed weights are closest to the budget (ties: target order, then unit)."""
    budget = round(sparsity * sum(s.grid.weights for s in stats))
    flat = torch.cat([s.scores.double().flatten() for s in stats])
    owner = torch.cat([torch.full((s.scores.numel(),), i, dtype=torch.long) for i, s in enumerate(stats)])
    caps = [s.grid.cap(s_max) for s in stats]
    counts = [0] * len(stats)
    removed = 0
    for idx in torch.argsort(flat, stable=True).tolist():
        t = int(owner[idx])
        w = stats[t].grid.unit_weight
        if counts[t] >= caps[t]:
            continue
        if abs(removed + w - budget) >= abs(removed - budget):
            break
        counts[t] += 1
        removed += w
    return torch.tensor([c / s.grid.num_units for c, s in zip(counts, stats)], dtype=torch.float64)


def _layer_allocation(stats: Sequence[TargetStats], rule: str, sparsity: float, temperature: float, s_max: float):
    from .. import solve
    from ..formulations import LayerAllocation

    if rule == "softmax":
        sizes = [s.grid.weights for s in stats]
        means = torch.tensor([s.score_mean for s in stats], dtype=torch.float64)
        energies = means / means.mean().clamp_min(1e-300)
        problem = LayerAllocation(sizes=sizes, mean_sparsity=float(sparsity), energies=energies, rule="softmax",
                                  temperature=float(temperature), s_max=float(s_max))
    else:
        sizes = [s.scores.numel() for s in stats]
        problem = LayerAllocation(sizes=sizes, mean_sparsity=float(sparsity), rule="global_threshold",
                                  s_max=float(s_max), scores=tuple(s.scores for s in stats))
    return torch.as_tensor(solve(problem).extras["continuous"], dtype=torch.float64)


# ---------------------------------------------------------------------------------------------- the budget
def meet_budget(s: torch.Tensor, weights: Sequence[int], sparsity: float, s_max: float) -> torch.Tensor:
    """clip(s + c, 0, s_max) with the one shift c for which sum_l n_l s_l = S sum_l n_l (bisection to machine
    precision; f(c) is continuous and nondecreasing).  ``s`` unchanged (c = 0) when it lies within [0, s_max] and
    meets the budget within one weight (e.g. LayerAllocation's solution for round(S sum_l n_l))."""
    s = s.double()
    n = torch.as_tensor(list(weights), dtype=torch.float64)
    target = sparsity * float(n.sum())

    def mass(c: float) -> float:
        return float((n * (s + c).clamp(0.0, s_max)).sum())

    if abs(mass(0.0) - target) <= 1.0 and bool(((s >= 0) & (s <= s_max)).all()):  # within one weight: as is
        return s.clone()
    lo, hi = -1.0 - float(s.max()), 1.0 + s_max - float(s.min())
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if mass(mid) < target else (lo, mid)
    return (s + hi).clamp(0.0, s_max)


def realize(grids: Sequence[Grid], s: torch.Tensor, budget: int, s_max: float) -> list[int]:
    """Realizable counts near ``s`` (sparsities) whose weights sum to ``budget`` within one grid step.

    Floors every target to its grid, then moves single steps (largest fractional remainder first) while a step
    does not pass the budget, and finally one more step when that lands closer.  Raises FormulationError when
    the caps cannot hold the budget.
    """
    caps = [g.cap(s_max) for g in grids]
    if sum(c * g.unit_weight for c, g in zip(caps, grids)) < budget - max(g.unit_weight for g in grids):
        raise FormulationError(f"max_sparsity={s_max:g} caps the targets below the budget of {budget} weights. "
                               f"Fix: raise max_sparsity.")
    want = [float(v) * g.num_units for v, g in zip(s.tolist(), grids)]
    counts = [g.floor(w, cap) for g, w, cap in zip(grids, want, caps)]
    deficit = budget - sum(c * g.unit_weight for c, g in zip(counts, grids))
    while deficit != 0:
        up = deficit > 0
        moves = []
        for i, g in enumerate(grids):
            nxt = g.step(counts[i], caps[i], up)
            if nxt is not None:
                span = nxt - counts[i]
                moves.append(((want[i] - counts[i]) / span, i, nxt, abs(span) * g.unit_weight))
        if not moves:
            break
        moves.sort(key=lambda m: (-m[0], m[1]))
        fitting = [m for m in moves if m[3] <= abs(deficit)]
        if fitting:
            _, i, nxt, cost = fitting[0]
        else:  # every step passes the budget: take the cheapest only if it lands closer
            _, i, nxt, cost = min(moves, key=lambda m: (m[3], -m[0], m[1]))
            if cost - abs(deficit) >= abs(deficit):
                break
        counts[i] = nxt
        deficit -= cost if up else -cost
        if not fitting:
            break
    return counts


# ---------------------------------------------------------------------------------------------- entry point
def allocate_targets(stats: Sequence[TargetStats], rule: str, sparsity: float, *, temperature: float = 1.0,
                     max_sparsity: float = 0.95, owl_lambda: float = 0.08,
                     ratio_of=None) -> Allocation:
    """Per-target sparsities of ``rule`` meeting the weight budget round(S sum_l n_l) (see the module docstring).

    ``ratio_of(i, count)``: the ratio to hand the runner for ``count`` units of target i (default count / units);
    the caller may nudge it so that the runner's own rounding gives back ``count``.
    """
    if rule not in RULES or rule == "uniform":
        raise FormulationError(f"allocate_targets needs a non-uniform rule of {list(RULES[1:])}, got {rule!r}.")
    if not stats:
        raise FormulationError("no targets to allocate. Fix: check the recipe's targets / ignore patterns.")
    weights = [s.grid.weights for s in stats]
    if rule in ("softmax", "global_threshold"):
        s = _layer_allocation(stats, rule, sparsity, temperature, max_sparsity)
    elif rule == "owl":
        blocks = sorted({t.block for t in stats})
        ratio = {b: sum(t.outliers for t in stats if t.block == b) / max(1, sum(t.num_scores for t in stats
                                                                               if t.block == b)) for b in blocks}
        mass = {b: sum(t.grid.weights for t in stats if t.block == b) for b in blocks}
        per_block = owl_block_sparsities([ratio[b] for b in blocks], [mass[b] for b in blocks], sparsity, owl_lambda)
        of = dict(zip(blocks, per_block.tolist()))
        s = torch.tensor([of[t.block] for t in stats], dtype=torch.float64)
    else:
        s = adaptive_sparsities(stats, sparsity, max_sparsity)
    if rule != "adaptive":  # adaptive already removes whole units up to the budget: a shift would blur them
        s = meet_budget(s, weights, sparsity, max_sparsity)
    budget = round(sparsity * sum(weights))
    grids = [t.grid for t in stats]
    counts = realize(grids, s, budget, max_sparsity)
    ratio_of = ratio_of or (lambda i, c: c / grids[i].num_units)
    ratios = {t.key: float(ratio_of(i, c)) for i, (t, c) in enumerate(zip(stats, counts))}
    pruned = sum(c * g.unit_weight for c, g in zip(counts, grids))
    return Allocation(keys=tuple(t.key for t in stats), continuous=tuple(s.tolist()), counts=tuple(counts),
                      ratios=ratios, budget=budget, pruned_weights=pruned)


__all__ = ["Allocation", "Grid", "RULES", "TargetStats", "adaptive_sparsities", "allocate_targets",
           "check_allocation", "meet_budget", "owl_block_sparsities", "realize", "standardized_unit_scores"]
