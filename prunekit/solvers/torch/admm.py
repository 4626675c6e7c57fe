"""Torch solver for :class:`~prunekit.formulations.admm.ADMMSplit` (scaled ADMM, StructPrune [derived]).

One Cholesky factor of ``2 G + rho I`` serves every W-step while rho is constant (it is refactorized only
when ``rho_growth > 1`` changes rho).  The Z-step is the structured projection of ``W + U`` by the
formulation's ``projection_score``; the final weights are the closed-form restoration on the support of Z
(:func:`~.masked_lstsq.restore_layer`, the damping of ``LayerData.damped_gram``).
The iteration stops early when the mask has not changed and both residuals are below
``options.tol * ||W0||_F`` (a certified loop: ``max_iter = iterations``, ``tol = options.tol``; status "solved"
when it stopped so -- a fixed point of the splitting, not an optimality proof for the MIP -- else "max_iter").
"""

from __future__ import annotations

import torch

from ...formulations.admm import ADMMSplit
from ...formulations.sparsity import SparsitySpec
from ..iterative import IterationLoop, IterativeSolver
from ..registry import register_solver
from ..solution import Solution
from ._linalg import damped_cholesky
from .masked_lstsq import masked_lstsq, restore_layer


def admm_projection(v: torch.Tensor, spec: SparsitySpec, score: str, input_norms: torch.Tensor) -> torch.Tensor:
    """Keep-mask of Proj_S(v): the units with the largest ``score`` ("frobenius" | "wanda_l1")."""
    if score == "frobenius":
        s = v.double() ** 2
    else:
        s = v.double().abs() * input_norms.to(device=v.device, dtype=torch.float64).unsqueeze(0)
    if spec.structured:  # "wanda_l1": ||V_:,j||_1 ||X_j||;  "frobenius": ||V_:,j||_2^2 -- column sums of s
        return spec.project(s.sum(dim=0)).expand(v.shape[0], -1).clone()
    return spec.project(s)


def restore_on_mask(w0: torch.Tensor, gram: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Closed-form least squares on a fixed support: W'_S = (W0 G)_{:,S} (G_SS)^{-1}, W'_P = 0.

    ``gram`` must be positive definite (the damped Gram).  Solved by the shared kernel
    :func:`~.masked_lstsq.masked_lstsq` (one |S| x |S| factorization when the rows share S).
    """
    return masked_lstsq(gram, mask, target=w0, damping=0.0)[0]


def w_step(w0: torch.Tensor, gram: torch.Tensor, v: torch.Tensor, rho: float) -> torch.Tensor:
    """ADMM W-step without caching: argmin_W tr((W - W0) G (W - W0)^T) + rho/2 ||W - V||^2
    = (2 W0 G + rho V)(2 G + rho I)^{-1}, with V = Z - U (``gram`` = the damped G)."""
    factor, _ = damped_cholesky(2.0 * gram, rho)
    return torch.cholesky_solve((2.0 * (w0 @ gram) + rho * v).T, factor).T


ADMM_CERTIFICATE = "max(||W - Z||_F, rho ||Z - Z_prev||_F) / ||W0||_F <= tol with the mask unchanged"


@register_solver(ADMMSplit, backend="torch")
class TorchADMM(IterativeSolver):
    """Scaled ADMM with closed-form W-step, structured projection Z-step, final restoration."""

    def run(self, formulation: ADMMSplit, options) -> Solution:
        layer = formulation.layer
        dtype = options.torch_dtype
        device = options.resolve_device(layer.weight)
        w0 = layer.weight.detach().to(device=device, dtype=dtype)
        gd = layer.damped_gram(dtype=dtype, device=device)
        norms = layer.input_norms().to(device)
        spec, score = formulation.sparsity, formulation.projection_score
        b2 = 2.0 * (w0 @ gd)  # 2 Y X^T = 2 W0 G
        rho = formulation.rho_abs()
        mask = admm_projection(w0, spec, score, norms)
        z = w0 * mask
        u = torch.zeros_like(w0)
        scale = float(torch.linalg.norm(w0)) or 1.0
        factor, used = damped_cholesky(2.0 * gd, rho, max_tries=options.max_damping_tries)
        primal = dual = float("nan")
        loop = IterationLoop(formulation.iterations, options.tol, ADMM_CERTIFICATE)
        for it in loop:
            rhs = b2 + rho * (z - u)
            w = torch.cholesky_solve(rhs.T, factor).T
            v = w + u
            new_mask = admm_projection(v, spec, score, norms)
            z_new = v * new_mask
            u = u + w - z_new
            primal = float(torch.linalg.norm(w - z_new))
            dual = rho * float(torch.linalg.norm(z_new - z))
            changed = int((new_mask != mask).sum())
            z, mask = z_new, new_mask
            if loop.check(max(primal, dual) / scale, done=changed == 0 and primal <= options.tol * scale
                          and dual <= options.tol * scale):
                break
            if formulation.rho_growth != 1.0 and it < formulation.iterations:
                rho_new = rho * formulation.rho_growth
                u = u * (rho / rho_new)
                rho = rho_new
                factor, used = damped_cholesky(2.0 * gd, rho, max_tries=options.max_damping_tries)
        # final step: exact restoration on the support of Z with the damped G of the W-steps (shared kernel;
        # one |S| x |S| solve when structured)
        weights, info = restore_layer(layer, mask, dtype, device, row_batch=options.row_batch,
                                      max_tries=options.max_damping_tries)
        kept = mask.all(dim=0).nonzero().squeeze(1) if spec.structured else None
        return self.solution(
            loop.stats(),
            weights=weights.to(dtype=layer.weight.dtype, device=layer.weight.device),
            mask=mask.to(layer.weight.device),
            kept_columns=kept.to(layer.weight.device) if kept is not None else None,
            stats={"primal_residual": primal, "dual_residual": dual,
                   "rho_final": rho, "damping_used": info.damping_used, **info.as_stats()},
            extras={"admm_z": z.to(dtype=layer.weight.dtype, device=layer.weight.device)},
        )
