"""Conformance suite: contract checks for every registered (formulation type, backend) solver.

In the spirit of scikit-learn's ``parametrize_with_checks``: registering a solver is enough to get it tested.
For every solver class in :func:`prunekit.solvers.registry.registered` and several seeds of its formulation's
``example(rng)``, the suite yields these checks (each a callable raising
:class:`~prunekit.errors.VerificationError`):

* ``solution_contract``   -- returns a Solution; weight shape, dtype and device preserved; bool (m, n) mask;
* ``dtype_float32``       -- a float32 weight comes back as float32;
* ``device_cuda``         -- (torch solvers, where CUDA exists) CUDA inputs give CUDA outputs;
* ``mask_obeys_spec``     -- zero mask violations and weights exactly zero off the mask;
* ``deterministic``       -- two solves with the same options are bitwise identical;
* ``input_not_mutated``   -- every tensor of the formulation (weights, Gram, ...) is bitwise unchanged;
* ``residuals``           -- all residuals finite; stationarity/KKT residuals (run with ``dtype="float64"``)
  below :func:`~prunekit.verification.tolerances.kkt_bound`: ``for_dtype("float64", backend).kkt``, or
  ``100 * tol`` for iterative solvers -- those *declaring* ``iterative = True``
  (:class:`~prunekit.solvers.iterative.IterativeSolver`), ``tol`` being the stopping tolerance of their
  ``IterationStats`` (never guessed from how a stats key is spelt); variants such as
  ``stationarity``/``stationarity_undamped`` count as one certificate, met when one variant is;
* ``iteration_stats``     -- (iterative solvers) ``solution.stats`` holds a valid
  :class:`~prunekit.solvers.iterative.IterationStats` under its fixed keys, and the status is the one its
  stop reason supports ("solved" only when the certificate held, "max_iter" on the limit);
* ``matches_reference``   -- torch solvers (run with ``dtype="float64"``) reach the objective of their
  reference twin (a non-torch solver of the same formulation type, ``exact=True`` preferred) and, when the
  scores have no ties and the twin is not an exact MIP (several optima), the same mask (up to entries where
  both weights are numerically zero).  A heuristic torch
  solver of a mixed-integer problem with an exact twin is checked against the bound ``f >= f*`` instead.

Formulations without a layer (``layer is None``, e.g. ``LayerAllocation``) get the layer-free subset (no
dtype round trip; the primal vector stands in for the weights).  A solver that declines every example
because an optional dependency is missing raises ``BackendUnavailable`` (a skip with the reason in pytest,
status "unavailable" in :func:`run_conformance`).

Registry-level checks: ``example_implemented`` (a formulation type whose ``example`` raises
NotImplementedError fails), ``has_reference_twin`` (every torch solver needs one) and ``discovery`` (every
solver module imports).

Usage in pytest::

    from prunekit.verification.conformance import parametrize_with_checks

    @parametrize_with_checks()
    def test_registered(check):
        try:
            check()
        except BackendUnavailable as exc:  # e.g. cvxpy without a mixed-integer solver
            pytest.skip(str(exc))

Programmatically: :func:`run_conformance` returns one record per check.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterable, Optional, Sequence

import numpy as np
import torch

from ..errors import BackendUnavailable, VerificationError
from .checks import stationarity_violations
from .contracts import (
    PER_EXAMPLE_CHECKS,
    _solve,
    check_device_cuda,
    check_example_implemented,
    check_has_reference_twin,
    check_matches_reference,
    find_example,
    kkt_tolerance,
    reference_twin,
)

DEFAULT_SEEDS = (0, 1, 2)


@dataclass(frozen=True)
class ConformanceCheck:
    """One contract check, callable without arguments (raises VerificationError on failure)."""

    name: str
    solver: Optional[type]
    seed: Optional[int]
    fn: Callable[[], None]

    @property
    def id(self) -> str:
        who = f"{self.solver.__name__}[{self.solver.backend}]" if self.solver is not None else "registry"
        return f"{who}-{self.name}" + (f"-s{self.seed}" if self.seed is not None else "")

    def __call__(self) -> None:
        self.fn()

    def __repr__(self) -> str:
        return self.id


# ---------------------------------------------------------------------------------------------- iterative solvers
def is_iterative(solver_cls: type) -> bool:
    """Whether ``solver_cls`` declares itself iterative (class attribute ``iterative``; IterativeSolver sets it)."""
    return bool(getattr(solver_cls, "iterative", False))


def solver_kkt_bound(solver_cls: type, solution, dtype: str = "float64") -> float:
    """:func:`~prunekit.verification.tolerances.kkt_bound` for ``solution`` of ``solver_cls``.

    An iterative solver's tolerance is the ``tol`` of its ``IterationStats``; a solver that declares itself
    iterative without reporting one is judged against ``options.tol``.
    """
    return kkt_tolerance(solver_cls, solution, dtype)


def check_residuals(solver_cls: type, formulation) -> None:
    """All residuals finite; every stationarity certificate (float64 solve) within :func:`solver_kkt_bound`."""
    dtype = "float64"
    sol = _solve(solver_cls, formulation, dtype=dtype)
    bad = {k: v for k, v in sol.residuals.items() if not math.isfinite(float(v))}
    if bad:
        raise VerificationError(f"{solver_cls.__name__}: non-finite residuals {bad}.")
    kkt = solver_kkt_bound(solver_cls, sol, dtype)
    over = stationarity_violations(dict(sol.residuals), kkt)
    if over:
        raise VerificationError(
            f"{solver_cls.__name__} (dtype={dtype}, iterative={is_iterative(solver_cls)}): stationarity residuals "
            f"{over} exceed {kkt:.3g} (damping used: {sol.stats.get('damping_used', 'n/a')}, "
            f"iterations: {sol.stats.get('iterations', 'n/a')})."
        )


def check_iteration_stats(solver_cls: type, formulation) -> None:
    """An iterative solver reports a valid IterationStats and the status its stop reason supports."""
    from ..solvers.iterative import IterationStats

    sol = _solve(solver_cls, formulation)
    try:
        loop = IterationStats.from_stats(sol.stats)
    except (KeyError, TypeError, ValueError) as exc:
        raise VerificationError(f"{solver_cls.__name__} declares iterative=True but its stats are not an "
                                f"IterationStats: {exc}") from None
    if sol.status not in (loop.status, "heuristic"):
        raise VerificationError(f"{solver_cls.__name__}: status {sol.status!r} but the loop ended "
                                f"{loop.stop_reason!r} (which supports {loop.status!r}).")
    if loop.iterations > loop.max_iter:
        raise VerificationError(f"{solver_cls.__name__}: {loop.iterations} iterations > max_iter={loop.max_iter}.")


def per_example_checks(solver_cls: type) -> dict[str, Callable]:
    """The per-example checks of ``solver_cls``: the contracts, with the residuals check of this module (iterative
    solvers judged by their declaration) and, for iterative solvers, ``iteration_stats``."""
    checks = {**PER_EXAMPLE_CHECKS, "residuals": check_residuals}
    if is_iterative(solver_cls):
        checks["iteration_stats"] = check_iteration_stats
    return checks


# ---------------------------------------------------------------------------------------------- registry
def registered_pairs() -> list[tuple[type, type]]:
    """``(formulation type, solver class)`` for every registered solver, in preference order."""
    from ..solvers.registry import registered

    return [(cls.formulation_type, cls) for cls in registered()]


def _example_check(fn: Callable, solver_cls: type, seed: int, twin: Optional[type] = None) -> Callable[[], None]:
    def run() -> None:
        solvers = [solver_cls] + ([twin] if twin is not None else [])
        f = find_example(solver_cls.formulation_type, seed, solvers)
        if twin is not None:
            fn(solver_cls, twin, f)
        else:
            fn(solver_cls, f)

    return run


def conformance_checks(seeds: Iterable[int] = DEFAULT_SEEDS, solvers: Optional[Sequence[type]] = None) -> list[ConformanceCheck]:
    """Every contract check for ``solvers`` (default: the whole registry) on ``seeds``."""
    seeds = tuple(seeds)
    out: list[ConformanceCheck] = []
    if solvers is None:
        try:
            solvers = [cls for _, cls in registered_pairs()]
        except Exception as exc:  # noqa: BLE001 - a solver module that fails to import must fail the suite
            msg = f"solver discovery failed: {type(exc).__name__}: {exc}"

            def fail(msg: str = msg) -> None:
                raise VerificationError(msg)

            return [ConformanceCheck("discovery", None, None, fail)]
        out.append(ConformanceCheck("discovery", None, None, lambda: None))
    cuda = torch.cuda.is_available()
    without_example, layerless = set(), set()
    for ftype in dict.fromkeys(cls.formulation_type for cls in solvers):
        out.append(ConformanceCheck(f"example_implemented[{ftype.__name__}]", None, None,
                                    lambda ftype=ftype: check_example_implemented(ftype)))
        try:
            if getattr(ftype.example(np.random.default_rng(0)), "layer", None) is None:
                layerless.add(ftype)  # e.g. LayerAllocation: no weight whose dtype could be checked
        except NotImplementedError:
            without_example.add(ftype)
        except Exception:  # noqa: BLE001 - example() crashes: every per-example check reports it
            pass
    for cls in solvers:
        if cls.backend == "torch":
            out.append(ConformanceCheck("has_reference_twin", cls, None, lambda cls=cls: check_has_reference_twin(cls)))
        if cls.formulation_type in without_example:
            continue
        twin = reference_twin(cls) if cls.backend == "torch" else None
        for seed in seeds:
            for name, fn in per_example_checks(cls).items():
                if name == "dtype_float32" and cls.formulation_type in layerless:
                    continue
                out.append(ConformanceCheck(name, cls, seed, _example_check(fn, cls, seed)))
            if cuda and cls.backend == "torch" and "cuda" in cls.devices and cls.formulation_type not in layerless:
                out.append(ConformanceCheck("device_cuda", cls, seed, _example_check(check_device_cuda, cls, seed)))
            if twin is not None:
                out.append(ConformanceCheck("matches_reference", cls, seed,
                                            _example_check(check_matches_reference, cls, seed, twin)))
    return out


def parametrize_with_checks(seeds: Iterable[int] = DEFAULT_SEEDS, solvers: Optional[Sequence[type]] = None):
    """A ``pytest.mark.parametrize("check", ...)`` decorator over :func:`conformance_checks`."""
    import pytest

    checks = conformance_checks(seeds, solvers)
    return pytest.mark.parametrize("check", checks, ids=[c.id for c in checks])


def run_conformance(seeds: Iterable[int] = DEFAULT_SEEDS, solvers: Optional[Sequence[type]] = None) -> list[dict]:
    """Run the checks without pytest; one ``{"check", "status", "message"}`` dict per check.

    ``status`` is "pass", "fail", or "unavailable" (an optional dependency of the solver is missing).
    """
    results = []
    for c in conformance_checks(seeds, solvers):
        try:
            c()
            results.append({"check": c.id, "status": "pass", "message": ""})
        except BackendUnavailable as exc:
            results.append({"check": c.id, "status": "unavailable", "message": str(exc)})
        except Exception as exc:  # noqa: BLE001 - report every failure, not only VerificationError
            results.append({"check": c.id, "status": "fail", "message": f"{type(exc).__name__}: {exc}"})
    return results


__all__ = [
    "ConformanceCheck", "check_iteration_stats", "check_residuals", "conformance_checks", "find_example",
    "is_iterative", "parametrize_with_checks", "per_example_checks", "reference_twin", "registered_pairs",
    "run_conformance", "solver_kkt_bound",
]
