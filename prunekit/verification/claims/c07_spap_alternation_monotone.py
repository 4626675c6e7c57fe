"""C7: with rho fixed, the alternating exact s- and W-steps of SPAP never increase the penalized objective."""

from __future__ import annotations

import numpy as np

from . import register_claim

ALTERNATIONS = 30


def draw_fixed_rho(rng: np.random.Generator):
    """A PenaltyRelaxation with kappa = 1 (fixed rho), 30 rounds and no early stop."""
    from ...formulations.penalty import PenaltyRelaxation
    from ...formulations.sparsity import Channels
    from ..toy import random_layer

    n, m = int(rng.integers(5, 11)), int(rng.integers(3, 7))
    layer = random_layer(rng, m, n, conditioning=("well", "correlated", "ill")[int(rng.integers(0, 3))])
    scale = float(layer.gram.diagonal().double().mean())
    return PenaltyRelaxation(layer, Channels(count=max(1, n // 3)),
                             penalty_weight=("gram_diag", "literal")[int(rng.integers(0, 2))],
                             rho0=scale * 10.0 ** rng.uniform(-3, 1), kappa=1.0, max_rounds=ALTERNATIONS,
                             stable_rounds=ALTERNATIONS + 1, eps=0.0)


def interleaved_trace(solution) -> np.ndarray:
    """[after s-step 1, after W-step 1, after s-step 2, ...]."""
    s, w = solution.extras["s_step_trace"], solution.extras["objective_trace"]
    return np.array([v for pair in zip(s, w) for v in pair])


def worst_increase(trace: np.ndarray) -> float:
    return float(max(np.max(np.diff(trace)), 0.0) / max(abs(trace[0]), 1e-300))


@register_claim("C7", "With rho fixed, alternating exact s- and W-steps never increases the SPAP penalized "
                "objective (30 alternations).", tolerance=1e-12, source="methods.md §3.3, §11 C7")
def check(rng: np.random.Generator) -> float:
    from ...solvers import solve

    f = draw_fixed_rho(rng)
    sol = solve(f, backend="torch", dtype="float64")
    trace = interleaved_trace(sol)
    assert len(trace) == 2 * ALTERNATIONS
    return worst_increase(trace)
