"""The iterative-solver base: one owner of the loop bookkeeping (``max_iter``, ``tol``, stop reason, typed stats).

Every iterative torch solver derives from :class:`IterativeSolver` (class attribute ``iterative = True``) and
reports its loop through :class:`IterationStats`, a frozen record flattened into ``solution.stats`` under the
fixed keys :data:`ITERATION_KEYS`.  The conformance suite reads ``solver_cls.iterative`` and
``stats["tol"]`` -- never a solver-specific spelling such as ``rounds`` or ``epochs``.

A loop is one of two kinds:

* **certified** -- the solver declares a certificate (``certificate``: what ``final_residual`` measures) and
  stops once it holds (``residual <= tol`` unless the solver states its own rule); the loop ends
  ``"converged"`` (status ``"solved"``) or on the limit, ``"max_iter"`` (status ``"max_iter"``);
* **scheduled** -- the method prescribes a fixed number of iterations (SparseLLM's epochs, FISTAPruner's T
  rounds of K steps): it ends ``"schedule"``, never claims convergence, and keeps status ``"heuristic"``.

.. code-block:: python

    loop = IterationLoop(max_iter=f.max_rounds, tol=f.eps, certificate="||W_P|| / ||W||")
    for k in loop:
        ...
        if loop.check(ratio, done=stable and ratio < f.eps):
            break
    return self.solution(loop.stats(), weights=..., mask=..., stats={"damping_used": d})
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, Iterator, Mapping, Optional

from .base import Solver
from .solution import Solution

STOP_REASONS = ("converged", "max_iter", "schedule")
"""Why a loop ended: its certificate held, it reached ``max_iter``, or it ran the method's fixed schedule."""

ITERATION_KEYS = ("iterations", "max_iter", "tol", "converged", "final_residual", "stop_reason", "certificate")
"""The keys :meth:`IterationStats.as_stats` writes into ``solution.stats`` (the same for every iterative solver)."""


@dataclass(frozen=True)
class IterationStats:
    """What an iterative solver's loop did (immutable).

    Attributes
    ----------
    iterations : int
        Iterations run (>= 0).
    max_iter : int
        The limit the loop ran under.
    tol : float
        The stopping tolerance of the certificate (0.0 for a scheduled loop, or when stopping is disabled).
    converged : bool
        True exactly when the certificate held at the returned iterate (``stop_reason == "converged"``).
    final_residual : float, optional
        The certificate's value at the returned iterate; None when the loop has no convergence measure.
    stop_reason : {"converged", "max_iter", "schedule"}
    certificate : str
        What ``final_residual`` measures and when it certifies convergence (free text, e.g.
        ``"relative duality gap per row <= tol"``).

    Raises
    ------
    ValueError
        On an unknown ``stop_reason``, ``converged`` disagreeing with it, negative counts or a NaN tolerance.
    """

    iterations: int
    max_iter: int
    tol: float
    converged: bool
    final_residual: Optional[float]
    stop_reason: str
    certificate: str = ""

    def __post_init__(self) -> None:
        if self.stop_reason not in STOP_REASONS:
            raise ValueError(f"stop_reason must be one of {STOP_REASONS}, got {self.stop_reason!r}.")
        if self.converged != (self.stop_reason == "converged"):
            raise ValueError(f"converged={self.converged} contradicts stop_reason={self.stop_reason!r}: a loop is "
                             f"converged exactly when its certificate held.")
        if self.iterations < 0 or self.max_iter < 0:
            raise ValueError(f"iterations and max_iter must be >= 0, got {self.iterations}, {self.max_iter}.")
        if not (math.isfinite(self.tol) and self.tol >= 0):
            raise ValueError(f"tol must be a finite number >= 0, got {self.tol!r}.")

    @classmethod
    def schedule(cls, iterations: int, *, max_iter: Optional[int] = None, final_residual: Optional[float] = None,
                 certificate: str = "") -> "IterationStats":
        """Stats of a loop that ran the method's fixed schedule (``iterations`` of at most ``max_iter``, default
        ``iterations``) with no convergence test."""
        return cls(iterations=int(iterations), max_iter=int(iterations if max_iter is None else max_iter),
                   tol=0.0, converged=False,
                   final_residual=None if final_residual is None else float(final_residual),
                   stop_reason="schedule", certificate=certificate)

    @classmethod
    def certified(cls, iterations: int, max_iter: int, tol: float, converged: bool,
                  final_residual: Optional[float], certificate: str = "") -> "IterationStats":
        """Stats of a certified loop: ``"converged"`` when the certificate held, else ``"max_iter"``."""
        return cls(iterations=int(iterations), max_iter=int(max_iter), tol=float(tol), converged=bool(converged),
                   final_residual=None if final_residual is None else float(final_residual),
                   stop_reason="converged" if converged else "max_iter", certificate=certificate)

    @property
    def status(self) -> str:
        """The Solution status this loop supports: "solved", "max_iter", or "heuristic" (scheduled loops)."""
        return {"converged": "solved", "max_iter": "max_iter", "schedule": "heuristic"}[self.stop_reason]

    def as_stats(self) -> dict[str, Any]:
        """The record as ``solution.stats`` entries under :data:`ITERATION_KEYS`."""
        return {key: getattr(self, key) for key in ITERATION_KEYS}

    @classmethod
    def from_stats(cls, stats: Mapping[str, Any]) -> "IterationStats":
        """Read the record back from ``solution.stats``.

        Raises
        ------
        KeyError
            When ``stats`` lacks one of :data:`ITERATION_KEYS` (the solver does not report through this base).
        """
        missing = [k for k in ITERATION_KEYS if k not in stats]
        if missing:
            raise KeyError(f"stats lack {missing}: the solver does not report through IterativeSolver. "
                           f"Fix: derive it from prunekit.solvers.iterative.IterativeSolver.")
        return cls(**{k: stats[k] for k in ITERATION_KEYS})


