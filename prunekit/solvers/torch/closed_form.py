"""Restoration for a fixed keep-mask (methods.md §1 facts 2-3): thin entry points over :mod:`.masked_lstsq`.

Every torch solver that restores exactly goes through :func:`~.masked_lstsq.masked_lstsq` with the damping
convention of :meth:`LayerData.damped_gram`:

* **shared kept columns** S (structured masks): ``W_S <- W_S + W_P G_PS (G_SS + lambda I)^{-1}`` with one
  |S| x |S| damped Cholesky for all rows (:func:`restore_columns`);
* **per-row kept sets**: the exact per-row solve for small layers, the certified dual conjugate-gradient
  fast path for large ones (every row within ``tol`` relative objective of the optimum; rows it cannot
  certify are re-solved exactly), chosen by a flop model (:func:`restore`).

:func:`lagrange_rows` (the Lagrange / Solution M kernel, also MRP's blocked variant) lives in
:mod:`.masked_lstsq` and is re-exported here.
"""

from __future__ import annotations

from typing import Optional

import torch

from ...errors import FormulationError
from ...formulations.layer import LayerData
from ...formulations.restoration import FixedMaskRestoration
from ..base import Solver
from ..options import SolverOptions
from ..registry import register_solver
from ..solution import Solution
from ._linalg import spd_inverse
from .masked_lstsq import (  # noqa: F401  (re-exports)
    MAX_BATCH_ELEMENTS,
    LstsqInfo,
    batched_spd_solve as _batched_spd_solve,
    columns_lstsq,
    lagrange_rows,
    layer_parts,
    restore_layer,
)

RESTORE_TOL = 1e-4  # relative objective gap the fast path certifies for the solvers that restore as a final step


def restore_tol(options) -> float:
    """Gap the FixedMaskRestoration solver asks of the fast path: ``min(options.tol, RESTORE_TOL)``.

    The solvers that restore as their final step (MRP, ADMM, FISTA's refit) use ``RESTORE_TOL`` itself.
    """
    return min(float(options.tol), RESTORE_TOL)


def _require_plain(layer: LayerData) -> None:
    if layer.has_error_correction:
        raise FormulationError("the closed-form restoration uses the plain objective; this layer has gram_star/cross. "
                               "Fix: build LayerData without inputs_star for restoration.")


def _undamped(layer: LayerData, dtype: torch.dtype, device) -> tuple[torch.Tensor, float]:
    """``(G with dead inputs set to G_jj = 1, lambda)`` so that ``G + lambda I = layer.damped_gram()``."""
    _require_plain(layer)
    return layer_parts(layer, dtype=dtype, device=device)


def damped_inverse(layer: LayerData, dtype: torch.dtype, device, *, max_tries: int = 8) -> tuple[torch.Tensor, float]:
    """``((G + lambda I)^{-1}, lambda_used)`` through a damped Cholesky with escalation, symmetrized."""
    g0, lam = _undamped(layer, dtype, device)
    inv, used = spd_inverse(g0, lam, max_tries=max_tries)
    return 0.5 * (inv + inv.T), used


def restore_info(layer: LayerData, keep_mask: torch.Tensor, dtype: torch.dtype = torch.float64, device=None, *,
                 row_batch: Optional[int] = None, max_tries: int = 8, hinv: Optional[torch.Tensor] = None,
                 damping_used: Optional[float] = None, method: str = "auto",
                 tol: float = RESTORE_TOL) -> tuple[torch.Tensor, LstsqInfo]:
    """Optimal weights on ``keep_mask`` (True = kept) and how they were computed: ``(W_hat, LstsqInfo)``.

    ``hinv`` (with its ``damping_used``) reuses an inverse ``(G + lambda I)^{-1}`` already computed.
    """
    device = torch.device(device) if device is not None else layer.weight.device
    _require_plain(layer)
    return restore_layer(layer, keep_mask.to(device=device, dtype=torch.bool), dtype, device, method=method,
                         hinv=hinv, damping_used=damping_used, tol=tol, row_batch=row_batch, max_tries=max_tries)


def restore(layer: LayerData, keep_mask: torch.Tensor, dtype: torch.dtype = torch.float64, device=None, *,
            row_batch: Optional[int] = None, max_tries: int = 8,
            hinv: Optional[torch.Tensor] = None, damping_used: Optional[float] = None,
            method: str = "auto", tol: float = RESTORE_TOL) -> tuple[torch.Tensor, float]:
    """Optimal weights on ``keep_mask`` (True = kept): ``(W_hat in dtype on device, damping_used)``.

    Shared masks take the |S| x |S| path; per-row masks the exact or the certified fast path
    (:func:`~.masked_lstsq.masked_lstsq`).  ``hinv`` (with its ``damping_used``) may be passed to reuse an
    inverse ``(G + lambda I)^{-1}`` already computed.
    """
    w, info = restore_info(layer, keep_mask, dtype, device, row_batch=row_batch, max_tries=max_tries, hinv=hinv,
                           damping_used=damping_used, method=method, tol=tol)
    return w, info.damping_used


def restore_columns(layer: LayerData, kept_columns: torch.Tensor, dtype: torch.dtype = torch.float64, device=None,
                    *, max_tries: int = 8, weight: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, float]:
    """Structured restoration for kept columns S shared by all rows: one damped |S| x |S| Cholesky.

    ``kept_columns`` is either a boolean (n,) vector or a tensor/sequence of column indices.

    ``W_S <- W_S + W_P G_PS (G_SS + lambda I)^{-1}``, ``W_P <- 0``.  Returns the full (m, n) weight in
    ``dtype`` on ``device`` and the damping used (escalated if the factorization needed it).
    ``weight`` overrides the layer's W (same shape), e.g. for a warm-started pipeline.
    """
    device = torch.device(device) if device is not None else layer.weight.device
    w = (layer.weight if weight is None else weight).detach().to(device=device, dtype=dtype)
    n = w.shape[1]
    cols = torch.as_tensor(kept_columns, device=device).flatten()
    if cols.dtype == torch.bool:  # a boolean kept-column vector (n,)
        keep = cols.clone()
    else:  # indices of kept columns
        keep = torch.zeros(n, dtype=torch.bool, device=device)
        keep[cols.long()] = True
    g0, lam = _undamped(layer, dtype, device)
    return columns_lstsq(g0, lam, keep, target=w, max_tries=max_tries)


@register_solver(FixedMaskRestoration, backend="torch")
class TorchFixedMaskRestoration(Solver):
    """Restoration on a fixed mask: one |S| x |S| Cholesky for shared columns, else exact per-row solves (small
    layers) or the certified dual-CG fast path (large layers; status "solved", gap bound in ``stats``)."""

    exact = True

    def run(self, formulation: FixedMaskRestoration, options: SolverOptions) -> Solution:
        layer = formulation.layer
        dtype, device = options.torch_dtype, options.resolve_device(layer.weight)
        w_hat, info = restore_info(layer, formulation.mask, dtype, device, row_batch=options.row_batch,
                                   max_tries=options.max_damping_tries, tol=restore_tol(options))
        mask = formulation.mask.to(layer.weight.device).clone()
        kept = torch.nonzero(mask[0]).squeeze(1) if formulation.shared_columns else None
        weights = w_hat.to(device=layer.weight.device, dtype=layer.weight.dtype)
        return Solution(weights=weights, mask=mask, status="optimal" if info.path != "cg" else "solved",
                        kept_columns=kept,
                        stats={"damping_used": info.damping_used, "path": "columns" if formulation.shared_columns else "rows",
                               **info.as_stats()})
