"""Torch solver for MRP (methods.md §6): batched Solution M / Solution S, exact N:M pattern enumeration.

Steps (``H = 2 (G + lambda I)``; every rule below is invariant to the factor 2, so ``Hinv`` here is
``(G + lambda I)^{-1}`` from one damped Cholesky with escalation):

1. **Mask.** ``mask_score="solution_s"``: keep-mask = ``spec.project(W^2 / diag(Hinv))`` (OBS saliency).
   ``"exact_groups"`` (N:M): for every M-group g and each of the C(M, N) patterns P, the joint loss
   ``w_P (Hinv_PP)^{-1} w_P^T`` is evaluated for all rows at once (the K = C(M, N) inverses
   ``(Hinv_PP)^{-1}`` are shared by the rows); each row prunes its arg-min pattern (ties: first pattern in
   lexicographic order).
2. **Update.** ``"solution_m"``: the fixed-mask restoration (:func:`~.masked_lstsq.masked_lstsq` reusing Hinv:
   exact per-row solves on small layers, the certified dual-CG fast path on large ones, or the |S| x |S|
   path for ``Channels``).  ``"solution_s"``: ``W - (W_P / diag Hinv_PP) Hinv_{P,:}``,
   then zero P.  ``block_size=B``: blocked Solution M (§6.2): for each column block, the joint MRP of the
   block's pruned entries over the trailing columns F, using ``(H_FF)^{-1}[block, F] = U_bb^T U_{b,F}`` from
   the upper factor ``U`` of ``Hinv`` -- **non-dominating**: with the same mask it can lose to SparseGPT (C15).
"""

from __future__ import annotations

import itertools
from typing import Optional

import torch

from ...errors import NumericalError
from ...formulations.mrp import MultipleRemoval
from ..base import Solver
from ..options import SolverOptions
from ..registry import register_solver
from ..solution import Solution
from .closed_form import MAX_BATCH_ELEMENTS, damped_inverse, lagrange_rows, restore_columns, restore_info


def exact_group_prune(weight: torch.Tensor, hinv: torch.Tensor, n_prune: int, group: int,
                      *, row_batch: Optional[int] = None) -> torch.Tensor:
    """Prune-mask (m, n) bool choosing, per row and M-group, the N-pattern minimizing ``w_P (Hinv_PP)^{-1} w_P^T``."""
    m, n = weight.shape
    dev = weight.device
    patterns = torch.tensor(list(itertools.combinations(range(group), n_prune)), device=dev)  # (K, N)
    k = patterns.shape[0]
    pattern_mask = torch.zeros(k, group, dtype=torch.bool, device=dev).scatter_(1, patterns, True)
    groups = n // group
    cols = torch.arange(groups, device=dev).view(groups, 1, 1) * group + patterns.unsqueeze(0)  # (G, K, N)
    blocks = hinv[cols.unsqueeze(-1), cols.unsqueeze(-2)]  # (G, K, N, N)
    factor, info = torch.linalg.cholesky_ex(blocks)
    if bool((info != 0).any()):
        raise NumericalError("a principal N x N block of the inverse Hessian is not positive definite. "
                             "Fix: raise LayerData.damping or use dtype='float64'.")
    inv = torch.cholesky_inverse(factor)
    prune = torch.zeros(m, n, dtype=torch.bool, device=dev)
    step = row_batch or max(1, min(m, MAX_BATCH_ELEMENTS // (groups * k * n_prune)))
    for start in range(0, m, step):
        w = weight[start:start + step]
        wp = w[:, cols]  # (b, G, K, N)
        loss = torch.einsum("bgki,gkij,bgkj->bgk", wp, inv, wp)
        best = torch.argmin(loss, dim=2)  # (b, G)
        prune[start:start + step] = pattern_mask[best].reshape(w.shape[0], n)
    return prune


def solution_s_update(weight: torch.Tensor, prune: torch.Tensor, hinv: torch.Tensor,
                      *, row_batch: Optional[int] = None) -> torch.Tensor:
    """Summed single-removal OBS updates ``-sum_p (w_p/Hinv_pp) Hinv_{p,:}``, then ``w_P = 0`` (Eq. 14)."""
    out = torch.empty_like(weight)
    diag = hinv.diagonal()
    step = row_batch or weight.shape[0]
    for start in range(0, weight.shape[0], step):
        w, p = weight[start:start + step], prune[start:start + step]
        coef = torch.where(p, w / diag, torch.zeros_like(w))
        out[start:start + step] = (w - coef @ hinv).masked_fill(p, 0.0)
    return out


def blocked_solution_m(weight: torch.Tensor, prune: torch.Tensor, hinv: torch.Tensor, block_size: int,
                       *, row_batch: Optional[int] = None) -> torch.Tensor:
    """Blocked Solution M: joint MRP per column block over the trailing columns, then freeze the block."""
    upper, info = torch.linalg.cholesky_ex(hinv, upper=True)
    if int(info) != 0:
        raise NumericalError("the inverse Hessian has no Cholesky factor. Fix: raise LayerData.damping or use float64.")
    w = weight.clone()
    n = w.shape[1]
    for i1 in range(0, n, block_size):
        i2 = min(i1 + block_size, n)
        rows_of_inv = upper[i1:i2, i1:i2].T @ upper[i1:i2, i1:]  # (H_FF)^{-1}[block, F]
        w[:, i1:] = lagrange_rows(w[:, i1:], prune[:, i1:i2], rows_of_inv, row_batch=row_batch)
    return w


@register_solver(MultipleRemoval, backend="torch")
class TorchMultipleRemoval(Solver):
    """Row-batched MRP (Solution M / Solution S) on CPU or CUDA."""

    def run(self, formulation: MultipleRemoval, options: SolverOptions) -> Solution:
        layer, spec = formulation.layer, formulation.sparsity
        dtype, device = options.torch_dtype, options.resolve_device(layer.weight)
        w = layer.weight.detach().to(device=device, dtype=dtype)
        hinv, used = damped_inverse(layer, dtype, device, max_tries=options.max_damping_tries)
        if formulation.mask_score == "exact_groups":
            keep = ~exact_group_prune(w, hinv, spec.n, spec.m, row_batch=options.row_batch)
        else:
            keep = spec.project(w ** 2 / hinv.diagonal().unsqueeze(0)).to(device)
        prune = ~keep
        kept_columns = None
        info = None
        if formulation.update == "solution_s":
            w_hat = solution_s_update(w, prune, hinv, row_batch=options.row_batch)
        elif formulation.block_size is not None:
            w_hat = blocked_solution_m(w, prune, hinv, formulation.block_size, row_batch=options.row_batch)
        elif spec.structured:
            kept_columns = torch.nonzero(keep[0]).squeeze(1)
            w_hat, used = restore_columns(layer, kept_columns, dtype, device, max_tries=options.max_damping_tries)
            kept_columns = kept_columns.to(layer.weight.device)
        else:
            w_hat, info = restore_info(layer, keep, dtype, device, row_batch=options.row_batch, hinv=hinv,
                                       damping_used=used)
        weights = w_hat.to(device=layer.weight.device, dtype=layer.weight.dtype).masked_fill(~keep.to(layer.weight.device), 0.0)
        status = "solved" if formulation.exact_for_mask else "heuristic"
        return Solution(weights=weights, mask=keep.to(layer.weight.device), status=status, kept_columns=kept_columns,
                        stats={"damping_used": used, **(info.as_stats() if info is not None else {})})
