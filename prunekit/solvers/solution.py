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
        The formulation's objective at the solution (filled in by ``solve`` from ``residuals["objective"]``):
        for reconstruction formulations the *undamped* error ``1/2 ||W_hat X(*) - W X||_F^2`` on the layer's
        statistics; the lasso value for the pure-lasso ``L1Relaxation``; the block error for block problems.
        Both damping conventions sit beside it in ``residuals``:
        ``residuals["objective_undamped"]`` (the reconstruction error, no damping; equals ``objective`` for
        reconstruction formulations) and ``residuals["objective_damped"]`` (that plus
        ``1/2 sum_j delta_j ||W_hat[:, j] - W[:, j]||^2``, the problem with ``G + lambda I`` that the
        restoration and OBS solvers minimize), both computed once by ``Formulation.residuals``.
    status : str
        "optimal" (proven optimum of the stated problem), "solved" (the solver's declared certificate holds:
        converged, or closed form of a heuristic), "max_iter" (an iterative solver stopped on its iteration
        limit before its certificate held), "heuristic" (no certificate: a heuristic, or a fixed schedule).
    bias : Tensor (m,), optional
        A new bias (FLAP's compensation); None when the bias is unchanged.
    kept_columns : Tensor (k,), long, optional
        Indices of kept input columns, for structured (channel/head) solutions.
    residuals : mapping
        Certificates computed by ``formulation.residuals`` (feasibility, objective, stationarity ...).
    stats : mapping
        Solver statistics: time_s, damping_used, ...; iterative solvers
        (:class:`~prunekit.solvers.iterative.IterativeSolver`) add their ``IterationStats`` under the fixed keys
        ``iterations, max_iter, tol, converged, final_residual, stop_reason, certificate``.
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
