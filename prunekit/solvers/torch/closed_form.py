"""Closed-form restoration for a fixed keep-mask (methods.md §1 facts 2-3), batched over rows.

Two code paths, one answer (the optimum of :class:`~prunekit.formulations.restoration.FixedMaskRestoration`):

* **shared kept columns** S (structured masks): ``W_S <- W_S + W_P G_PS (G_SS + lambda I)^{-1}`` with one
  |S| x |S| damped Cholesky for all rows (:func:`restore_columns`);
* **per-row kept sets**: the Lagrange (OBS/MRP Solution M) form
  ``dw_i = -w_{i,P} (H^{-1}_{PP})^{-1} H^{-1}_{P,:}`` with ``H = G + lambda I``: rows are grouped by their
  pruned count q and solved as batched q x q Cholesky systems, ``row_batch`` rows at a time, and the update
  is ``-z @ H^{-1}`` with z scattered back to n columns (no gather of n-wide rows of H^{-1}).

:func:`lagrange_rows` is the reusable kernel (also used by MRP's blocked variant); :func:`restore` and
:func:`restore_columns` are the entry points other solvers (FASP, SPAP, MRP) call.
"""

from __future__ import annotations

from typing import Optional

import torch

from ...errors import FormulationError, NumericalError
from ...formulations.layer import LayerData
from ...formulations.restoration import FixedMaskRestoration
from ..base import Solver
from ..options import SolverOptions
from ..registry import register_solver
from ..solution import Solution
from ._linalg import damped_cholesky, spd_inverse


MAX_BATCH_ELEMENTS = 1 << 27  # elements of the batched q x q blocks when options.row_batch is None


def _undamped(layer: LayerData, dtype: torch.dtype, device) -> tuple[torch.Tensor, float]:
    """``(G with dead inputs set to G_jj = 1, lambda)`` so that ``G + lambda I = layer.damped_gram()``."""
    if layer.has_error_correction:
        raise FormulationError("the closed-form restoration uses the plain objective; this layer has gram_star/cross. "
                               "Fix: build LayerData without inputs_star for restoration.")
    lam = layer.damping_value()
    return layer.damped_gram(dtype=dtype, device=device, extra=-lam), lam


def damped_inverse(layer: LayerData, dtype: torch.dtype, device, *, max_tries: int = 8) -> tuple[torch.Tensor, float]:
    """``((G + lambda I)^{-1}, lambda_used)`` through a damped Cholesky with escalation, symmetrized."""
    g0, lam = _undamped(layer, dtype, device)
    inv, used = spd_inverse(g0, lam, max_tries=max_tries)
    return 0.5 * (inv + inv.T), used


