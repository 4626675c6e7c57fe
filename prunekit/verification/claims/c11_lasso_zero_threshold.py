"""C11: W* = 0 is the lasso optimum iff lambda >= lambda_max = max_ij |(W X X*^T)_ij|."""

from __future__ import annotations

import numpy as np

from ...errors import VerificationError
from . import register_claim


def check_instance(f) -> float:
    """C11's error on the pure-lasso problem ``f`` (its ``lam`` is ignored): max |W| of FISTA at 1.001 lambda_max
    relative to max |W|; raises if FISTA at 0.999 lambda_max returns 0 or does not beat W = 0."""
    from dataclasses import replace

    import torch

    from ...solvers import solve

    lam_max = f.lambda_max()
    zero = torch.zeros(f.layer.shape, dtype=torch.float64)
    above = solve(replace(f, lam=1.001 * lam_max), backend="torch", dtype="float64")
    below_f = replace(f, lam=0.999 * lam_max)
    below = solve(below_f, backend="torch", dtype="float64")
    if not bool((below.weights != 0).any()):
        raise VerificationError("C11: at 0.999 lambda_max FISTA returned W = 0, which violates the KKT conditions.")
    if not below.objective < below_f.lasso_objective(zero):
        raise VerificationError("C11: at 0.999 lambda_max the FISTA point does not beat W = 0.")
    return float(above.weights.abs().max()) / float(f.layer.weight.abs().max())


@register_claim("C11", "W* = 0 is the lasso optimum iff lambda >= max_ij |(W X X*^T)_ij|: FISTA returns exactly 0 at "
                "1.001 lambda_max and a nonzero point with a lower objective at 0.999 lambda_max.",
                tolerance=1e-12, source="methods.md §5.3, §11 C11")
def check(rng: np.random.Generator) -> float:
    from .c08_fista_lasso_convergence import draw_lasso

    return check_instance(draw_lasso(rng, iterations=500))
