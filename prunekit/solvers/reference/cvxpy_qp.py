"""CVXPY reference QPs (float64, CPU): fixed-mask restoration and MRP Solution M as equality-constrained QPs.

.. math::

    \\min_{V} \\tfrac12 \\lVert (V - W) L \\rVert_F^2 \\quad \\text{s.t.} \\quad V_{ij} = 0 \\text{ for } M_{ij} = 0,
    \\qquad G + \\lambda I = L L^T,

solved with Clarabel (interior point) -- a second, solver-based reference next to the closed forms
(claims C1, C12).  For ``MultipleRemoval`` the mask is computed by the NumPy rule of
:mod:`~prunekit.solvers.reference.scipy_ref` and the QP gives Solution M (only ``update="solution_m"``,
``block_size=None``).  CVXPY is imported inside ``run``.
"""

from __future__ import annotations

import numpy as np

from ...formulations.mrp import MultipleRemoval
from ...formulations.restoration import FixedMaskRestoration
from ..base import Solver
from ..options import ReferenceOptions
from ..registry import register_solver
from .scipy_ref import _solution, mrp_mask, np_cholesky, np_inverse, np_layer


def masked_qp(w: np.ndarray, g: np.ndarray, lam: float, keep: np.ndarray, tol: float = 1e-10) -> tuple[np.ndarray, float]:
    """Solve the fixed-mask QP with CVXPY; returns ``(V, lambda_used)``."""
    import cvxpy as cp

    r, lam = np_cholesky(g, lam)  # g + lam I = R^T R, so L = R^T
    scale = float(np.abs(w).max()) or 1.0
    w_s = w / scale  # scale the data to O(1) for the interior-point tolerances
    v = cp.Variable(w.shape)
    objective = cp.Minimize(0.5 * cp.sum_squares((v - w_s) @ r.T))
    constraints = [cp.multiply(v, (~keep).astype(float)) == 0]
    problem = cp.Problem(objective, constraints)
    try:
        problem.solve(solver=cp.CLARABEL, tol_gap_abs=tol, tol_gap_rel=tol, tol_feas=tol)
    except (cp.error.SolverError, TypeError):
        problem.solve(solver=cp.CLARABEL)
    if v.value is None or problem.status not in ("optimal", "optimal_inaccurate"):
        raise RuntimeError(f"CVXPY failed on the fixed-mask QP: status {problem.status}")
    return np.where(keep, v.value * scale, 0.0), lam


class _QP(Solver):
    requires = ("cvxpy",)
    options_type = ReferenceOptions
    devices = ("cpu",)
    max_weights = 144


@register_solver(FixedMaskRestoration, backend="cvxpy")
class CvxpyFixedMaskRestoration(_QP):
    """Equality-constrained QP in CVXPY (Clarabel)."""

    exact = True

    def run(self, formulation, options):
        w, g, lam = np_layer(formulation.layer)
        keep = formulation.mask.cpu().numpy().astype(bool)
        v, used = masked_qp(w, g, lam, keep, tol=min(options.tol, 1e-8))
        return _solution(formulation.layer, v, keep, "optimal", damping_used=used)


@register_solver(MultipleRemoval, backend="cvxpy")
class CvxpyMultipleRemoval(_QP):
    """MRP Solution M for the NumPy-computed mask, as a CVXPY QP."""

    def _accepts(self, formulation):
        if not formulation.exact_for_mask:
            return False, "the CVXPY twin solves only update='solution_m' with block_size=None"
        return True, ""

    def run(self, formulation, options):
        w, g, lam = np_layer(formulation.layer)
        hinv, lam = np_inverse(g, lam)
        keep = mrp_mask(formulation, w, hinv)
        v, used = masked_qp(w, g, lam, keep, tol=min(options.tol, 1e-8))
        return _solution(formulation.layer, v, keep, "solved", damping_used=used)
