"""Torch FISTA solver for :class:`~prunekit.formulations.l1.L1Relaxation` (FISTAPruner, methods.md §5).

``fista`` is Beck-Teboulle's accelerated proximal gradient with step 1/L on all rows at once::

    W_k = prox_{lam/L}(V_k - (V_k G* - C)/L);  t_{k+1} = (1 + sqrt(1 + 4 t_k^2))/2;
    V_{k+1} = W_k + (t_k - 1)/t_{k+1} (W_k - W_{k-1})

In the projected (FISTAPruner) mode a row stops once ``||w_k - w_{k-1}|| <= eps ||w_{k-1}||`` with
``w_{k-1} != 0`` (the paper's Eq. 6 applied per row [derived], so rows stay independent: per-row solves equal the
joint solve, C10; a row sitting at exactly 0 keeps iterating, since FISTA's momentum can leave 0 again).  In the
pure-lasso mode a row stops once its certified output distance ``sqrt(2 gap_i) / ||w0_i X||`` is at most ``eps``
(``gap_i >= F_i(w_i) - F_i^*`` from :func:`~prunekit.formulations.l1.lasso_duality_gap`, in float64 on the
weights as returned, bounds ``||(w_i - w*_i) X*||^2 / 2``), and the solution is ``"solved"`` only when every row
is certified -- a step-size rule certifies nothing about the distance to the optimum.  The outer loop starts from the projected warm start as
the incumbent ``W_best`` [derived], so the result is never worse than the projected warm start.  ``TorchFISTA`` wraps it in FISTAPruner's
outer loop (T rounds from the best projected iterate, hard projection, adaptive λ with a bisection bracket
that doubles while unbounded, ``E_round/E_total`` against ``xi`` [derived definitions]), started at
``L1Relaxation.initial_lambda(W_p)`` of the projected warm start ``W_p``; with ``refit=True`` the final support
is re-solved exactly (:func:`refit_support`, [derived]).
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import torch

from ...formulations.l1 import L1Relaxation, lasso_duality_gap
from ...formulations.l1_refit import RefitL1Relaxation
from ..iterative import IterationStats, IterativeSolver
from ..options import SolverOptions
from ..registry import register_solver
from ..solution import Solution
from ._linalg import spd_solve_right
from .closed_form import RESTORE_TOL
from .masked_lstsq import damped_parts, masked_lstsq
from .prox import project, prox_l1


def fista(gram_star: torch.Tensor, cross: torch.Tensor, lam: float, lipschitz: float, w_init: torch.Tensor,
          iterations: int, eps: float = 0.0, *, const: Optional[float] = None,
          row_certified: Optional[Callable[[torch.Tensor], torch.Tensor]] = None) -> tuple[torch.Tensor, int, list[float]]:
    """Run FISTA on ``1/2 tr(W G* W^T) - tr(W C^T) + const + lam ||W||_1`` from ``w_init`` (not modified).

    A row stops by the step rule ``||w_k - w_{k-1}|| <= eps ||w_{k-1}||`` (``eps > 0``), or -- when
    ``row_certified`` is given -- once ``row_certified(W_k)`` (a bool per row) holds, which replaces the step rule.
    Returns ``(W, iterations_run, trace)``; ``trace[k-1] = F(W_k)`` when ``const`` is given (else empty).
    """
    if lam < 0:
        raise ValueError(f"lam must be >= 0, got {lam}.")
    step = 1.0 / lipschitz if lipschitz > 0 else 1.0
    tau = lam * step
    w_prev = w_init.clone()
    v = w_init.clone()
    t = 1.0
    active = torch.ones(w_init.shape[0], dtype=torch.bool, device=w_init.device)
    trace: list[float] = []
    k = 0
    for k in range(1, iterations + 1):
        w_new = prox_l1(v - (v @ gram_star - cross) * step, tau)
        t_next = 0.5 * (1.0 + math.sqrt(1.0 + 4.0 * t * t))
        v_new = w_new + ((t - 1.0) / t_next) * (w_new - w_prev)
        frozen = ~active
        if frozen.any():
            w_new[frozen] = w_prev[frozen]
            v_new[frozen] = v[frozen]
        if row_certified is not None:
            active = active & ~row_certified(w_new)
        elif eps > 0:
            diff = torch.linalg.vector_norm(w_new - w_prev, dim=1)
            base = torch.linalg.vector_norm(w_prev, dim=1)
            active = active & ~((diff <= eps * base) & (base > 0))  # a row at exactly 0 keeps going
        w_prev, v, t = w_new, v_new, t_next
        if const is not None:
            trace.append(float(0.5 * torch.sum((w_prev @ gram_star) * w_prev) - torch.sum(w_prev * cross)
                               + const + lam * w_prev.abs().sum()))
        if not active.any():
            break
    return w_prev, k, trace


def errors(w_k: torch.Tensor, h: torch.Tensor, gram_star: torch.Tensor, cross: torch.Tensor, const: float) -> tuple[float, float]:
    """``(E_round, E_total) = (||(H - W_K) X*||_F, ||H X* - W X||_F)`` from the statistics."""
    d = h - w_k
    e_round = float(torch.sum((d @ gram_star) * d).clamp_min(0.0).sqrt())
    f_val = 0.5 * torch.sum((h @ gram_star) * h) - torch.sum(h * cross) + const
    return e_round, math.sqrt(max(2.0 * float(f_val), 0.0))


def refit_support(gram_star: torch.Tensor, unconstrained: torch.Tensor, keep: torch.Tensor, damping: float, *,
                  max_tries: int = 8, row_batch: Optional[int] = None,
                  tol: float = RESTORE_TOL) -> tuple[torch.Tensor, float]:
    """Damped least squares on a fixed support: ``min (W - U)(G* + δI)(W - U)^T`` s.t. ``W = 0`` off ``keep``.

    ``U`` (m, n) is the unconstrained minimizer of ``f`` (``U G* = C``: the dense weight without error correction),
    so the objective is ``2 f(W) + δ ||W - U||^2`` up to a constant -- the damping of
    :class:`~prunekit.formulations.restoration.FixedMaskRestoration`, which this equals when ``X* = X``.  Row i:
    ``W_{i,S} = (C_{i,S} + δ U_{i,S}) (G*_SS + δI)^{-1}``, solved by the shared kernel
    :func:`~.masked_lstsq.masked_lstsq` (exact per-row solves on small layers, the certified fast path within
    ``tol`` relative objective on large ones; dead inputs of G* get G*_jj = 1, which changes no solution).
    Returns ``(W, δ used)``.
    """
    g0, _ = damped_parts(gram_star, 0.0, dtype=unconstrained.dtype, device=unconstrained.device)
    w, info = masked_lstsq(g0, keep, target=unconstrained, damping=damping, tol=tol, row_batch=row_batch,
                           max_tries=max_tries)
    return w, info.damping_used


def unconstrained_minimizer(formulation: L1Relaxation, gram_star: torch.Tensor, cross: torch.Tensor,
                            w0: torch.Tensor, *, max_tries: int = 8) -> torch.Tensor:
    """``U`` with ``U G* = C``: ``W`` itself without error correction, else ``C (G* + εI)^{-1}``, ε = 1e-8 mean diag G*."""
    if not formulation.layer.has_error_correction:
        return w0
    eps = 1e-8 * float(gram_star.diagonal().mean().clamp_min(1e-300))
    return spd_solve_right(cross, gram_star, eps, max_tries=max_tries)[0]


def next_lambda(lam: float, lo: float, hi: float, too_dense: bool, fallback: float) -> tuple[float, float, float]:
    """Bisection on λ [derived]: raise it when the FISTA output rounds badly, lower it otherwise."""
    if too_dense:
        lo = lam
        lam = (2.0 * lam if lam > 0 else fallback) if math.isinf(hi) else 0.5 * (lo + hi)
    else:
        hi = lam
        lam = 0.5 * (lo + hi)
    return lam, lo, hi


LASSO_CERTIFICATE = ("max_i sqrt(2 gap_i) / ||w0_i X|| <= tol: the certified output distance "
                     "||(w_i - w*_i) X*|| / ||w0_i X|| per row (lasso duality gap, float64, on the returned weights)")


def row_output_distance(weights: torch.Tensor, gram_star: torch.Tensor, cross: torch.Tensor, row_const: torch.Tensor,
                        lam: float) -> torch.Tensor:
    """``sqrt(gap_i / k_i)`` = ``sqrt(2 gap_i) / ||w0_i X||`` in float64, a bound on ``||(w_i - w*_i) X*|| / ||w0_i X||``
    (0 for a row with ``k_i = 0`` and no gap, inf with a gap).  The statistics are float64 on the device of
    ``weights``; ``row_const`` is ``k_i = 1/2 ||w0_i X||^2``."""
    gap, _ = lasso_duality_gap(weights.to(torch.float64), gram_star, cross, row_const, lam)
    ratio = torch.where(row_const > 0, gap / row_const.clamp_min(torch.finfo(torch.float64).tiny),
                        torch.where(gap > 0, torch.full_like(gap, math.inf), torch.zeros_like(gap)))
    return ratio.sqrt()


@register_solver(L1Relaxation, backend="torch")
class TorchFISTA(IterativeSolver):
    """FISTAPruner: batched-row FISTA + hard projection + adaptive λ; or the pure lasso (project=False).

    Pure lasso: a certified loop (``max_iter = K``, ``tol = eps``, certificate :data:`LASSO_CERTIFICATE`).
    FISTAPruner: a scheduled loop (T rounds of at most K steps; status "heuristic").
    """

    options_type = SolverOptions

    def run(self, formulation: L1Relaxation, options: SolverOptions) -> Solution:
        f = formulation
        layer = f.layer
        dtype, device = options.torch_dtype, options.resolve_device(layer.weight)
        gs = f.gram_star(dtype, device)
        c = f.cross(dtype, device)
        w0 = layer.weight.detach().to(device=device, dtype=dtype)
        const = 0.5 * float(torch.sum((w0 @ layer.gram.detach().to(device=device, dtype=dtype)) * w0))
        lip = f.lipschitz()
        warm, warm_name = f.warm_start_weights()
        warm = warm.to(device=device, dtype=dtype)
        rows = w0.shape[0]
        step = options.row_batch or rows

        out_dtype = layer.weight.dtype
        if not f.project:  # the certificate's statistics, float64 on the compute device
            gs64, c64 = f.gram_star(torch.float64, device), f.cross(torch.float64, device)
            k64 = f.row_constants(torch.float64, device)

        def certifier(lam, r0):
            if f.project or f.eps <= 0:
                return None
            rows_ = slice(r0, r0 + step)
            return lambda w: row_output_distance(w.to(out_dtype), gs64, c64[rows_], k64[rows_], lam) <= f.eps

        def run_fista(start, lam, trace):
            outs, its, tr = [], 0, None
            for r0 in range(0, rows, step):
                out, it, t_ = fista(gs, c[r0:r0 + step], lam, lip, start[r0:r0 + step], f.K, f.eps,
                                    const=const if trace and step >= rows else None,
                                    row_certified=certifier(lam, r0))
                outs.append(out)
                its = max(its, it)
                tr = t_
            return torch.cat(outs, dim=0), its, tr

        weight = layer.weight
        if not f.project:
            lam = f.initial_lambda()
            w, its, trace = run_fista(warm, lam, True)
            rel = row_output_distance(w.to(out_dtype), gs64, c64, k64, lam)
            worst = float(rel.max()) if rel.numel() else 0.0
            loop = IterationStats.certified(its, f.K, f.eps, bool((rel <= f.eps).all()), worst, LASSO_CERTIFICATE)
            return self.solution(
                loop,
                weights=w.to(device=weight.device, dtype=weight.dtype),
                mask=(w != 0).to(weight.device),
                stats={"lipschitz": lip},
                extras={"lambda": lam, "objective_trace": trace or [], "warm_start": warm_name, "iterations": its},
            )
        spec = f.sparsity
        w_best, mask_best = project(warm, spec)
        _, e_best = errors(w_best, w_best, gs, c, const)
        lam, lo, hi = f.initial_lambda(w_best), 0.0, math.inf
        lam_trace, e_round_trace, e_total_trace, its_trace, best_round = [], [], [], [], 0
        for rnd in range(1, f.T + 1):
            w_k, its, _ = run_fista(w_best, lam, False)
            h, mask = project(w_k, spec)
            e_round, e_total = errors(w_k, h, gs, c, const)
            lam_trace.append(lam)
            e_round_trace.append(e_round)
            e_total_trace.append(e_total)
            its_trace.append(its)
            if not (math.isfinite(e_total) and torch.isfinite(h).all()):
                from ...errors import NumericalError

                raise NumericalError(f"FISTA produced non-finite weights at lambda={lam:.3g}. Fix: dtype='float64'.")
            if e_total < e_best:
                w_best, mask_best, e_best, best_round = h, mask, e_total, rnd
            if f.adaptive:
                too_dense = e_total > 0 and e_round / e_total > f.xi
                lam, lo, hi = next_lambda(lam, lo, hi, too_dense, 1e-2 * f.lambda_max())
        refit = None
        if f.refit:
            damping = f.layer.damping_value(gs)
            target = unconstrained_minimizer(f, gs, c, w0, max_tries=options.max_damping_tries)
            w_fit, used = refit_support(gs, target, mask_best.to(device), damping, max_tries=options.max_damping_tries,
                                        row_batch=options.row_batch)
            _, e_fit = errors(w_fit, w_fit, gs, c, const)
            refit = {"e_total": e_fit, "accepted": bool(e_fit < e_best), "damping_used": used}
            if refit["accepted"]:
                w_best, e_best = w_fit, e_fit
        return self.solution(
            IterationStats.schedule(sum(its_trace), max_iter=f.T * f.K),
            weights=w_best.to(device=weight.device, dtype=weight.dtype),
            mask=mask_best.to(weight.device),
            stats={"rounds": f.T, "lipschitz": lip},
            extras={"lambda_trace": lam_trace, "e_round": e_round_trace, "e_total": e_total_trace,
                    "e_best": e_best, "best_round": best_round, "warm_start": warm_name, "refit": refit,
                    "iterations_per_round": its_trace},
        )


@register_solver(RefitL1Relaxation, backend="torch")
class TorchRefitFISTA(TorchFISTA):
    """The same loop for ``fista_refit`` (the registry does not follow inheritance: each formulation states its
    own problem)."""
