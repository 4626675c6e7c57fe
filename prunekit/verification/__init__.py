"""Public testing API for authors of formulations and solvers.

* :mod:`~prunekit.verification.tolerances` -- ``for_dtype(dtype, backend)`` and comparison helpers;
* :mod:`~prunekit.verification.checks`     -- ``assert_kkt``, ``assert_matches_reference``,
  ``assert_relaxation_bound``, ``assert_reduction_equivalent``, ``assert_spec_obeyed``;
* :mod:`~prunekit.verification.conformance` -- ``parametrize_with_checks`` / ``run_conformance`` over the
  solver registry;
* :mod:`~prunekit.verification.cases`      -- canonical toy problems with analytic optima;
* :mod:`~prunekit.verification.runner`     -- ``run_all`` / ``run_reports`` behind ``prunekit verify``;
* :mod:`~prunekit.verification.toy`        -- ``random_layer(rng, m, n, conditioning=...)``;
* :mod:`~prunekit.verification.strategies` -- hypothesis strategies.  Import it explicitly
  (``from prunekit.verification import strategies``): it needs the ``[test]`` extra and is never imported
  by this package.
"""

from __future__ import annotations

import importlib
from typing import Any

from .checks import (
    assert_kkt,
    assert_matches_reference,
    assert_reduction_equivalent,
    assert_relaxation_bound,
    assert_spec_obeyed,
)
from .tolerances import Tolerance, for_dtype
from .toy import random_layer

_LAZY = {
    "parametrize_with_checks": "conformance",
    "run_conformance": "conformance",
    "registered_pairs": "conformance",
    "run_all": "runner",
    "run_reports": "runner",
    "all_cases": "cases",
    "get_case": "cases",
    "register_claim": "claims",
    "register_report": "claims",
    "all_claims": "claims",
    "all_reports": "claims",
    "ClaimResult": "claims",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "Tolerance", "assert_kkt", "assert_matches_reference", "assert_reduction_equivalent",
    "assert_relaxation_bound", "assert_spec_obeyed", "for_dtype", "random_layer", *_LAZY,
]
