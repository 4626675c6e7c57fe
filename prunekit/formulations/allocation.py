"""LayerAllocation: a global pruning budget -> per-layer sparsities (StructPrune allocation, [derived]).

.. warning::

   The allocation rules are a **reconstruction [derived]** of STRUPRUNE's "explicit layer-wise sparsity
   allocation" and "softmax-form allocation" (methods.md §7.3); ``rule``, ``temperature`` and ``s_max``
   are named options because the paper's exact choices are unknown.

L layers with n_l prunable units (neurons, heads, weights), a mean sparsity s_bar and the budget
B = round(s_bar * sum_l n_l) units.  Every rule returns integer counts c_l with sum_l c_l = B exactly and
0 <= c_l <= floor(s_max n_l); the sparsities are s_l = c_l / n_l.

* ``"softmax"``: layer energies E_l (higher = more important).  q = softmax(-E / T) is the minimizer of

  .. math:: \\min_{q \\in \\Delta_L} \\langle q, E \\rangle + T \\sum_l q_l \\log q_l

  (Gibbs variational principle, claim C19).  The continuous sparsities are s_l = min(s_max, c q_l) with
  the scale c chosen so that sum_l n_l s_l = B (water-filling; with equal sizes and no clipping this is
  methods.md's s_l = L s_bar q_l), then rounded by largest remainders within the caps.  T -> inf gives
  uniform sparsity, T -> 0 fills the least important layers up to s_max first.
* ``"global_threshold"``: per-layer unit scores (``scores``; divided by the layer's mean score when
  ``normalize_scores``).  One global threshold tau removes the B lowest-scoring units overall (per-layer
  caps respected; ties to the lower layer, then the lower unit): the minimizer of the total removed
  importance under the global count budget (a partition-matroid greedy).
* ``"uniform"``: s_l = s_bar, rounded to meet B.

This is not a LayerData problem: ``layer`` is None and every field is keyword-only.  (A core change would
make this cleaner: a ``Formulation`` base without the ``layer`` field, with ``LayerFormulation`` adding it,
and ``Solution.weights`` generalised to a primal vector.)  The solution's ``weights`` are the sparsities
s (L,) float64, ``mask`` is True where a layer loses at least one unit (so s is zero off the mask, as for
weights), ``extras["counts"]`` the pruned units.

Guarantee: EXACT for the stated allocation problems (closed forms). Source: StructPrune arXiv 2510.03246.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

import torch

from ..errors import FormulationError, ShapeError
from .base import Formulation, Guarantee
from .form import ProblemForm
from .layer import LayerData

RULES = ("softmax", "global_threshold", "uniform")


def _as_vec(name: str, v) -> torch.Tensor:
    t = torch.as_tensor(v, dtype=torch.float64).detach().cpu()
    if t.dim() != 1:
        raise ShapeError(f"{name} must be a 1-D vector over layers, got shape {tuple(t.shape)}.")
    if not torch.isfinite(t).all():
        raise FormulationError(f"{name} contains NaN/Inf.")
    return t


@dataclass(frozen=True, eq=False, kw_only=True)
class LayerAllocation(Formulation):
    """Per-layer sparsities from a global budget (see the module docstring)."""

    layer: Optional[LayerData] = None
    sizes: Any = None
    mean_sparsity: float = 0.5
    energies: Any = None
    rule: str = "softmax"
    temperature: float = 1.0
    s_max: float = 0.95
    scores: Optional[tuple] = None
    normalize_scores: bool = True

    guarantee = Guarantee.EXACT
    paper = "StructPrune (arXiv 2510.03246), allocation rules [derived, methods.md §7.3]"

    def __post_init__(self) -> None:
        self.validate()

    # ------------------------------------------------------------------ rules
    def validate(self) -> None:
        super().validate()
        if self.layer is not None:
            raise FormulationError("LayerAllocation is not a layer problem: leave layer=None.")
        if self.rule not in RULES:
            raise FormulationError(f"rule must be one of {RULES}, got {self.rule!r}.")
        if self.sizes is None:
            raise FormulationError("sizes= (prunable units per layer) is required.")
        sizes = _as_vec("sizes", self.sizes)
        if sizes.numel() == 0 or bool((sizes <= 0).any()) or bool((sizes != sizes.round()).any()):
            raise FormulationError(f"sizes must be positive integers, got {sizes.tolist()}.")
        s_bar = self.mean_sparsity
        if isinstance(s_bar, bool) or not isinstance(s_bar, (int, float)) or not 0.0 <= s_bar < 1.0:
            raise FormulationError(f"mean_sparsity must lie in [0, 1), got {s_bar!r}.")
        if not (isinstance(self.s_max, (int, float)) and 0.0 < self.s_max <= 1.0):
            raise FormulationError(f"s_max must lie in (0, 1], got {self.s_max!r}.")
        if self.s_max < s_bar:
            raise FormulationError(
                f"s_max = {self.s_max} is below the mean sparsity {s_bar}: the budget cannot be met. "
                f"Fix: raise s_max to at least {s_bar}.")
        if self.rule == "softmax":
            if self.energies is None:
                raise FormulationError("rule='softmax' needs energies= (one per layer).")
            if not (isinstance(self.temperature, (int, float)) and math.isfinite(self.temperature) and self.temperature > 0):
                raise FormulationError(f"temperature must be a finite number > 0, got {self.temperature!r}. "
                                       f"Fix: large T -> uniform; small T -> concentrated.")
        if self.energies is not None and _as_vec("energies", self.energies).numel() != sizes.numel():
            raise ShapeError(f"energies has {_as_vec('energies', self.energies).numel()} entries but sizes has "
                             f"{sizes.numel()}: one per layer.")
        if self.rule == "global_threshold":
            if self.scores is None:
                raise FormulationError("rule='global_threshold' needs scores= (one score vector per layer).")
            if len(self.scores) != sizes.numel():
                raise ShapeError(f"scores has {len(self.scores)} layers but sizes has {sizes.numel()}.")
            for i, sc in enumerate(self.scores):
                v = _as_vec(f"scores[{i}]", sc)
                if v.numel() != int(sizes[i]):
                    raise ShapeError(f"scores[{i}] has {v.numel()} units but sizes[{i}] = {int(sizes[i])}.")
        if int(self.caps().sum()) < self.budget():
            raise FormulationError(f"the caps floor(s_max n_l) sum to {int(self.caps().sum())} < budget "
                                   f"{self.budget()}. Fix: raise s_max.")

    # ------------------------------------------------------------------ derived quantities
    def size_vector(self) -> torch.Tensor:
        return _as_vec("sizes", self.sizes).round().long()

    def budget(self) -> int:
        """B = round(s_bar * sum n_l) pruned units (Python rounding, half to even)."""
        return int(round(self.mean_sparsity * int(self.size_vector().sum())))

    def caps(self) -> torch.Tensor:
        """floor(s_max n_l + 1e-9): the most units layer l may lose."""
        return torch.floor(self.s_max * self.size_vector().double() + 1e-9).long()

    def energy_vector(self) -> torch.Tensor:
        return _as_vec("energies", self.energies)

    def score_vectors(self) -> list[torch.Tensor]:
        out = [_as_vec(f"scores[{i}]", s) for i, s in enumerate(self.scores)]
        if self.normalize_scores:
            out = [s / (s.abs().mean() if float(s.abs().mean()) > 0 else 1.0) for s in out]
        return out

    def entropy_objective(self, q: torch.Tensor) -> float:
        """<q, E> + T sum q log q (0 log 0 = 0)."""
        q = q.double()
        ent = torch.where(q > 0, q * torch.log(q.clamp_min(1e-300)), torch.zeros_like(q))
        return float((q * self.energy_vector()).sum() + self.temperature * ent.sum())

    # ------------------------------------------------------------------ structure / certificates
    def _form(self) -> ProblemForm:
        n = int(self.size_vector().numel())
        return ProblemForm(is_mixed_integer=True, has_bilinear=False, is_convex=True, row_separable=False,
                           structured=False, num_weights=n, in_features=n)

    def objective(self, weights: torch.Tensor, bias=None) -> float:
        raise FormulationError("LayerAllocation's objective depends on the rule; read solution.residuals['objective'].")

    def residuals(self, solution) -> dict[str, float]:
        """budget_violation, cap_violations (their sum is mask_violations), rounding_error, objective, stationarity."""
        counts = torch.as_tensor(solution.extras["counts"]).long().cpu()
        sizes = self.size_vector()
        out: dict[str, float] = {}
        out["budget_violation"] = float(abs(int(counts.sum()) - self.budget()))
        out["cap_violations"] = float(int((counts > self.caps()).sum()) + int((counts < 0).sum()))
        out["mask_violations"] = out["budget_violation"] + out["cap_violations"]
        out["nonfinite"] = float((~torch.isfinite(solution.weights)).sum())
        out["sparsity_mismatch"] = float((solution.weights.double().cpu() - counts.double() / sizes).abs().max())
        cont = solution.extras.get("continuous")
        if cont is not None:
            out["rounding_error"] = float((counts.double() - sizes.double() * torch.as_tensor(cont).double()).abs().max())
        if self.rule == "softmax":
            q = torch.as_tensor(solution.extras["q"]).double()
            out["objective"] = self.entropy_objective(q)
            sup = q > 0
            g = self.energy_vector()[sup] + self.temperature * torch.log(q[sup])
            scale = float(self.energy_vector().abs().max()) + self.temperature
            out["stationarity"] = float(g.max() - g.min()) / scale if bool(sup.any()) else 0.0
            out["simplex_violation"] = float(abs(float(q.sum()) - 1.0) + float((-q).clamp_min(0).sum()))
        elif self.rule == "global_threshold":
            removed = solution.extras["pruned_units"]
            out["objective"] = float(sum(float(s[torch.as_tensor(r).long()].sum())
                                         for s, r in zip(self.score_vectors(), removed)))
        else:
            out["objective"] = 0.0
        out["relative_error"] = out["objective"]  # no dense scale for an allocation; base contract keeps the key
        return out

    def describe(self) -> dict[str, Any]:
        return {"formulation": "LayerAllocation", "layers": int(self.size_vector().numel()), "rule": self.rule,
                "mean_sparsity": self.mean_sparsity, "temperature": self.temperature, "s_max": self.s_max}

    @classmethod
    def example(cls, rng) -> "LayerAllocation":
        L = int(rng.integers(2, 7))
        sizes = tuple(int(v) for v in rng.integers(4, 40, size=L))
        rule = RULES[int(rng.integers(0, 3))]
        s_bar = float(rng.choice([0.2, 0.3, 0.5]))
        scores = tuple(torch.from_numpy(rng.gamma(2.0, size=n)) for n in sizes) if rule == "global_threshold" else None
        return cls(sizes=sizes, mean_sparsity=s_bar, energies=tuple(rng.standard_normal(L).tolist()), rule=rule,
                   temperature=float(rng.choice([0.1, 1.0, 10.0])), s_max=float(rng.choice([0.6, 0.8, 0.95])),
                   scores=scores)
