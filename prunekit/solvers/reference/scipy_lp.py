"""The s-step of SPAP's penalty method as a linear program (methods.md §3.2 companion lemma, §3.3, C6).

With a penalty linear in s, ``sum_j s_j c_j`` (c_j = ||W_:,j||^2 omega_j >= 0), the pruning decision is

.. math::

    \\min_{s \\in \\mathbb{R}^n} c^T s \\quad \\text{s.t.} \\quad 0 \\le s \\le 1, \\; \\mathbf 1^T s = k.

The polytope is integral, so a binary optimum exists: the indicator of the k smallest c_j.  ``lp_s_step``
solves the LP with ``scipy.optimize.linprog(method="highs")``; ``topk_s_step`` is the closed form.
"""

from __future__ import annotations

import numpy as np


HIGHS_TIGHT = {"dual_feasibility_tolerance": 1e-10, "primal_feasibility_tolerance": 1e-10}
"""HiGHS options of every prunekit LP reference: its tightest feasibility tolerances."""


def lp_s_step(c, k: int) -> tuple[np.ndarray, float]:
    """Solve the s-step LP with HiGHS; returns ``(s (n,), optimal value)``.

    Raises ``ValueError`` for k outside [0, n] or non-finite costs, ``RuntimeError`` if HiGHS fails.
    """
    from scipy.optimize import linprog

    c = np.asarray(c, dtype=np.float64).ravel()
    n = c.shape[0]
    if not 0 <= int(k) <= n:
        raise ValueError(f"k must lie in [0, {n}], got {k}.")
    if not np.all(np.isfinite(c)):
        raise ValueError("the LP costs c contain NaN/Inf.")
    # HiGHS' default feasibility tolerances (1e-7) accept a vertex 1e-7 above the optimum (c = [1e-7, 0, 0], k = 1
    # returns 1e-7); its tightest (1e-10) make the reference exact to the tolerance conformance checks
    res = linprog(c, A_eq=np.ones((1, n)), b_eq=[float(k)], bounds=[(0.0, 1.0)] * n, method="highs",
                  options=HIGHS_TIGHT)
    if res.status != 0:
        raise RuntimeError(f"linprog(highs) failed on the s-step LP: {res.message}")
    return np.asarray(res.x, dtype=np.float64), float(res.fun)


def topk_s_step(c, k: int) -> np.ndarray:
    """Closed-form binary optimum: s_j = 1 for the k smallest c_j (ties to the lower index)."""
    c = np.asarray(c, dtype=np.float64).ravel()
    s = np.zeros_like(c)
    s[np.argsort(c, kind="stable")[: int(k)]] = 1.0
    return s


__all__ = ["lp_s_step", "topk_s_step"]
