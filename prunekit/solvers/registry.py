"""Solver registry keyed by (formulation type, backend).

Registration order is the preference order of ``backend="auto"``.  Solver modules under
``prunekit/solvers/torch`` and ``prunekit/solvers/reference`` are discovered and imported on first use
(torch first, so torch solvers are preferred), which keeps ``import prunekit`` light and never imports
an optional backend such as cvxpy: reference modules import it inside ``run``.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import TYPE_CHECKING, Callable

from ..errors import NoSolverError
from .base import Solver

if TYPE_CHECKING:  # pragma: no cover
    from ..formulations.base import Formulation

BACKENDS = ("torch", "cvxpy", "scipy", "bruteforce")
_REGISTRY: list[type[Solver]] = []
_DISCOVERED = False
_SOLVER_PACKAGES = ("prunekit.solvers.torch", "prunekit.solvers.reference")


def register_solver(formulation_type: type, backend: str) -> Callable[[type[Solver]], type[Solver]]:
    """Class decorator registering a :class:`Solver` subclass for ``(formulation_type, backend)``.

    Example::

        @register_solver(MultipleRemoval, backend="torch")
        class TorchMultipleRemoval(Solver):
            def run(self, formulation, options): ...
    """

    def decorator(cls: type[Solver]) -> type[Solver]:
        if not (isinstance(cls, type) and issubclass(cls, Solver)):
            raise TypeError("register_solver decorates Solver subclasses.")
        cls.formulation_type = formulation_type
        cls.backend = backend
        for existing in _REGISTRY:
            if existing.formulation_type is formulation_type and existing.backend == backend:
                if existing.__qualname__ == cls.__qualname__ and existing.__module__ == cls.__module__:
                    _REGISTRY.remove(existing)  # module re-import: replace
                    break
                raise ValueError(
                    f"a solver for ({formulation_type.__name__}, {backend!r}) is already registered: "
                    f"{existing.__module__}.{existing.__qualname__}."
                )
        _REGISTRY.append(cls)
        return cls

    return decorator


def unregister_solver(cls: type[Solver]) -> None:
    """Remove a registered solver (for tests and examples that register temporary solvers)."""
    if cls in _REGISTRY:
        _REGISTRY.remove(cls)


def discover() -> None:
    """Import every solver module shipped with prunekit (idempotent)."""
    global _DISCOVERED
    if _DISCOVERED:
        return
    _DISCOVERED = True
    for pkg_name in _SOLVER_PACKAGES:
        pkg = importlib.import_module(pkg_name)
        for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda i: i.name):
            if not info.name.startswith("_"):
                importlib.import_module(f"{pkg_name}.{info.name}")


def registered() -> list[type[Solver]]:
    """All registered solver classes, in preference order."""
    discover()
    return list(_REGISTRY)


def solvers_for(formulation_type: type) -> list[type[Solver]]:
    """Solvers registered for exactly ``formulation_type`` (no inheritance: each formulation states its own problem)."""
    return [cls for cls in registered() if cls.formulation_type is formulation_type]


def backends_for(formulation_type: type) -> list[str]:
    return [cls.backend for cls in solvers_for(formulation_type)]


def installed_backends() -> list[str]:
    """Backends with at least one solver whose requirements are installed."""
    out = []
    for cls in registered():
        if not cls.missing_requirements() and cls.backend not in out:
            out.append(cls.backend)
    return out


def resolve(formulation: "Formulation", backend: str = "auto") -> Solver:
    """The solver instance to use for ``formulation`` on ``backend`` ("auto" = first that accepts)."""
    if backend != "auto" and backend not in BACKENDS and not any(c.backend == backend for c in registered()):
        raise NoSolverError(
            f"unknown backend {backend!r}. Fix: use one of {['auto', *BACKENDS]}."
        )
    ftype = type(formulation)
    candidates = solvers_for(ftype)
    tried: list[str] = []
    for cls in candidates:
        if backend != "auto" and cls.backend != backend:
            continue
        solver = cls()
        ok, why = solver.accepts(formulation)
        if ok:
            return solver
        tried.append(f"{cls.backend} ({cls.__name__}): {why}")
    able = [c.backend for c in candidates if c().accepts(formulation)[0]]
    if backend != "auto" and not any(c.backend == backend for c in candidates):
        tried.append(f"{backend}: no solver registered for {ftype.__name__}")
    advice = getattr(formulation, "advice", "")
    raise NoSolverError(
        f"no solver accepts {ftype.__name__} with backend={backend!r}. "
        f"Tried: {'; '.join(tried) or 'nothing registered'}. "
        f"Backends that can solve this problem: {', '.join(able) or 'none'}."
        + (f" {advice}" if advice else "")
    )
