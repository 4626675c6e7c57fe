"""SciPy/numpy float64 references for :class:`~prunekit.formulations.l1.L1Relaxation`.

* pure lasso (``project=False``): L-BFGS-B on the split ``W = W+ - W-`` with ``W+, W- >= 0``, which turns the
  lasso into a smooth bound-constrained problem ``f(W+ - W-) + lam 1^T (W+ + W-)`` (methods.md §11, C8);
* FISTAPruner loop (``project=True``): an independent numpy twin of the torch solver (same warm start, FISTA
  with per-row early stop, hard projection through the spec's ``project``, adaptive λ), so the projected
  mode has a reference twin for differential tests.  It is not an optimum (``exact = False``).
"""

from __future__ import annotations

import math

import numpy as np
import scipy.linalg
import torch

from ...formulations.l1 import L1Relaxation
from ...formulations.l1_refit import RefitL1Relaxation
from ..base import Solver
from ..options import ReferenceOptions
from ..registry import register_solver
from ..solution import Solution


def _fista_np(gs, c, lam, lip, w_init, iters, eps):
    step = 1.0 / lip if lip > 0 else 1.0
    w_prev, v, t = w_init.copy(), w_init.copy(), 1.0
    active = np.ones(w_init.shape[0], dtype=bool)
    for _ in range(iters):
        u = v - (v @ gs - c) * step
        w_new = np.sign(u) * np.maximum(np.abs(u) - lam * step, 0.0)
        t_next = 0.5 * (1.0 + math.sqrt(1.0 + 4.0 * t * t))
        v_new = w_new + ((t - 1.0) / t_next) * (w_new - w_prev)
        w_new[~active] = w_prev[~active]
        v_new[~active] = v[~active]
        if eps > 0:
            base = np.linalg.norm(w_prev, axis=1)
            done = (np.linalg.norm(w_new - w_prev, axis=1) <= eps * base) & (base > 0)
            active &= ~done
        w_prev, v, t = w_new, v_new, t_next
        if not active.any():
            break
    return w_prev


def _lbfgsb_lasso(gs, c, const, lam, w_init, tol, max_iter):
    from scipy.optimize import minimize

    m, n = c.shape

    def fun(x):
        wp, wm = x[: m * n].reshape(m, n), x[m * n:].reshape(m, n)
        w = wp - wm
        g = w @ gs - c
        val = 0.5 * np.sum((w @ gs) * w) - np.sum(w * c) + const + lam * np.sum(wp + wm)
        return val, np.concatenate([(g + lam).ravel(), (-g + lam).ravel()])

    x0 = np.concatenate([np.maximum(w_init, 0).ravel(), np.maximum(-w_init, 0).ravel()])
    res = minimize(fun, x0, jac=True, method="L-BFGS-B", bounds=[(0.0, None)] * (2 * m * n),
                   options={"maxiter": max_iter, "maxfun": 10 * max_iter, "ftol": 1e-16, "gtol": tol, "maxcor": 30})
    w = res.x[: m * n].reshape(m, n) - res.x[m * n:].reshape(m, n)
    return w, res


def _project_np(w, spec):
    mask = spec.project(torch.from_numpy(np.abs(w))).numpy()
    return w * mask, mask


@register_solver(L1Relaxation, backend="scipy")
class ScipyLasso(Solver):
    """L-BFGS-B split lasso (pure mode) or numpy FISTAPruner twin (projected mode)."""

    options_type = ReferenceOptions
    max_weights = 4096
    exact = False

    def run(self, formulation: L1Relaxation, options: ReferenceOptions) -> Solution:
        f = formulation
        gs = f.gram_star().cpu().numpy()
        c = f.cross().cpu().numpy()
        w0 = f.layer.weight.detach().double().cpu().numpy()
        const = 0.5 * float(np.sum((w0 @ f.layer.gram.detach().double().cpu().numpy()) * w0))
        warm, warm_name = f.warm_start_weights()
        warm = warm.cpu().numpy()
        weight = f.layer.weight
        if not f.project:
            lam = f.initial_lambda()
            w, res = _lbfgsb_lasso(gs, c, const, lam, warm, options.tol, max(options.max_iter, 20000))
            out = torch.from_numpy(w).to(device=weight.device, dtype=weight.dtype)
            return Solution(weights=out, mask=(out != 0), status="solved" if res.success else "max_iter",
                            stats={"iterations": int(res.nit)}, extras={"lambda": lam, "message": str(res.message)})
        lip = f.lipschitz()
        spec = f.sparsity
        w_best, mask_best = _project_np(warm, spec)

        def e_total_of(h):  # ||H X* - W X||_F from the statistics
            return math.sqrt(max(2 * (0.5 * np.sum((h @ gs) * h) - np.sum(h * c) + const), 0.0))

        e_best = e_total_of(w_best)
        lam, lo, hi = f.initial_lambda(torch.from_numpy(w_best)), 0.0, math.inf
        lam_trace, e_total_trace = [], []
        for _ in range(f.T):
            w_k = _fista_np(gs, c, lam, lip, w_best, f.K, f.eps)
            h, mask = _project_np(w_k, spec)
            d = h - w_k
            e_round = math.sqrt(max(np.sum((d @ gs) * d), 0.0))
            e_total = e_total_of(h)
            lam_trace.append(lam)
            e_total_trace.append(e_total)
            if e_total < e_best:
                w_best, mask_best, e_best = h, mask, e_total
            if f.adaptive:
                if e_total > 0 and e_round / e_total > f.xi:
                    lo = lam
                    lam = (2 * lam if lam > 0 else 1e-2 * f.lambda_max()) if math.isinf(hi) else 0.5 * (lo + hi)
                else:
                    hi = lam
                    lam = 0.5 * (lo + hi)
        refit = None
        if f.refit:  # least squares on the support, row by row (an independent twin of the torch Lagrange form)
            delta = f.layer.damping_value(f.gram_star())
            if f.layer.has_error_correction:  # U with U G* = C (see prunekit.solvers.torch.fista.refit_support)
                eps = 1e-8 * max(float(np.mean(np.diag(gs))), 1e-300)
                u = scipy.linalg.solve(gs + eps * np.eye(gs.shape[0]), c.T, assume_a="pos").T
            else:
                u = w0
            w_fit = np.zeros_like(w_best)
            rhs = u @ (gs + delta * np.eye(gs.shape[0]))  # = C + delta U when U G* = C
            for i in range(w_fit.shape[0]):
                s_i = np.flatnonzero(mask_best[i])
                if s_i.size:
                    a = gs[np.ix_(s_i, s_i)] + delta * np.eye(s_i.size)
                    w_fit[i, s_i] = scipy.linalg.solve(a, rhs[i, s_i], assume_a="pos")
            e_fit = e_total_of(w_fit)
            refit = {"e_total": e_fit, "accepted": bool(e_fit < e_best)}
            if refit["accepted"]:
                w_best, e_best = w_fit, e_fit
        return Solution(
            weights=torch.from_numpy(w_best).to(device=weight.device, dtype=weight.dtype),
            mask=torch.from_numpy(mask_best).to(weight.device),
            status="heuristic",
            extras={"lambda_trace": lam_trace, "e_total": e_total_trace, "e_best": e_best, "warm_start": warm_name,
                    "refit": refit},
        )


@register_solver(RefitL1Relaxation, backend="scipy")
class ScipyRefitLasso(ScipyLasso):
    """The numpy FISTAPruner twin for ``fista_refit`` (projected mode)."""
