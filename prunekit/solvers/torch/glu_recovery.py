"""Torch solver for :class:`~prunekit.formulations.glu_recovery.GLURecovery` (SPAP recovery, [derived]).

Alternation on the kept neurons S (A = SiLU(X0 W_gate[S]^T) fixed, U = W_up[S], V = W_down[:, S]):

* V-step: ``V = Y^T Zp (Zp^T Zp)^{-1}``, ``Zp = A ⊙ X0 U^T`` (restricted least squares, one Cholesky);
* U-step, ``"lstsq"``: for each kept neuron j in turn, the exact minimizer over u_j of
  ``||R_j - (a_j ⊙ X0 u_j) v_j^T||^2``, i.e. ``(X0^T diag(a_j^2) X0 ||v_j||^2) u_j = X0^T (a_j ⊙ R_j v_j)``
  (block Gauss-Seidel: d x d normal equations per neuron);
  ``"gradient"``: one gradient step ``U <- U - alpha grad`` with the exact line search
  ``alpha = ||grad||^2 / ||J grad||^2`` (the objective is quadratic in U).

Each step is accepted only if the block objective does not increase (a guard against damping and round-off;
``stats["rejected_steps"]`` counts refusals), so ``extras["objective_trace"]`` is non-increasing.  The loop runs
the formulation's ``iterations`` sweeps (a scheduled loop, status "heuristic"); ``final_residual`` is the relative
decrease of the block objective over the last sweep.
"""

from __future__ import annotations

import torch

from ...formulations.glu_recovery import GLURecovery, silu
from ..iterative import IterationStats, IterativeSolver
from ..options import SolverOptions
from ..registry import register_solver
from ..solution import Solution
from ._linalg import damped_cholesky

_RIDGE = 1e-12  # relative ridge on the normal equations (keeps singular systems solvable)


def _objective(a, x, u, v, y) -> float:
    return float(0.5 * torch.sum(((a * (x @ u.T)) @ v.T - y) ** 2))


def _v_step(a, x, u, y, max_tries):
    zp = a * (x @ u.T)
    gram = zp.T @ zp
    factor, _ = damped_cholesky(gram, _RIDGE * float(gram.diagonal().mean().clamp_min(1e-300)), max_tries=max_tries)
    return torch.cholesky_solve((y.T @ zp).T, factor).T


def _u_step_lstsq(a, x, u, v, y, max_tries):
    u = u.clone()
    resid = y - (a * (x @ u.T)) @ v.T
    for j in range(u.shape[0]):
        vj, aj = v[:, j], a[:, j]
        vv = float(vj @ vj)
        if vv == 0.0:
            continue
        contrib = torch.outer(aj * (x @ u[j]), vj)
        rj = resid + contrib
        xa = x * aj.unsqueeze(1)
        m = (xa.T @ xa) * vv
        factor, _ = damped_cholesky(m, _RIDGE * float(m.diagonal().mean().clamp_min(1e-300)), max_tries=max_tries)
        u[j] = torch.cholesky_solve((xa.T @ (rj @ vj)).unsqueeze(1), factor).squeeze(1)
        resid = rj - torch.outer(aj * (x @ u[j]), vj)
    return u


def _u_step_gradient(a, x, u, v, y):
    err = (a * (x @ u.T)) @ v.T - y
    grad = ((err @ v) * a).T @ x
    jg = (a * (x @ grad.T)) @ v.T
    denom = float(torch.sum(jg * jg))
    if denom == 0.0:
        return u
    return u - (float(torch.sum(grad * grad)) / denom) * grad


@register_solver(GLURecovery, backend="torch")
class TorchGLURecovery(IterativeSolver):
    """Alternating W_down / W_up recovery of a pruned GLU MLP on its calibration inputs."""

    options_type = SolverOptions

    def run(self, formulation: GLURecovery, options: SolverOptions) -> Solution:
        f = formulation
        dtype, device = options.torch_dtype, options.resolve_device(f.layer.weight)
        x = f.inputs.detach().to(device=device, dtype=dtype)
        s = f.kept.to(device)
        a = silu(x @ f.w_gate.detach().to(device=device, dtype=dtype)[s].T)
        u = f.w_up.detach().to(device=device, dtype=dtype)[s].clone()
        v = f.layer.weight.detach().to(device=device, dtype=dtype)[:, s].clone()
        y = f.dense_output(dtype=dtype, device=device)
        current = _objective(a, x, u, v, y)
        trace, rejected = [current], 0
        for _ in range(f.iterations):
            for which in ("v", "u"):
                if which == "v":
                    cand_u, cand_v = u, _v_step(a, x, u, y, options.max_damping_tries)
                elif f.method == "lstsq":
                    cand_u, cand_v = _u_step_lstsq(a, x, u, v, y, options.max_damping_tries), v
                else:
                    cand_u, cand_v = _u_step_gradient(a, x, u, v, y), v
                value = _objective(a, x, cand_u, cand_v, y)
                if torch.isfinite(cand_u).all() and torch.isfinite(cand_v).all() and value <= current:
                    u, v, current = cand_u, cand_v, value
                else:
                    rejected += 1
            trace.append(current)
        d, n = f.layer.shape
        w_down = torch.zeros(d, n, device=device, dtype=dtype)
        w_down[:, s] = v
        w_up = torch.zeros(f.w_up.shape, device=device, dtype=dtype)
        w_up[s] = u
        keep = f.keep_vector().to(f.layer.weight.device)
        weight = f.layer.weight
        last = (trace[-2] - trace[-1]) / trace[-2] if len(trace) > 1 and trace[-2] > 0 else 0.0
        return self.solution(
            IterationStats.schedule(f.iterations, final_residual=last,
                                    certificate="relative decrease of the block objective over the last sweep"),
            weights=w_down.to(device=weight.device, dtype=weight.dtype),
            mask=keep.unsqueeze(0).expand(d, n).clone(),
            kept_columns=f.kept.to(weight.device),
            stats={"rejected_steps": rejected},
            extras={"w_up": w_up.to(device=f.w_up.device, dtype=f.w_up.dtype), "objective_trace": trace,
                    "method": f.method},
        )
