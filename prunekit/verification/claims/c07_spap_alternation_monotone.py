"""C7: with rho fixed, the alternating exact s- and W-steps of SPAP never increase the penalized objective."""

from __future__ import annotations

import numpy as np

from . import register_claim

ALTERNATIONS = 30


PENALTY_WEIGHTS = ("gram_diag", "literal")


def fixed_rho_problem(layer, penalty_weight: str, rho_rel: float):
    """A PenaltyRelaxation of ``layer`` pruning max(1, n // 3) channels with rho = ``rho_rel`` mean(diag G),
    kappa = 1 (fixed rho), 30 rounds and no early stop."""
    from ...formulations.penalty import PenaltyRelaxation
    from ...formulations.sparsity import Channels

    scale = float(layer.gram.diagonal().double().mean())
    return PenaltyRelaxation(layer, Channels(count=max(1, layer.in_features // 3)), penalty_weight=penalty_weight,
                             rho0=scale * rho_rel, kappa=1.0, max_rounds=ALTERNATIONS,
                             stable_rounds=ALTERNATIONS + 1, eps=0.0)


def draw_fixed_rho(rng: np.random.Generator):
    """:func:`fixed_rho_problem` on a random layer, penalty weight and rho drawn from ``rng``."""
    from ..toy import random_layer

    n, m = int(rng.integers(5, 11)), int(rng.integers(3, 7))
    layer = random_layer(rng, m, n, conditioning=("well", "correlated", "ill")[int(rng.integers(0, 3))])
    return fixed_rho_problem(layer, PENALTY_WEIGHTS[int(rng.integers(0, 2))], 10.0 ** rng.uniform(-3, 1))


def interleaved_trace(solution) -> np.ndarray:
    """[after s-step 1, after W-step 1, after s-step 2, ...]."""
    s, w = solution.extras["s_step_trace"], solution.extras["objective_trace"]
    return np.array([v for pair in zip(s, w) for v in pair])


def worst_increase(trace: np.ndarray) -> float:
    return float(max(np.max(np.diff(trace)), 0.0) / max(abs(trace[0]), 1e-300))


@register_claim("C7", "With rho fixed, alternating exact s- and W-steps never increases the SPAP penalized "
                "objective (30 alternations).", tolerance=1e-12, source="methods.md §3.3, §11 C7")
def check_instance(f) -> float:
    """C7's error for the fixed-rho problem ``f``: the worst relative increase along the interleaved trace."""
    from ...solvers import solve

    sol = solve(f, backend="torch", dtype="float64")
    trace = interleaved_trace(sol)
    assert len(trace) == 2 * ALTERNATIONS
    return worst_increase(trace)


@register_claim("C7", "With rho fixed, alternating exact s- and W-steps never increases the SPAP penalized "
                "objective (30 alternations).", tolerance=1e-12, source="methods.md §3.3, §11 C7")
def check(rng: np.random.Generator) -> float:
    return check_instance(draw_fixed_rho(rng))
