"""Run the registered claims and reports: the library behind ``prunekit verify``.

:func:`run_all` runs every claim of :mod:`prunekit.verification.claims` (or a chosen subset) on seeded
random toy instances and returns one :class:`~prunekit.verification.claims.ClaimResult` each; a check that
raises anything (not only :class:`~prunekit.errors.VerificationError`) is recorded as a failure with the
exception in its message, so one broken claim never hides the others.  :func:`run_reports` runs the
quantitative reports (optimality gaps ...).  :func:`to_records` turns both into the JSON records printed by
``prunekit verify --json``::

    [{"claim": "C1", "statement": ..., "status": "pass", "worst_error": 1e-15, "tolerance": 1e-8,
      "trials": 5, "seconds": 0.01, "message": ""},
     ...,
     {"report": "gap_channel_selection", "description": ..., "status": "pass", "result": {...}}]

Non-finite numbers are written as ``null`` (strict JSON).
"""

from __future__ import annotations

import math
import time
from typing import Any, Iterable, Optional

from .claims import ClaimResult, all_claims, all_reports, get_claim, run_claim

QUICK_REPORT_TRIALS = 2
FULL_REPORT_TRIALS = 20


def _select(claims: Optional[Iterable[str]]):
    if not claims:
        return all_claims()
    return [get_claim(c.strip()) for c in claims if c.strip()]


def run_all(quick: bool = False, claims: Optional[Iterable[str]] = None, seed: int = 0) -> list[ClaimResult]:
    """Run the claims (all, or the ids in ``claims``) and return their results in claim order.

    Parameters
    ----------
    quick : bool
        Use each claim's ``trials_quick`` instead of ``trials_full``.
    claims : iterable of str, optional
        Claim ids such as ``["C1", "C12"]`` (case-insensitive).
    seed : int
        Base seed of the random instances.

    Raises
    ------
    KeyError
        For an unknown claim id (the message lists the known ones).
    """
    results = []
    for claim in _select(claims):
        start = time.perf_counter()
        try:
            results.append(run_claim(claim, seed=seed, quick=quick))
        except Exception as exc:  # noqa: BLE001 - an unexpected crash is a failed claim, not a crashed run
            results.append(ClaimResult(claim.id, claim.statement, "fail", math.inf, claim.tolerance,
                                       0, time.perf_counter() - start, f"{type(exc).__name__}: {exc}"))
    return results


def run_reports(quick: bool = False, seed: int = 0, trials: Optional[int] = None) -> list[dict[str, Any]]:
    """Run every registered report; one ``{"report", "description", "status", "result"|"message"}`` each."""
    n = trials if trials is not None else (QUICK_REPORT_TRIALS if quick else FULL_REPORT_TRIALS)
    out = []
    for rep in all_reports():
        start = time.perf_counter()
        try:
            result = rep.run(trials=n, seed=seed)
            out.append({"report": rep.id, "description": rep.description, "status": "pass", "trials": n,
                        "seconds": time.perf_counter() - start, "result": result})
        except Exception as exc:  # noqa: BLE001
            out.append({"report": rep.id, "description": rep.description, "status": "fail", "trials": n,
                        "seconds": time.perf_counter() - start, "message": f"{type(exc).__name__}: {exc}"})
    return out


def _jsonable(value: Any) -> Any:
    """Recursively convert numpy/torch scalars and arrays to JSON types; non-finite floats to None."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        return _jsonable(value.tolist())
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    try:
        f = float(value)
        return f if math.isfinite(f) else None
    except (TypeError, ValueError):
        return str(value)


def to_records(results: list[ClaimResult], reports: Optional[list[dict]] = None) -> list[dict[str, Any]]:
    """JSON-ready records: claims (key ``"claim"``) then reports (key ``"report"``)."""
    return _jsonable([r.to_dict() for r in results] + list(reports or []))


__all__ = ["run_all", "run_reports", "to_records", "all_reports"]
