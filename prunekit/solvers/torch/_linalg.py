"""Damped Cholesky factorization with automatic escalation, and the solves built on it.

Every torch solver that factorizes ``G + lambda I`` goes through :func:`damped_cholesky`: it tries the
factorization, and on failure multiplies the damping by 10 (up to ``max_tries`` times) before raising a
:class:`~prunekit.errors.NumericalError` that says what to do.  The damping actually used is returned so
solvers report it in ``Solution.stats["damping_used"]``.
"""

from __future__ import annotations

import torch

from ...errors import NumericalError


def damped_cholesky(matrix: torch.Tensor, damping: float, *, max_tries: int = 8) -> tuple[torch.Tensor, float]:
    """Lower Cholesky factor L of ``matrix + damping I`` (matrix symmetric PSD), escalating damping x10 on failure.

    Returns ``(L, damping_used)``.  ``damping`` is absolute (the caller scales it by mean(diag)).
    """
    n = matrix.shape[-1]
    eye = torch.eye(n, dtype=matrix.dtype, device=matrix.device)
    scale = float(matrix.diagonal().abs().mean()) if n else 1.0
    lam = float(damping)
    if lam <= 0:
        lam_next = 1e-8 * (scale if scale > 0 else 1.0)
    else:
        lam_next = lam
    for attempt in range(max_tries + 1):
        trial = matrix if (attempt == 0 and lam == 0) else matrix + lam * eye
        factor, info = torch.linalg.cholesky_ex(trial)
        if int(info.max() if info.dim() else info) == 0 and torch.isfinite(factor).all():
            return factor, lam
        lam = lam_next if lam == 0 else lam * 10.0
        lam_next = lam * 10.0
    raise NumericalError(
        f"Cholesky of the {n} x {n} Gram matrix failed even with damping {lam:.3g} "
        f"({max_tries} escalations). Fix: check the calibration statistics (is G = X X^T?), raise "
        f"LayerData.damping, or use dtype='float64'."
    )


def spd_solve_right(rhs: torch.Tensor, matrix: torch.Tensor, damping: float, *, max_tries: int = 8) -> tuple[torch.Tensor, float]:
    """Solve ``X (matrix + damping I) = rhs`` for X (rows of ``rhs`` are independent right-hand sides).

    Returns ``(X, damping_used)``; one factorization serves all rows.
    """
    factor, used = damped_cholesky(matrix, damping, max_tries=max_tries)
    solution = torch.cholesky_solve(rhs.T, factor).T
    return solution, used


def spd_inverse(matrix: torch.Tensor, damping: float, *, max_tries: int = 8) -> tuple[torch.Tensor, float]:
    """Inverse of ``matrix + damping I`` through its Cholesky factor; returns ``(inverse, damping_used)``.

    Computed as ``cholesky_solve(I, L)`` (two triangular solves), measured ~1.5x faster than
    ``cholesky_inverse`` on CPU at n = 2816; equal up to rounding (not bitwise symmetric: symmetrize if needed).
    """
    factor, used = damped_cholesky(matrix, damping, max_tries=max_tries)
    eye = torch.eye(factor.shape[-1], dtype=factor.dtype, device=factor.device)
    return torch.cholesky_solve(eye, factor), used


def upper_cholesky_of_inverse(matrix: torch.Tensor, damping: float, *, max_tries: int = 8) -> tuple[torch.Tensor, float]:
    """Upper factor U with ``(matrix + damping I)^{-1} = U^T U`` (SparseGPT's Hinv; methods.md §1 fact 4)."""
    inverse, used = spd_inverse(matrix, damping, max_tries=max_tries)
    factor, info = torch.linalg.cholesky_ex(inverse, upper=True)
    if int(info) != 0:
        inverse = 0.5 * (inverse + inverse.T)
        factor, used2 = damped_cholesky(inverse, 0.0, max_tries=max_tries)
        factor = factor.T
    return factor, used