def _batched_spd_solve(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Solve a z = b for a batch of SPD matrices a (k, q, q), b (k, q); LU fallback where Cholesky fails."""
    factor, info = torch.linalg.cholesky_ex(a)
    z = torch.cholesky_solve(b.unsqueeze(-1), factor).squeeze(-1)
    bad = info != 0
    if bool(bad.any()):
        z[bad] = torch.linalg.solve(a[bad], b[bad])
    if not bool(torch.isfinite(z).all()):
        raise NumericalError(
            "a principal block of the inverse Hessian is numerically singular. "
            "Fix: raise LayerData.damping or use dtype='float64'."
        )
    return z


def lagrange_rows(weight: torch.Tensor, prune: torch.Tensor, hinv_rows: torch.Tensor,
                  *, row_batch: Optional[int] = None) -> torch.Tensor:
    """Multiple-removal (Solution M) update of every row, batched by pruned count.

    Parameters
    ----------
    weight : (r, f)
        Rows to update over the free columns F (the first ``B`` columns are the ones that may be pruned).
    prune : (r, B) bool
        Entries of the first ``B`` columns to set to zero (True = pruned).
    hinv_rows : (B, f)
        Rows of ``(H_FF)^{-1}`` for those B columns; ``hinv_rows[:, :B]`` is SPD.

    Returns a new (r, f) tensor ``w - w_P (Hinv_PP)^{-1} Hinv_{P,:}`` with the pruned entries exactly 0.
    Rows with equal q are solved together, ``row_batch`` at a time (None: as many as fit in
    ``MAX_BATCH_ELEMENTS`` elements of q x q blocks; results do not depend on the batching).
    """
    out = weight.clone()
    r, width = prune.shape
    counts = prune.sum(dim=1)
    hinv_pp = hinv_rows[:, :width]
    for q in torch.unique(counts).tolist():
        if q == 0:
            continue
        rows_q = torch.nonzero(counts == q).squeeze(1)
        # row_batch=None: all rows, capped so the batched q x q systems stay within ~MAX_BATCH_ELEMENTS
        step = row_batch or max(1, min(r, MAX_BATCH_ELEMENTS // (q * q + q * hinv_rows.shape[1])))
        for start in range(0, rows_q.numel(), step):
            rows = rows_q[start:start + step]
            b = rows.numel()
            idx = torch.nonzero(prune[rows])[:, 1].view(b, q)  # row-major: q pruned columns per row
            a = hinv_pp[idx.unsqueeze(2), idx.unsqueeze(1)]  # (b, q, q)
            w_p = torch.gather(out[rows], 1, idx)
            z = _batched_spd_solve(a, w_p)
            z_full = torch.zeros(b, width, dtype=out.dtype, device=out.device).scatter_(1, idx, z)
            new = out[rows] - z_full @ hinv_rows
            new[:, :width] = new[:, :width].masked_fill(prune[rows], 0.0)
            out[rows] = new
    return out


def restore(layer: LayerData, keep_mask: torch.Tensor, dtype: torch.dtype = torch.float64, device=None, *,
            row_batch: Optional[int] = None, max_tries: int = 8,
            hinv: Optional[torch.Tensor] = None, damping_used: Optional[float] = None) -> tuple[torch.Tensor, float]:
    """Optimal weights on ``keep_mask`` (True = kept): ``(W_hat in dtype on device, damping_used)``.

    Shared masks take the |S| x |S| fast path (:func:`restore_columns`).  ``hinv`` (with its
    ``damping_used``) may be passed to reuse an inverse ``(G + lambda I)^{-1}`` already computed.
    """
    device = torch.device(device) if device is not None else layer.weight.device
    keep = keep_mask.to(device=device, dtype=torch.bool)
    if hinv is None and bool((keep == keep[:1]).all()):
        cols = torch.nonzero(keep[0]).squeeze(1)
        return restore_columns(layer, cols, dtype=dtype, device=device, max_tries=max_tries)
    if hinv is None:
        hinv, damping_used = damped_inverse(layer, dtype, device, max_tries=max_tries)
    w = layer.weight.detach().to(device=device, dtype=dtype)
    out = lagrange_rows(w, ~keep, hinv.to(device=device, dtype=dtype), row_batch=row_batch)
    return out, float(damping_used if damping_used is not None else layer.damping_value())


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
    m, n = w.shape
    cols = torch.as_tensor(kept_columns, device=device).flatten()
    if cols.dtype == torch.bool:  # a boolean kept-column vector (n,)
        keep = cols.clone()
    else:  # indices of kept columns
        keep = torch.zeros(n, dtype=torch.bool, device=device)
        keep[cols.long()] = True
    s_idx = torch.nonzero(keep).squeeze(1)
    p_idx = torch.nonzero(~keep).squeeze(1)
    out = torch.zeros_like(w)
    g0, lam = _undamped(layer, dtype, device)
    if s_idx.numel() == 0:
        return out, lam
    factor, used = damped_cholesky(g0[s_idx][:, s_idx], lam, max_tries=max_tries)
    w_s = w[:, s_idx]
    if p_idx.numel():
        rhs = w[:, p_idx] @ g0[p_idx][:, s_idx]  # W_P G_PS  (m, |S|)
        w_s = w_s + torch.cholesky_solve(rhs.T, factor).T
    out[:, s_idx] = w_s
    return out, used


@register_solver(FixedMaskRestoration, backend="torch")
class TorchFixedMaskRestoration(Solver):
    """Damped-Cholesky restoration on a fixed mask (shared-column fast path or batched Lagrange form)."""

    exact = True

    def run(self, formulation: FixedMaskRestoration, options: SolverOptions) -> Solution:
        layer = formulation.layer
        dtype, device = options.torch_dtype, options.resolve_device(layer.weight)
        w_hat, used = restore(layer, formulation.mask, dtype, device, row_batch=options.row_batch,
                              max_tries=options.max_damping_tries)
        mask = formulation.mask.to(layer.weight.device).clone()
        kept = torch.nonzero(mask[0]).squeeze(1) if formulation.shared_columns else None
        weights = w_hat.to(device=layer.weight.device, dtype=layer.weight.dtype)
        return Solution(weights=weights, mask=mask, status="optimal", kept_columns=kept,
                        stats={"damping_used": used, "path": "columns" if formulation.shared_columns else "rows"})
