"""C3: the FASP column score is Wanda summed over the column; FASP never beats the brute-force optimum.

``S_j = ||W_:,j||_1 ||Z_j||_2 = sum_i |W_ij| ||Z_j||_2`` (methods.md §4.2), and the FASP kept set with the
C1 restoration has an error >= the best kept set of the same size (brute force over all C(n, k) sets).
"""

from __future__ import annotations

import numpy as np

from ...errors import VerificationError
from . import register_claim


def fasp_vs_optimum_for(layer, spec) -> dict[str, float]:
    """Score identity error, and (FASP error, FASP damped-solver error, optimum, dense energy) on ``layer``
    pruned to the :class:`~prunekit.formulations.sparsity.Channels` spec ``spec``."""
    from ...formulations import scores
    from ...formulations.coupled import CoupledStructuredRemoval
    from ...formulations.reductions_spap import exact_restore
    from ...solvers import solve
    from ...solvers.reference.bruteforce import best_channel_set

    fasp = scores.fasp_column(layer)
    wanda_sum = scores.wanda(layer).sum(dim=0)
    score_err = float((fasp - wanda_sum).abs().max() / wanda_sum.abs().max().clamp_min(1e-300))
    sol = solve(CoupledStructuredRemoval(layer, spec), backend="torch", dtype="float64")
    keep = sol.mask[0].cpu()
    fasp_exact = layer.reconstruction_error(exact_restore(layer, keep))
    _, optimum = best_channel_set(layer, spec)
    return {"score_error": score_err, "fasp": fasp_exact, "fasp_solver": sol.objective, "optimum": optimum,
            "energy": layer.dense_energy()}


def draw(rng: np.random.Generator):
    """(random layer, Channels spec with a random count) drawn from ``rng``."""
    from ...formulations.sparsity import Channels
    from ..toy import CONDITIONINGS, random_layer

    n = int(rng.integers(4, 10))
    layer = random_layer(rng, int(rng.integers(2, 7)), n, conditioning=CONDITIONINGS[int(rng.integers(0, 4))])
    return layer, Channels(count=int(rng.integers(1, n)))


def fasp_vs_optimum(rng: np.random.Generator) -> dict[str, float]:
    """:func:`fasp_vs_optimum_for` on an instance drawn from ``rng``."""
    return fasp_vs_optimum_for(*draw(rng))


def check_instance(layer, spec) -> float:
    """C3's error on one instance: the score-identity error; raises if FASP beats the brute-force optimum."""
    r = fasp_vs_optimum_for(layer, spec)
    slack = 1e-10 * max(r["energy"], 1e-300)
    for key in ("fasp", "fasp_solver"):
        if r[key] < r["optimum"] - slack:
            raise VerificationError(f"C3: {key} error {r[key]:.12g} beats the brute-force optimum {r['optimum']:.12g}.")
    return r["score_error"]


@register_claim(
    "C3",
    "The FASP column score equals the Wanda score summed over the column; FASP's kept set with C1 "
    "restoration never beats the brute-force best kept set.",
    tolerance=1e-12,
    source="methods.md §4.2, §11 C3",
)
def check(rng: np.random.Generator) -> float:
    return check_instance(*draw(rng))