class IterationLoop:
    """Counts iterations ``1..max_iter`` and records the certificate of the latest iterate.

    Iterate over it; call :meth:`check` once per iteration with the certificate's value and ``break`` when it
    returns True.  :meth:`stats` then tells whether the loop converged or hit the limit.

    Parameters
    ----------
    max_iter : int
        Iteration limit (>= 0).
    tol : float
        Stopping tolerance: :meth:`check` stops when ``residual <= tol`` unless given its own ``done``.
    certificate : str
        What the residual measures (copied into :class:`IterationStats`).
    """

    def __init__(self, max_iter: int, tol: float, certificate: str = "") -> None:
        if isinstance(max_iter, bool) or int(max_iter) != max_iter or max_iter < 0:
            raise ValueError(f"max_iter must be an int >= 0, got {max_iter!r}.")
        self.max_iter = int(max_iter)
        self.tol = float(tol)
        self.certificate = certificate
        self.iterations = 0
        self.residual: Optional[float] = None
        self.converged = False

    def __iter__(self) -> Iterator[int]:
        for k in range(1, self.max_iter + 1):
            self.iterations = k
            self.converged = False
            yield k

    def check(self, residual: float, done: Optional[bool] = None) -> bool:
        """Record the certificate of the current iterate; True when it holds (default ``residual <= tol``)."""
        self.residual = float(residual)
        self.converged = bool(self.residual <= self.tol) if done is None else bool(done)
        return self.converged

    def stats(self) -> IterationStats:
        """The loop's :class:`IterationStats` (``"converged"`` iff the last :meth:`check` held)."""
        return IterationStats.certified(self.iterations, self.max_iter, self.tol, self.converged, self.residual,
                                        self.certificate)


class IterativeSolver(Solver):
    """Base of solvers that iterate: ``iterative = True`` and stats in :data:`ITERATION_KEYS`.

    Subclasses build their result with :meth:`solution`, which merges the loop's :class:`IterationStats`
    into ``stats`` and sets the status the loop supports (``"solved"`` only when the certificate held).
    """

    iterative: ClassVar[bool] = True

    @staticmethod
    def solution(loop: IterationStats, *, stats: Optional[Mapping[str, Any]] = None,
                 status: Optional[str] = None, **fields: Any) -> Solution:
        """A :class:`Solution` with ``loop`` in the fixed stats keys; ``stats`` adds solver-specific entries.

        ``status`` defaults to ``loop.status``; an explicit one may only weaken it to ``"heuristic"`` (a
        converged loop of a heuristic method).

        Raises
        ------
        ValueError
            When ``stats`` redefines one of :data:`ITERATION_KEYS`, or ``status`` claims more than the loop shows.
        """
        extra = dict(stats or {})
        clash = sorted(set(extra) & set(ITERATION_KEYS))
        if clash:
            raise ValueError(f"solver stats {clash} collide with the IterationStats keys; rename them.")
        if status is not None and status not in (loop.status, "heuristic"):
            raise ValueError(f"status {status!r} is not supported by a loop that ended {loop.stop_reason!r}.")
        return Solution(status=status or loop.status, stats={**extra, **loop.as_stats()}, **fields)


def iteration_stats(solution: Solution) -> IterationStats:
    """The :class:`IterationStats` of an iterative solver's ``solution`` (KeyError when it has none)."""
    return IterationStats.from_stats(solution.stats)


__all__ = ["ITERATION_KEYS", "STOP_REASONS", "IterationLoop", "IterationStats", "IterativeSolver", "iteration_stats"]
