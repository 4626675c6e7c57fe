"""Registry of checkable claims (methods.md §11) and of optimality-gap reports.

A claim is a function ``check(rng) -> float`` that draws one random toy instance from the numpy
``Generator`` ``rng``, tests the statement on it, and returns the *error* observed (0 when the statement
holds exactly; compared against the claim's ``tolerance``).  A check raises
:class:`~prunekit.errors.VerificationError` when the statement fails qualitatively (e.g. a heuristic beats a
proven optimum).  ``check(rng)`` serves ``prunekit verify`` (fixed seeds).  Each claim module also exposes the
statement on a *given* instance -- ``check_instance(...)`` (or named parts such as ``relaxation_errors_for``)
taking layers, specs, masks and hyperparameters -- and ``check(rng)`` is that function applied to an instance
drawn from ``rng``.  The property tests in ``tests/theorems/test_cNN_*.py`` draw their instances from
:mod:`prunekit.verification.strategies` and call the instance functions, so hypothesis can shrink failures
and aim at ties and ill-conditioning (never an opaque integer seed; ``tests/meta`` enforces it).

Claim modules live next to this file as ``cNN_<name>.py`` and register themselves::

    @register_claim("C12", "MRP Solution M is the exact constrained optimum ...", tolerance=1e-8)
    def check(rng: np.random.Generator) -> float:
        ...

A report (``@register_report("gap_channel_selection")``) is a function ``report(trials, seed) -> dict``
that measures something quantitative, e.g. the optimality gap of heuristics against brute force.
"""

from __future__ import annotations

import importlib
import math
import pkgutil
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

import numpy as np

from ...errors import VerificationError


@dataclass(frozen=True)
class Claim:
    """One checkable statement."""

    id: str
    statement: str
    tolerance: float
    check: Callable[[np.random.Generator], float]
    source: str = ""
    trials_quick: int = 5
    trials_full: int = 30


@dataclass(frozen=True)
class ClaimResult:
    """Outcome of running a claim's check over several random instances."""

    claim: str
    statement: str
    status: str  # "pass" | "fail"
    worst_error: float
    tolerance: float
    trials: int
    seconds: float
    message: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class Report:
    id: str
    description: str
    run: Callable[..., dict]


_CLAIMS: dict[str, Claim] = {}
_REPORTS: dict[str, Report] = {}
_DISCOVERED = False


def register_claim(claim_id: str, statement: str, *, tolerance: float, source: str = "",
                   trials_quick: int = 5, trials_full: int = 30):
    """Decorator registering ``check(rng) -> error`` as claim ``claim_id``."""

    def decorator(fn: Callable[[np.random.Generator], float]):
        _CLAIMS[claim_id] = Claim(claim_id, statement, tolerance, fn, source, trials_quick, trials_full)
        return fn

    return decorator


def unregister_claim(claim_id: str) -> None:
    """Remove a registered claim (for tests and examples that register temporary claims)."""
    _CLAIMS.pop(claim_id, None)


def register_report(report_id: str, description: str):
    """Decorator registering ``run(trials: int, seed: int) -> dict`` as a quantitative report."""

    def decorator(fn: Callable[..., dict]):
        _REPORTS[report_id] = Report(report_id, description, fn)
        return fn

    return decorator


def _discover() -> None:
    global _DISCOVERED
    if _DISCOVERED:
        return
    _DISCOVERED = True
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        if not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")


def _claim_key(cid: str) -> tuple:
    digits = "".join(ch for ch in cid if ch.isdigit())
    return (int(digits) if digits else 10**6, cid)


def all_claims() -> list[Claim]:
    _discover()
    return [_CLAIMS[k] for k in sorted(_CLAIMS, key=_claim_key)]


def get_claim(claim_id: str) -> Claim:
    _discover()
    try:
        return _CLAIMS[claim_id.upper()]
    except KeyError:
        raise KeyError(f"unknown claim {claim_id!r}; known: {sorted(_CLAIMS, key=_claim_key)}") from None


def all_reports() -> list[Report]:
    _discover()
    return [_REPORTS[k] for k in sorted(_REPORTS)]


def run_claim(claim: Claim, *, trials: Optional[int] = None, seed: int = 0, quick: bool = False) -> ClaimResult:
    """Run ``claim.check`` on ``trials`` seeded instances; the worst error decides pass/fail."""
    n = trials if trials is not None else (claim.trials_quick if quick else claim.trials_full)
    start = time.perf_counter()
    worst = 0.0
    message = ""
    status = "pass"
    for t in range(n):
        rng = np.random.default_rng([seed, t, _claim_key(claim.id)[0]])
        try:
            err = float(claim.check(rng))
        except VerificationError as exc:
            status, message, worst = "fail", str(exc), math.inf
            break
        if not math.isfinite(err):
            status, message, worst = "fail", f"non-finite error on trial {t}", math.inf
            break
        worst = max(worst, err)
    if status == "pass" and worst > claim.tolerance:
        status = "fail"
        message = f"worst error {worst:.3g} > tolerance {claim.tolerance:.3g}"
    return ClaimResult(claim.id, claim.statement, status, worst, claim.tolerance, n,
                       time.perf_counter() - start, message)


def assert_claim(claim_id: str, rng: np.random.Generator) -> float:
    """Run one instance of a claim and raise VerificationError if its error exceeds the tolerance."""
    claim = get_claim(claim_id)
    err = float(claim.check(rng))
    if not math.isfinite(err) or err > claim.tolerance:
        raise VerificationError(f"{claim.id} failed: error {err:.3g} > tolerance {claim.tolerance:.3g} ({claim.statement})")
    return err


__all__ = [
    "Claim", "ClaimResult", "Report", "all_claims", "all_reports", "assert_claim", "get_claim",
    "register_claim", "register_report", "run_claim", "unregister_claim",
]
