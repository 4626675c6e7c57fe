"""C14: sequential OBS with exact inverse-Hessian downdates equals MRP Solution M for any order (§6.2, §11 C14).

Removing the pruned weights of a row one at a time, each with the single-removal OBS update
``w -= (w_p / Hinv_pp) Hinv_{p,:}`` followed by the exact downdate ``Hinv -= Hinv_{:,p} Hinv_{p,:} / Hinv_pp``,
reproduces Solution M whatever the removal order (checked for sorted, reversed and a random order).
"""

from __future__ import annotations

import numpy as np

from ...formulations.mrp import MultipleRemoval
from ...formulations.sparsity import NM, Unstructured
from ...solvers import solve
from ..toy import random_layer
from . import register_claim
from .c12_mrp_solution_m import hessian


def sequential_obs(w: np.ndarray, order, hinv: np.ndarray) -> np.ndarray:
    """Remove the entries ``order`` of row ``w`` one by one with exact OBS downdates of ``hinv``."""
    w, hi = w.copy(), hinv.copy()
    for p in order:
        w = w - (w[p] / hi[p, p]) * hi[p, :]
        hi = hi - np.outer(hi[:, p], hi[p, :]) / hi[p, p]
        w[p] = 0.0
    return w


def check_instance(layer, spec, order) -> float:
    """C14's error: sequential OBS vs the solver's Solution M on ``layer``/``spec``, for each row's pruned set
    removed sorted, reversed, and in the order its indices take in the permutation ``order`` of range(n)."""
    sol = solve(MultipleRemoval(layer, spec), backend="torch", dtype="float64")
    hinv = np.linalg.inv(hessian(layer))
    w, w_hat, prune = layer.weight.numpy(), sol.weights.numpy(), ~sol.mask.numpy()
    err = 0.0
    for i in range(w.shape[0]):
        p = np.nonzero(prune[i])[0]
        scale = max(1.0, float(np.abs(w[i]).max()))
        for seq in (p, p[::-1], [j for j in order if prune[i, j]]):
            err = max(err, float(np.abs(sequential_obs(w[i], seq, hinv) - w_hat[i]).max()) / scale)
    return err


@register_claim("C14", "Sequential OBS with exact inverse-Hessian downdates reproduces MRP Solution M for any removal order.",
                tolerance=1e-8, source="methods.md §6.2, §11 C14")
def check(rng: np.random.Generator) -> float:
    m, n = int(rng.integers(2, 6)), int(rng.choice([4, 8, 12]))
    layer = random_layer(rng, m, n, conditioning=str(rng.choice(["well", "correlated"])))
    spec = [Unstructured(0.5), NM(2, 4), Unstructured(0.6, scope="layer")][int(rng.integers(0, 3))]
    return check_instance(layer, spec, rng.permutation(n))
