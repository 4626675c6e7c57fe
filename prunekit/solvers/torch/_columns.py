"""Damped least-squares restoration for a kept column set shared by all rows (methods.md §1 fact 2, C1).

For a kept set S (all rows share it) and the damped Gram ``Gd = G + lambda I``:

.. math::

    \\hat W_{:,S} = W \\, Gd_{:,S} \\, (Gd_{SS})^{-1}, \\qquad \\hat W_{:,P} = 0,

the exact minimizer of ``1/2 tr((W_hat - W) Gd (W_hat - W)^T)`` over weights that vanish on P (so the
core's ``restoration_stationarity`` certificate is zero).  With lambda -> 0 and G_SS invertible it is
FASP's ``W G_{:,S} (G_SS)^{-1}``.  One |S| x |S| Cholesky serves every row.

A private helper of the FASP / FLAP torch solvers, kept tiny until ``torch/closed_form.py`` exists.
"""

from __future__ import annotations

import torch

from ._linalg import spd_solve_right


def restore_kept_columns(layer, keep: torch.Tensor, *, dtype: torch.dtype, device, max_tries: int = 8) -> tuple[torch.Tensor, float]:
    """Restored weight (m, n) in ``dtype`` on ``device`` for the boolean kept-column vector ``keep`` (n,).

    Returns ``(W_hat, damping_used)``; ``damping_used`` is the absolute damping lambda (plus any
    escalation of the Cholesky of Gd_SS).
    """
    w = layer.weight.detach().to(device=device, dtype=dtype)
    keep = keep.to(device=device, dtype=torch.bool)
    gd = layer.damped_gram(dtype=dtype, device=device)
    lam = layer.damping_value()
    out = torch.zeros_like(w)
    if not bool(keep.any()):
        return out, lam
    idx = torch.nonzero(keep).flatten()
    rhs = w @ gd[:, idx]
    g_ss = gd.index_select(0, idx).index_select(1, idx)
    solved, extra = spd_solve_right(rhs, g_ss, 0.0, max_tries=max_tries)
    out[:, idx] = solved
    return out, lam + extra
