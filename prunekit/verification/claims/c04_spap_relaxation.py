"""C4: SPAP's [0, 1] relaxation of the channel selection is exact, and relaxed points round (methods.md §3.2).

* opt over s in [0,1]^n with 1^T s = k equals opt over binary s (brute force over supports |T| >= k);
* the best error is non-decreasing in the support size (zeroing more columns never helps);
* a relaxed feasible point (s fractional on T, W zero on T) rounds to a binary point with the *same*
  objective (k indices of supp(s)), and restoration after rounding never raises it.
"""

from __future__ import annotations

import numpy as np
import torch

from ...errors import VerificationError
from . import register_claim


def relaxed_point_from(layer, s: torch.Tensor):
    """The relaxed feasible (W, s) for a selection ``s``: W zero on supp(s), exactly restored off it."""
    from ...formulations.reductions_spap import exact_restore

    return exact_restore(layer, s <= 0), s


def random_relaxed_point(rng, layer, spec):
    """A relaxed feasible (W, s): random support T (|T| >= k), fractional s on T, W restored off T."""
    n = layer.in_features
    k = spec.groups_pruned(n)
    size = int(rng.integers(k, n + 1))
    support = np.sort(rng.choice(n, size=size, replace=False))
    s = np.zeros(n)
    if size:
        base = np.full(size, k / size)
        v = rng.standard_normal(size)
        v -= v.mean()
        room = min(base.min(), 1 - base.max())
        eps = 0.9 * room / max(np.abs(v).max(), 1e-12) if room > 0 else 0.0
        s[support] = base + eps * v
    return relaxed_point_from(layer, torch.from_numpy(s))


def relaxation_errors_for(layer, spec, s: torch.Tensor) -> dict[str, float]:
    """C4's four errors (optimum gap, monotonicity in the support size, rounding, restoration increase).

    Parameters
    ----------
    layer : LayerData
    spec : Channels
        ``Channels(count=k)`` (group size 1).
    s : Tensor, shape (n,)
        A relaxed selection: ``s in [0, 1]^n``, ``1^T s = k``, positive exactly on its support.
    """
    from ...formulations.mip import MaskedReconstructionMIP
    from ...formulations.reductions_spap import SPAPRelaxation
    from ...solvers import solve
    from ...solvers.reference.bruteforce import best_channel_set
    from ...solvers.solution import Solution

    n = layer.in_features
    scale = max(layer.dense_energy(), 1e-300)
    mip = MaskedReconstructionMIP(layer, spec)
    reduction = SPAPRelaxation(restore=False)
    relaxed, inverse = reduction.apply(mip)
    rel = solve(relaxed, backend="bruteforce")
    _, binary_opt = best_channel_set(layer, spec)
    out = {"opt_gap": abs(rel.objective - binary_opt) / scale}
    sizes = sorted(rel.extras["best_by_size"])
    vals = [rel.extras["best_by_size"][t] for t in sizes]
    out["monotone"] = max([0.0] + [(a - b) / scale for a, b in zip(vals, vals[1:])])
    w, s = relaxed_point_from(layer, s)
    mask = (s <= 1e-9).unsqueeze(0).expand(layer.out_features, n).clone()
    point = Solution(weights=w, mask=mask, extras={"s": s})
    res = relaxed.residuals(point)
    if res["mask_violations"] != 0:
        raise VerificationError(f"C4: constructed relaxed point is infeasible: {res}")
    rounded = reduction.invert(point, inverse)
    if rounded.residuals["mask_violations"] != 0 or rounded.residuals["pruned_max_abs"] != 0:
        raise VerificationError(f"C4: rounding gave an infeasible binary point: {rounded.residuals}")
    out["rounding"] = abs(rounded.objective - layer.reconstruction_error(w)) / scale
    restored = SPAPRelaxation(restore=True).invert(point, inverse)
    out["restore_increase"] = max(0.0, restored.objective - rounded.objective) / scale
    return out


def relaxation_errors(rng: np.random.Generator) -> dict[str, float]:
    """:func:`relaxation_errors_for` on a random layer, count and relaxed point drawn from ``rng``."""
    from ...formulations.sparsity import Channels
    from ..toy import CONDITIONINGS, random_layer

    n = int(rng.integers(3, 9))
    layer = random_layer(rng, int(rng.integers(2, 6)), n, conditioning=CONDITIONINGS[int(rng.integers(0, 4))])
    spec = Channels(count=int(rng.integers(0, n)))
    _, s = random_relaxed_point(rng, layer, spec)
    return relaxation_errors_for(layer, spec, s)


@register_claim(
    "C4",
    "SPAP's relaxation is exact: the optimum over s in [0,1]^n with 1^T s = k equals the binary optimum, "
    "and every relaxed feasible point rounds (k indices of supp(s)) to a binary one with the same objective.",
    tolerance=1e-10,
    source="methods.md §3.2, §11 C4",
)
def check(rng: np.random.Generator) -> float:
    return max(relaxation_errors(rng).values())
