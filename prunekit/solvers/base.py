"""Solver base class: capability attributes read by one generic ``accepts``.

A solver is registered for one (formulation type, backend) pair with
:func:`prunekit.solvers.registry.register_solver`.  Capabilities are class attributes:

* ``requires`` -- importable modules the backend needs (checked with ``importlib.util.find_spec``,
  never imported at prunekit import time);
* ``max_weights`` / ``max_in_features`` -- size limits (brute force and MIP references are for toy layers);
* ``handles_integer`` -- solves mixed-integer problems exactly;
* ``exact`` -- returns the proven optimum of the formulation's stated problem (used as the reference in
  differential tests);
* ``devices`` -- device types it runs on;
* ``iterative`` -- its answer comes from a loop with a stopping tolerance; set by
  :class:`~prunekit.solvers.iterative.IterativeSolver`, whose ``IterationStats`` sit in ``solution.stats``
  under fixed keys (the conformance suite reads this attribute, never a stats key's spelling);
* ``options_type`` -- its :class:`~prunekit.solvers.options.SolverOptions` dataclass.
"""

from __future__ import annotations

import importlib.util
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, ClassVar, Optional

from .options import SolverOptions

if TYPE_CHECKING:  # pragma: no cover
    from ..formulations.base import Formulation
    from .solution import Solution


class Solver(ABC):
    """Abstract solver for one formulation type on one backend."""

    formulation_type: ClassVar[type] = object
    backend: ClassVar[str] = ""
    requires: ClassVar[tuple[str, ...]] = ()
    max_weights: ClassVar[Optional[int]] = None
    max_in_features: ClassVar[Optional[int]] = None
    handles_integer: ClassVar[bool] = False
    exact: ClassVar[bool] = False
    devices: ClassVar[tuple[str, ...]] = ("cpu", "cuda")
    iterative: ClassVar[bool] = False
    options_type: ClassVar[type[SolverOptions]] = SolverOptions

    @classmethod
    def missing_requirements(cls) -> list[str]:
        return [mod for mod in cls.requires if importlib.util.find_spec(mod) is None]

    def accepts(self, formulation: "Formulation") -> tuple[bool, str]:
        """Whether this solver can solve ``formulation``; the reason when it cannot."""
        missing = self.missing_requirements()
        if missing:
            extra = "reference" if any(m in ("cvxpy",) for m in missing) else "..."
            return False, f"needs {', '.join(missing)} (pip install 'prunekit[{extra}]')"
        form = formulation.form
        if self.max_weights is not None and form.num_weights > self.max_weights:
            return False, f"layer has {form.num_weights} weights > max_weights={self.max_weights}"
        if self.max_in_features is not None and form.in_features > self.max_in_features:
            return False, f"layer has {form.in_features} inputs > max_in_features={self.max_in_features}"
        return self._accepts(formulation)

    def _accepts(self, formulation: "Formulation") -> tuple[bool, str]:
        """Solver-specific acceptance rule (e.g. only N:M specs); accept by default."""
        return True, ""

    @abstractmethod
    def run(self, formulation: "Formulation", options: SolverOptions) -> "Solution":
        """Solve ``formulation``; must not mutate it. ``solve`` attaches residuals and provenance."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.formulation_type.__name__}, backend={self.backend!r})"
