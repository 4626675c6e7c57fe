"""C6: the SPAP s-step LP over {0 <= s <= 1, 1^T s = k} has a binary optimum: the k smallest c_j.

Compared against ``scipy.optimize.linprog(method="highs")`` (methods.md §3.2 companion lemma, §3.3).
"""

from __future__ import annotations

import numpy as np

from ...errors import VerificationError
from . import register_claim


def lp_errors_for(c: np.ndarray, k: int) -> dict[str, float]:
    """Value gap (top-k vs HiGHS), LP feasibility and, for a unique optimum, vector gap, for costs ``c >= 0``
    and ``0 <= k <= len(c)``; raises if the top-k vector is not binary feasible."""
    from ...solvers.reference.scipy_lp import lp_s_step, topk_s_step

    c = np.asarray(c, dtype=np.float64)
    n = c.size
    s_lp, val_lp = lp_s_step(c, k)
    s_top = topk_s_step(c, k)
    if not (np.all(np.isin(s_top, (0.0, 1.0))) and s_top.sum() == k):
        raise VerificationError(f"C6: top-k vector is not a binary feasible point: {s_top}")
    scale = max(float(np.abs(c).sum()), 1e-300)
    out = {"value_gap": abs(float(c @ s_top) - val_lp) / scale,
           "lp_feasibility": max(abs(s_lp.sum() - k), float(np.clip(-s_lp, 0, None).max(initial=0)),
                                 float(np.clip(s_lp - 1, 0, None).max(initial=0)))}
    srt = np.sort(c)
    if 0 < k < n and srt[k] - srt[k - 1] > 1e-9 * scale:  # unique optimum: the LP must return it
        out["unique_optimum"] = float(np.abs(s_lp - s_top).max())
    return out


def lp_errors(rng: np.random.Generator) -> dict[str, float]:
    """:func:`lp_errors_for` on random costs (30% with ties) and k drawn from ``rng``."""
    n = int(rng.integers(2, 16))
    k = int(rng.integers(0, n + 1))
    c = rng.random(n) * 10.0 ** rng.uniform(-3, 3)
    if rng.random() < 0.3:  # ties
        c = np.round(c * 3) / 3
    return lp_errors_for(c, k)


@register_claim(
    "C6",
    "With a penalty linear in s, the s-step LP over {0 <= s <= 1, 1^T s = k} has a binary optimum: the "
    "indicator of the k smallest c_j (same value as linprog/HiGHS).",
    tolerance=1e-9,
    source="methods.md §3.2, §3.3, §11 C6",
)
def check(rng: np.random.Generator) -> float:
    return max(lp_errors(rng).values())
