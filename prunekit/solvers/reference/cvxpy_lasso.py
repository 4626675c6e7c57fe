"""CVXPY reference for the pure-lasso mode of :class:`~prunekit.formulations.l1.L1Relaxation`.

Solves, in float64 on CPU with an interior-point solver (Clarabel when installed),

.. math::

    \\min_W \\tfrac12 \\lVert W R \\rVert_F^2 - \\langle W, C \\rangle + \\tfrac12 \\operatorname{tr}(W_0 G W_0^T)
           + \\lambda \\lVert W \\rVert_1, \\qquad R R^T = G^*,

which is the lasso (3) of methods.md §5.1.  Only ``project=False, adaptive=False`` is accepted: the projected
FISTAPruner loop is a heuristic with no convex model (its twin is ``reference/scipy_lasso.py``).
"""

from __future__ import annotations

import numpy as np
import torch

from ...formulations.l1 import L1Relaxation
from ..base import Solver
from ..options import ReferenceOptions
from ..registry import register_solver
from ..solution import Solution


def polish(value: np.ndarray, gs: np.ndarray, c: np.ndarray, lam: float) -> np.ndarray:
    """Make an interior-point lasso solution exactly sparse (per row, standard support polishing).

    Take the support S (|w| > 1e-7 max|w|) and signs sigma of the row, solve the KKT system on S,
    ``G*_SS w_S = c_S - lam sigma``, and accept the result when it certifies optimality (signs kept,
    ``|grad_j| <= lam`` off S); otherwise keep the raw row.
    """
    out = value.copy()
    thr = 1e-7 * max(np.abs(value).max(), 1e-300)
    for i in range(value.shape[0]):
        s = np.abs(value[i]) > thr
        row = np.zeros_like(value[i])
        if s.any():
            sigma = np.sign(value[i, s])
            try:
                row[s] = np.linalg.solve(gs[np.ix_(s, s)], c[i, s] - lam * sigma)
            except np.linalg.LinAlgError:
                continue
            if not np.all(np.sign(row[s]) == sigma):
                continue
        grad = row @ gs - c[i]
        if np.all(np.abs(grad[~s]) <= lam * (1 + 1e-9)):
            out[i] = row
    return out


@register_solver(L1Relaxation, backend="cvxpy")
class CvxpyLasso(Solver):
    """Exact (interior-point) lasso optimum for toy layers."""

    requires = ("cvxpy",)
    exact = True
    max_weights = 4096
    options_type = ReferenceOptions

    def _accepts(self, formulation: L1Relaxation) -> tuple[bool, str]:
        if formulation.project:
            return False, "only the pure-lasso mode (project=False); use backend='scipy' for the projected loop"
        return True, ""

    def run(self, formulation: L1Relaxation, options: ReferenceOptions) -> Solution:
        import cvxpy as cp

        f = formulation
        gs = f.gram_star().cpu().numpy()
        c = f.cross().cpu().numpy()
        evals, evecs = np.linalg.eigh(0.5 * (gs + gs.T))
        r = evecs * np.sqrt(np.clip(evals, 0.0, None))
        lam = f.initial_lambda()
        m, n = c.shape
        w = cp.Variable((m, n))
        obj = 0.5 * cp.sum_squares(w @ r) - cp.sum(cp.multiply(w, c)) + lam * cp.sum(cp.abs(w))
        prob = cp.Problem(cp.Minimize(obj))
        if "CLARABEL" in cp.installed_solvers():
            prob.solve(solver="CLARABEL", tol_gap_abs=1e-12, tol_gap_rel=1e-12, tol_feas=1e-12)
        else:  # pragma: no cover - depends on the installed solvers
            prob.solve()
        if w.value is None or prob.status not in ("optimal", "optimal_inaccurate"):
            raise RuntimeError(f"CVXPY lasso failed with status {prob.status!r}.")
        value = polish(np.asarray(w.value), gs, c, lam)
        weight = f.layer.weight
        out = torch.from_numpy(value).to(device=weight.device, dtype=weight.dtype)
        return Solution(weights=out, mask=(out != 0), status="optimal",
                        stats={"cvxpy_status": prob.status}, extras={"lambda": lam})
