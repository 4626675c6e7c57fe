"""Solving: ``solve(formulation, backend=...)`` dispatches through the registry and returns a new Solution.

.. code-block:: python

    sol = prunekit.solve(MultipleRemoval(layer, NM(2, 4)), backend="torch", dtype="float64")
    sol.weights, sol.mask, sol.objective, sol.residuals, sol.provenance
"""

from __future__ import annotations

import platform
import time
from typing import Any, Optional

import torch as _torch  # not `torch`: the subpackage prunekit.solvers.torch would shadow it

from ..errors import NumericalError
from .base import Solver
from .options import ReferenceOptions, SolverOptions, build_options, check_solver_options, option_fields, parse_device
from .registry import (
    BACKENDS,
    backends_for,
    installed_backends,
    register_solver,
    registered,
    resolve,
    solvers_for,
    unregister_solver,
)
from .solution import Solution


def _versions() -> dict[str, str]:
    from .. import __version__

    return {"prunekit": __version__, "torch": _torch.__version__, "python": platform.python_version()}


def solve(formulation, backend: str = "auto", options: Optional[SolverOptions] = None, **overrides: Any) -> Solution:
    """Solve one layer-level formulation and return a new :class:`Solution`.

    Parameters
    ----------
    formulation : Formulation
        The problem (left untouched).
    backend : {"auto", "torch", "cvxpy", "scipy", "bruteforce"}
        "auto" takes the first registered solver that accepts the problem (torch first).
    options : SolverOptions, optional
        The solver's options dataclass; defaults to the solver's ``options_type()``.
    **overrides
        Field overrides applied to ``options`` (e.g. ``dtype="float64"``); an unknown name or a wrongly typed
        value raises :class:`~prunekit.errors.OptionsError` (a TypeError) listing the valid fields and types.

    Raises
    ------
    NoSolverError
        No solver accepts the problem on that backend (the message lists the backends that can).
    NumericalError
        The solver produced NaN/Inf.
    """
    from ..formulations.base import Formulation

    if not isinstance(formulation, Formulation):
        raise TypeError(f"solve() takes a Formulation, got {type(formulation).__name__}.")
    solver = resolve(formulation, backend)
    opts = build_options(solver.options_type, options, overrides)
    start = time.perf_counter()
    sol = solver.run(formulation, opts)
    elapsed = time.perf_counter() - start
    if not isinstance(sol, Solution):
        raise TypeError(f"{type(solver).__name__}.run must return a Solution, got {type(sol).__name__}.")
    if not _torch.isfinite(sol.weights).all() or (sol.bias is not None and not _torch.isfinite(sol.bias).all()):
        raise NumericalError(
            f"{type(solver).__name__} produced NaN/Inf weights for {type(formulation).__name__}. "
            f"Fix: raise the layer's damping, or use dtype='float64'."
        )
    residuals = formulation.residuals(sol)
    stats = {**sol.stats, "time_s": elapsed}
    provenance = {
        **formulation.describe(),
        "backend": solver.backend,
        "solver": type(solver).__name__,
        "options": opts.to_dict(),
        "versions": _versions(),
        "device": str(sol.weights.device),
        **dict(sol.provenance),
    }
    return sol.replace(objective=residuals["objective"], residuals=residuals, stats=stats, provenance=provenance)


__all__ = [
    "BACKENDS",
    "ReferenceOptions",
    "Solution",
    "Solver",
    "SolverOptions",
    "backends_for",
    "check_solver_options",
    "installed_backends",
    "option_fields",
    "parse_device",
    "register_solver",
    "registered",
    "resolve",
    "solve",
    "solvers_for",
    "unregister_solver",
]
