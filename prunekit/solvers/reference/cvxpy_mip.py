"""Exact MaskedReconstructionMIP in CVXPY: boolean mask, big-M linearization of the bilinear constraint.

With A = G = R R^T (A = G*, B = C with error correction; B = W G otherwise) the model is

.. math::

    \\min_{\\hat W, z} \\tfrac12 \\lVert \\hat W R \\rVert_F^2 - \\langle \\hat W, B \\rangle + \\text{const}
    \\quad \\text{s.t.} \\quad |\\hat W_{ij}| \\le M_i \\, z_{ij}, \\; z \\in \\{0,1\\}, \\; z \\in \\mathcal M(\\text{spec}),

with z the keep-mask (for Channels z_ij = 1 - s_g(j): one boolean per group, W diag(s) = 0 linearized).
The big-M is rigorous: at an optimum of any fixed-mask subproblem ``w_S A_SS w_S^T <= w A w^T`` (the
objective is >= 0), so ``|w_hat_ij| <= M_i = sqrt(w_i G w_i^T / lambda_min(A))`` (x1.01); a singular A has
no finite bound and the solver declines.  The solution's weights are polished by exact least squares on
the mask found (never worse).  Needs a mixed-integer QP/SOCP solver: CVXPY's open solvers in the
``[reference]`` extra (CLARABEL, SCS, OSQP, HiGHS, SciPy) cannot do integer *quadratic* programs, so
``_accepts`` declines unless SCIP (``pip install pyscipopt``), ECOS_BB (``pip install ecos``) or a
commercial solver (GUROBI, MOSEK, CPLEX, COPT, XPRESS) is installed.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ...formulations.mip import MaskedReconstructionMIP
from ...formulations.reductions_spap import exact_restore
from ...formulations.sparsity import NM, Channels, Unstructured
from ..base import Solver
from ..options import ReferenceOptions
from ..registry import register_solver
from ..solution import Solution

MIQP_SOLVERS = ("GUROBI", "MOSEK", "CPLEX", "COPT", "XPRESS", "SCIP", "ECOS_BB")
_INSTALL = ("no mixed-integer QP solver is installed for cvxpy (it has only "
            "{have}). Fix: pip install pyscipopt (SCIP) or ecos (ECOS_BB), or a licensed GUROBI/MOSEK; "
            "or use backend='bruteforce' (n <= 16).")


def available_miqp_solver():
    """Name of the first installed cvxpy solver able to solve mixed-integer QPs, or None."""
    import cvxpy

    have = cvxpy.installed_solvers()
    return next((s for s in MIQP_SOLVERS if s in have), None)


def _arrays(layer):
    w = layer.weight.detach().double().cpu().numpy()
    if layer.has_error_correction:
        a = layer.gram_star.detach().double().cpu().numpy()
        b = layer.cross.detach().double().cpu().numpy()
    else:
        a = layer.gram.detach().double().cpu().numpy()
        b = w @ a
    g = layer.gram.detach().double().cpu().numpy()
    return w, a, b, np.einsum("ij,jk,ik->i", w, g, w)


@register_solver(MaskedReconstructionMIP, backend="cvxpy")
class CvxpyMIP(Solver):
    """Branch and bound on the big-M model (see the module docstring); toy layers only."""

    requires = ("cvxpy",)
    handles_integer = True
    exact = True
    max_weights = 32
    devices = ("cpu",)
    options_type = ReferenceOptions

    def _accepts(self, formulation):
        import cvxpy

        if available_miqp_solver() is None:
            return False, _INSTALL.format(have=", ".join(cvxpy.installed_solvers()))
        spec = formulation.sparsity
        if isinstance(spec, Unstructured) and spec.scope == "layer" and formulation.form.num_weights > 16:
            return False, ("a per-layer count couples all rows and ECOS-class branch and bound takes minutes "
                           "beyond 16 weights; use backend='bruteforce' (exact, by a DP over row counts).")
        _, a, _, _ = _arrays(formulation.layer)
        ev = np.linalg.eigvalsh(a)
        if ev[0] <= 1e-10 * max(ev[-1], 1e-300):
            return False, "G is (numerically) singular, so no finite big-M bound exists; use backend='bruteforce'."
        return True, ""

    def run(self, formulation, options) -> Solution:
        import cvxpy as cp

        layer, spec = formulation.layer, formulation.sparsity
        w, a, b, c = _arrays(layer)
        m, n = w.shape
        evals, evecs = np.linalg.eigh(a)
        r = evecs * np.sqrt(np.clip(evals, 0.0, None))[None, :]
        big_m = 1.01 * np.sqrt(np.maximum(c, 0.0) / evals[0]) + 1e-12
        w_var = cp.Variable((m, n))
        cons = []
        if isinstance(spec, Channels):
            index = spec.group_index(n)
            s = cp.Variable(len(index), boolean=True)
            cons.append(cp.sum(s) == spec.groups_pruned(n))
            for gi, cols in enumerate(index):
                for j in cols:
                    cons.append(cp.abs(w_var[:, j]) <= big_m * (1 - s[gi]))
        else:
            z = cp.Variable((m, n), boolean=True)
            cons.append(cp.abs(w_var) <= cp.multiply(big_m[:, None] * np.ones((1, n)), z))
            if isinstance(spec, NM):
                for blk in range(n // spec.m):
                    cons.append(cp.sum(z[:, blk * spec.m:(blk + 1) * spec.m], axis=1) == spec.m - spec.n)
            elif spec.scope == "row":
                cons.append(cp.sum(z, axis=1) == n - spec.pruned_per_row(n))
            else:
                cons.append(cp.sum(z) == m * n - spec.num_pruned((m, n)))
        objective = 0.5 * cp.sum_squares(w_var @ r) - cp.sum(cp.multiply(w_var, b)) + 0.5 * float(c.sum())
        problem = cp.Problem(cp.Minimize(objective), cons)
        name = available_miqp_solver()
        # ECOS_BB stops at a 1e-3 relative gap by default: ask for 1e-6 (tighter gets very slow)
        kwargs = {"mi_rel_eps": 1e-6, "mi_abs_eps": 1e-9, "mi_max_iters": 100_000} if name == "ECOS_BB" else {}
        problem.solve(solver=name, **kwargs)
        if problem.status not in ("optimal", "optimal_inaccurate"):
            raise RuntimeError(f"cvxpy/{name} ended with status {problem.status!r} on the MIP.")
        if isinstance(spec, Channels):
            s_val = np.round(np.asarray(s.value)).astype(bool)
            keep_cols = np.ones(n, dtype=bool)
            for gi in np.nonzero(s_val)[0]:
                keep_cols[index[gi]] = False
            keep = np.broadcast_to(keep_cols, (m, n)).copy()
            w_hat = exact_restore(layer, torch.from_numpy(keep_cols)).numpy()
        else:
            keep = np.round(np.asarray(z.value)).astype(bool)
            w_hat = np.zeros_like(w)
            for i in range(m):
                row = exact_restore(layer, torch.from_numpy(keep[i])).numpy()
                w_hat[i] = row[i]
        w_hat = np.where(keep, w_hat, 0.0)
        dev, dt = layer.weight.device, layer.weight.dtype
        kept = torch.from_numpy(np.nonzero(keep[0])[0]).to(dev) if isinstance(spec, Channels) else None
        return Solution(
            weights=torch.from_numpy(w_hat).to(device=dev, dtype=dt),
            mask=torch.from_numpy(keep).to(dev),
            status="optimal" if problem.status == "optimal" else "solved",
            kept_columns=kept,
            stats={"cvxpy_solver": name, "cvxpy_status": problem.status, "mip_objective": float(problem.value),
                   "big_m_max": float(big_m.max()) if math.isfinite(float(big_m.max())) else None},
        )
