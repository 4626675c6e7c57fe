"""C12: MRP Solution M is the exact constrained optimum (methods.md §1 fact 3, §6.2, §11 C12).

For H = 2 X X^T + gamma I (prunekit: gamma = 2 lambda, H = 2 (G + lambda I)) and each row's pruned set P,
Solution M is exactly zero on P, equals the restricted solve ``w_S + w_P H_PS H_SS^{-1}``, and its loss is
``1/2 w_P (H^{-1}_PP)^{-1} w_P^T = 1/2 w_P (H/H_SS) w_P^T``.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from ...errors import VerificationError
from ...formulations.mrp import MultipleRemoval
from ...formulations.sparsity import NM, Unstructured
from ...solvers import solve
from ..toy import random_layer
from . import register_claim


def hessian(layer) -> np.ndarray:
    """H = 2 (G + lambda I) in float64 NumPy (dead inputs G_jj := 1), as the MRP solvers use it."""
    return 2.0 * layer.damped_gram().numpy()


def row_errors(w: np.ndarray, w_hat: np.ndarray, prune: np.ndarray, h: np.ndarray) -> float:
    """Worst relative error over the C12 identities for every row."""
    hinv = np.linalg.inv(h)
    err = 0.0
    for i in range(w.shape[0]):
        p, s = prune[i], ~prune[i]
        wi, wp = w[i], w[i, p]
        scale = max(1.0, float(np.abs(wi).max()))
        err = max(err, float(np.abs(w_hat[i, p]).max(initial=0.0)) / scale)
        if not p.any():
            err = max(err, float(np.abs(w_hat[i] - wi).max()) / scale)
            continue
        restricted = wi[s] + wp @ h[np.ix_(p, s)] @ np.linalg.inv(h[np.ix_(s, s)]) if s.any() else wi[s]
        err = max(err, float(np.abs(w_hat[i, s] - restricted).max(initial=0.0)) / scale)
        dw = w_hat[i] - wi
        loss = 0.5 * dw @ h @ dw
        loss_inv = 0.5 * wp @ np.linalg.solve(hinv[np.ix_(p, p)], wp)
        schur = h[np.ix_(p, p)] - (h[np.ix_(p, s)] @ np.linalg.solve(h[np.ix_(s, s)], h[np.ix_(s, p)]) if s.any() else 0)
        loss_schur = 0.5 * wp @ schur @ wp
        lscale = max(1e-300, abs(loss_inv))
        err = max(err, abs(loss - loss_inv) / lscale, abs(loss_schur - loss_inv) / lscale)
    return err


def check_instance(layer, spec, rng: Optional[np.random.Generator] = None) -> float:
    """C12's error for MRP Solution M on ``layer`` pruned to ``spec`` (unstructured or N:M).

    ``rng`` draws the three feasible perturbation probes (default: a fixed generator); raises if the mask
    violates the spec or a probe lowers the damped loss.
    """
    probes = np.random.default_rng(0) if rng is None else rng
    sol = solve(MultipleRemoval(layer, spec), backend="torch", dtype="float64")
    if sol.residuals["mask_violations"] != 0:
        raise VerificationError(f"MRP mask violates {spec.describe()}")
    w = layer.weight.numpy()
    h = hessian(layer)
    err = row_errors(w, sol.weights.numpy(), ~sol.mask.numpy(), h)
    # optimality: no feasible perturbation (on the kept entries) lowers the damped loss
    dw = sol.weights.numpy() - w
    base = 0.5 * np.sum((dw @ h) * dw)
    for _ in range(3):
        d = probes.standard_normal(w.shape) * sol.mask.numpy() * 1e-3
        if 0.5 * np.sum(((dw + d) @ h) * (dw + d)) < base - 1e-10 * max(1.0, base):
            raise VerificationError("a feasible perturbation lowered the Solution M loss")
    return err


@register_claim("C12", "MRP Solution M is zero on P, equals the restricted solve w_S + w_P H_PS H_SS^{-1}, and "
                "its loss is 1/2 w_P (H^{-1}_PP)^{-1} w_P^T = 1/2 w_P (H/H_SS) w_P^T.", tolerance=1e-7,
                source="methods.md §6.2, §11 C12")
def check(rng: np.random.Generator) -> float:
    m, n = int(rng.integers(2, 6)), int(rng.choice([4, 8, 12]))
    layer = random_layer(rng, m, n, conditioning=str(rng.choice(["well", "correlated", "rank_deficient"])))
    spec = [Unstructured(0.5), Unstructured(float(rng.uniform(0.2, 0.8)), scope="layer"), NM(2, 4)][int(rng.integers(0, 3))]
    return check_instance(layer, spec, rng)
