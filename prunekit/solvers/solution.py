"""Solution: the immutable record a solver returns (cvxpy's Solution, minus writing onto the problem)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

import torch


@dataclass(frozen=True, eq=False)
class Solution:
    """Result of solving one formulation.

    Attributes
    ----------
    weights : Tensor (m, n)
        The pruned (and possibly restored) weight W_hat, zero off ``mask``. Same dtype and device as the
        formulation's weight.
    mask : Tensor (m, n), bool
        Keep-mask (True = kept).
    objective : float
        The formulation's objective at the solution (filled in by ``solve`` from the formulation).
    status : str
        "optimal" (proven optimum of the stated problem), "solved" (converged / closed form of a heuristic),
        "max_iter" (iteration limit reached), "heuristic".
    bias : Tensor (m,), optional
        A new bias (FLAP's compensation); None when the bias is unchanged.
    kept_columns : Tensor (k,), long, optional
        Indices of kept input columns, for structured (channel/head) solutions.
    residuals : mapping
        Certificates computed by ``formulation.residuals`` (feasibility, objective, stationarity ...).
    stats : mapping
        Solver statistics: iterations, time_s, damping_used, ...
    provenance : mapping
        Formulation description, backend, solver class, options, library versions, device.
    extras : mapping
        Method-specific outputs (SPAP's s vector, FISTA's lambda, duals, scores).
    """

    weights: torch.Tensor
    mask: torch.Tensor
    objective: float = float("nan")
    status: str = "solved"
    bias: Optional[torch.Tensor] = None
    kept_columns: Optional[torch.Tensor] = None
    residuals: Mapping[str, float] = field(default_factory=dict)
    stats: Mapping[str, Any] = field(default_factory=dict)
    provenance: Mapping[str, Any] = field(default_factory=dict)
    extras: Mapping[str, Any] = field(default_factory=dict)

    def replace(self, **changes: Any) -> "Solution":
        """A copy with ``changes`` applied (the original is untouched)."""
        return dataclasses.replace(self, **changes)

    @property
    def sparsity(self) -> float:
        """Fraction of weights pruned by the mask."""
        return float((~self.mask.bool()).sum()) / max(self.mask.numel(), 1)
