"""Tolerances per dtype and backend, and the comparisons that use them.

A float64 reference (CVXPY, SciPy, brute force) and a torch solver agree on an objective when

.. math::

    |f - f_{ref}| \\le \\text{atol} \\cdot s + \\text{rtol} \\cdot |f_{ref}|,

where ``s`` is the problem's natural scale (the dense energy :math:`\\tfrac12 \\lVert W X \\rVert_F^2`, so
``atol`` is relative to the size of the problem and an objective near 0 still compares sensibly).  Weights
compare entrywise against ``atol * max|W| + rtol * |W_ref|``.  ``kkt`` bounds relative stationarity residuals
(``restoration_stationarity`` and similar certificates).

The defaults are calibrated for the toy layers of :mod:`prunekit.verification.strategies`, whose Gram
matrices reach a condition number of ~1e8: float32 solves lose up to ``cond * eps`` in the weights, but
objective values (a backward-stable quantity) stay close.

An iterative solver (one that declares ``iterative = True``, i.e. derives from
:class:`~prunekit.solvers.iterative.IterativeSolver`) stops at its own tolerance, so :func:`kkt_bound` judges
its KKT residuals against ``ITERATIVE_KKT_FACTOR * tol`` when that is looser than the dtype's bound.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Union

import torch

_BY_DTYPE = {
    # dtype name: (atol, rtol, kkt)
    "float64": (1e-9, 1e-7, 1e-7),
    "float32": (1e-5, 1e-4, 1e-3),
    "bfloat16": (2e-2, 2e-2, 5e-2),
    "float16": (1e-2, 1e-2, 3e-2),
}
# Reference backends solve to their own accuracy; looser than float64 round-off for iterative ones.
_BACKEND_FLOOR = {
    "cvxpy": (1e-6, 1e-5, 1e-5),
    "scipy": (1e-8, 1e-6, 1e-6),
    "bruteforce": (1e-9, 1e-7, 1e-7),
    "torch": (0.0, 0.0, 0.0),
}


ITERATIVE_KKT_FACTOR = 100.0
"""How far above its own stopping tolerance an iterative solver's relative KKT residuals may sit."""


@dataclass(frozen=True)
class Tolerance:
    """Absolute (scale-relative) and relative tolerance, plus the bound on relative KKT residuals.

    Attributes
    ----------
    atol : float
        Tolerance relative to the problem scale (dense energy for objectives, max |W| for weights).
    rtol : float
        Tolerance relative to the reference value.
    kkt : float
        Largest acceptable relative stationarity residual.
    """

    atol: float
    rtol: float
    kkt: float = 1e-6

    def bound(self, expected: float, scale: float = 1.0) -> float:
        """Largest acceptable |actual - expected|."""
        return self.atol * abs(scale) + self.rtol * abs(expected)

    def scaled(self, factor: float) -> "Tolerance":
        """This tolerance multiplied by ``factor`` (e.g. for ill-conditioned problems)."""
        return Tolerance(self.atol * factor, self.rtol * factor, self.kkt * factor)

    def combine(self, other: "Tolerance") -> "Tolerance":
        """The looser of two tolerances, entrywise."""
        return Tolerance(max(self.atol, other.atol), max(self.rtol, other.rtol), max(self.kkt, other.kkt))


def _dtype_name(dtype: Union[str, torch.dtype]) -> str:
    if isinstance(dtype, torch.dtype):
        return str(dtype).replace("torch.", "")
    return str(dtype).replace("torch.", "")


def for_dtype(dtype: Union[str, torch.dtype] = "float64", backend: str = "torch") -> Tolerance:
    """Tolerance for comparing a solution computed in ``dtype`` on ``backend`` with a float64 reference.

    Parameters
    ----------
    dtype : str or torch.dtype
        "float64", "float32", "bfloat16" or "float16" (or the torch dtype).
    backend : str
        The backend of the *reference* being compared against ("bruteforce", "scipy", "cvxpy") or "torch";
        the tolerance is the looser of the dtype's and the backend's accuracy.

    Raises
    ------
    ValueError
        For an unknown dtype.
    """
    name = _dtype_name(dtype)
    if name not in _BY_DTYPE:
        raise ValueError(f"no tolerance for dtype {dtype!r}; known: {sorted(_BY_DTYPE)}.")
    base = Tolerance(*_BY_DTYPE[name])
    floor = _BACKEND_FLOOR.get(backend, _BACKEND_FLOOR["cvxpy"])
    return base.combine(Tolerance(*floor))


def kkt_bound(dtype: Union[str, torch.dtype] = "float64", backend: str = "torch", *, iterative: bool = False,
              tol: float = 0.0) -> float:
    """Largest acceptable relative KKT residual of a solution computed in ``dtype`` by a ``backend`` solver.

    ``for_dtype(dtype, backend).kkt``; for an ``iterative`` solver (its class attribute, never guessed from its
    stats) at least ``ITERATIVE_KKT_FACTOR * tol``, where ``tol`` is the stopping tolerance it reports
    (``solution.stats["tol"]`` of :class:`~prunekit.solvers.iterative.IterationStats`).
    """
    base = for_dtype(dtype, backend=backend).kkt
    if not iterative:
        return base
    if not (math.isfinite(tol) and tol >= 0):
        raise ValueError(f"tol must be a finite number >= 0, got {tol!r}.")
    return max(base, ITERATIVE_KKT_FACTOR * tol)


def objective_error(actual: float, expected: float, scale: Optional[float] = None) -> float:
    """|actual - expected| / max(scale, |expected|, tiny): a relative objective error (inf for non-finite)."""
    if not (math.isfinite(actual) and math.isfinite(expected)):
        return math.inf
    denom = max(abs(scale) if scale is not None else 0.0, abs(expected), 1e-300)
    return abs(actual - expected) / denom


def objectives_close(actual: float, expected: float, tol: Tolerance, scale: float = 1.0) -> bool:
    """Whether ``|actual - expected| <= tol.atol * scale + tol.rtol * |expected|`` (False on NaN/Inf)."""
    if not (math.isfinite(actual) and math.isfinite(expected)):
        return False
    return abs(actual - expected) <= tol.bound(expected, scale)


def weights_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max |actual - expected| / max(max |expected|, tiny), computed in float64 on the CPU."""
    a = actual.detach().to("cpu", torch.float64)
    e = expected.detach().to("cpu", torch.float64)
    if a.shape != e.shape:
        return math.inf
    if not (torch.isfinite(a).all() and torch.isfinite(e).all()):
        return math.inf
    if a.numel() == 0:
        return 0.0
    return float((a - e).abs().max()) / max(float(e.abs().max()), 1e-300)


def weights_close(actual: torch.Tensor, expected: torch.Tensor, tol: Tolerance,
                  scale: Optional[float] = None) -> bool:
    """Entrywise ``|a - e| <= tol.atol * scale + tol.rtol * |e|`` with ``scale = max |e|`` by default."""
    a = actual.detach().to("cpu", torch.float64)
    e = expected.detach().to("cpu", torch.float64)
    if a.shape != e.shape or not (torch.isfinite(a).all() and torch.isfinite(e).all()):
        return False
    s = float(e.abs().max()) if scale is None and e.numel() else (scale or 0.0)
    return bool(((a - e).abs() <= tol.atol * s + tol.rtol * e.abs()).all())


__all__ = ["ITERATIVE_KKT_FACTOR", "Tolerance", "for_dtype", "kkt_bound", "objective_error", "objectives_close", "weights_close", "weights_error"]
