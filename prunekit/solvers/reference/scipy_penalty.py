"""SciPy/numpy float64 twin of the SPAP penalty method (reference for the torch solver).

Same alternation as :mod:`prunekit.solvers.torch.penalty`, computed independently:

* s-step: ``scipy.optimize.linprog(method="highs")`` over ``{0 <= s <= 1, 1^T s = k}`` (one variable per
  channel group, cost = summed ``c_j``); the vertex returned is binary (C6);
* W-step: ``scipy.linalg.lstsq`` on the stacked system ``[Z^T; sqrt(rho) D^{1/2}] W^T = [Y^T; 0]`` with
  ``Z = chol(G)`` (so ``Z Z^T = G``, the damped Gram) and ``Y = W0 Z`` (C5);
* final restoration: ``lstsq(Z_S^T, Y^T)`` on the kept rows of Z (C1).

It is the twin of a heuristic, not an optimum (``exact = False``); the brute-force channel search is the
reference for the MIP itself.
"""

from __future__ import annotations

import numpy as np
import torch

from ...formulations.penalty import PenaltyRelaxation
from ...formulations.penalty_refit import RefitPenaltyRelaxation
from ..base import Solver
from ..options import ReferenceOptions
from ..registry import register_solver
from ..solution import Solution


def _s_step_lp(cost_groups: np.ndarray, k: int) -> np.ndarray:
    from scipy.optimize import linprog

    ng = cost_groups.shape[0]
    res = linprog(cost_groups, A_eq=np.ones((1, ng)), b_eq=[float(k)], bounds=[(0.0, 1.0)] * ng, method="highs")
    if res.status != 0:
        raise RuntimeError(f"linprog failed on the SPAP s-step: {res.message}")
    return res.x > 0.5


@register_solver(PenaltyRelaxation, backend="scipy")
class ScipyPenalty(Solver):
    """Float64 numpy/scipy twin of the SPAP alternating minimization."""

    options_type = ReferenceOptions
    max_in_features = 512
    exact = False

    def run(self, formulation: PenaltyRelaxation, options: ReferenceOptions) -> Solution:
        from scipy.linalg import cholesky, lstsq

        f = formulation
        layer = f.layer
        n = layer.in_features
        g = f.gram().cpu().numpy()
        omega = f.omega().cpu().numpy()
        w0 = layer.weight.detach().double().cpu().numpy()
        z = cholesky(g, lower=True)  # G = Z Z^T
        y = w0 @ z
        groups = f.groups()
        k = f.num_removed()
        rho = f.initial_rho()
        w = w0.copy()
        prev, stable, converged, rounds = None, 0, False, 0
        obj_trace, s_trace = [], []

        def penalized(w_, pruned_, rho_):
            d = (w_ - w0) @ z
            return 0.5 * float(np.sum(d * d)) + 0.5 * rho_ * float(np.sum((omega * np.sum(w_ * w_, axis=0))[pruned_]))

        for rounds in range(1, f.max_rounds + 1):
            cost = omega * np.sum(w * w, axis=0)
            chosen = _s_step_lp(np.array([cost[gr].sum() for gr in groups]), k)
            pruned = np.zeros(n, dtype=bool)
            for gi, gr in enumerate(groups):
                if chosen[gi]:
                    pruned[gr] = True
            s_trace.append(penalized(w, pruned, rho))
            dvec = np.sqrt(rho * omega * pruned)
            a = np.vstack([z.T, np.diag(dvec)])
            b = np.vstack([y.T, np.zeros((n, w0.shape[0]))])
            w = lstsq(a, b)[0].T
            obj_trace.append(penalized(w, pruned, rho))
            total = np.linalg.norm(w)
            ratio = np.linalg.norm(w[:, pruned]) / total if total > 0 else 0.0
            stable = stable + 1 if prev is not None and np.array_equal(prev, pruned) else 1
            prev = pruned
            if stable >= f.stable_rounds and ratio < f.eps:
                converged = True
                break
            rho *= f.kappa
        keep = ~prev
        if f.final_restore:
            w_hat = np.zeros_like(w0)
            w_hat[:, keep] = lstsq(z[keep].T, y.T)[0].T
        else:
            w_hat = w * keep[None, :]
        weight = layer.weight
        mask = torch.from_numpy(keep).to(weight.device).unsqueeze(0).expand(layer.out_features, n).clone()
        return Solution(
            weights=torch.from_numpy(w_hat).to(device=weight.device, dtype=weight.dtype),
            mask=mask,
            status="solved" if converged else "max_iter",
            kept_columns=torch.from_numpy(np.nonzero(keep)[0]).to(weight.device),
            stats={"rounds": rounds, "converged": converged},
            extras={"pruned": torch.from_numpy(prev.astype(np.float64)), "objective_trace": obj_trace,
                    "s_step_trace": s_trace, "rounds": rounds, "converged": converged},
        )


@register_solver(RefitPenaltyRelaxation, backend="scipy")
class ScipyRefitPenalty(ScipyPenalty):
    """The reference twin for ``spap_refit`` (SPAP's layer problem)."""
