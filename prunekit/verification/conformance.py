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
  below ``tolerances.for_dtype("float64", backend).kkt``, or ``100 * options.tol`` for iterative solvers
  (those reporting ``stats["iterations"]``); variants such as ``stationarity``/``stationarity_undamped``
  count as one certificate, met when one variant is;
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

from dataclasses import dataclass
from typing import Callable, Iterable, Optional, Sequence

import numpy as np
import torch

from ..errors import BackendUnavailable, VerificationError
from .contracts import (
    PER_EXAMPLE_CHECKS,
    check_device_cuda,
    check_example_implemented,
    check_has_reference_twin,
    check_matches_reference,
    find_example,
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
            for name, fn in PER_EXAMPLE_CHECKS.items():
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
    "ConformanceCheck", "conformance_checks", "find_example", "parametrize_with_checks", "reference_twin",
    "registered_pairs", "run_conformance",
]
