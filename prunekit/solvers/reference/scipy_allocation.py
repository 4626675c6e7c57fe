"""Reference twin of the allocation solver, by numerical optimization instead of closed forms (float64).

* softmax: q from ``scipy.optimize.minimize(method="SLSQP")`` on <q, E> + T sum q log q over the simplex
  (bounds [0, 1], equality sum q = 1); the scale c of s = min(s_max, c q) from ``scipy.optimize.brentq``
  on sum n min(s_max, c q) = B; rounding by largest remainders (numpy).
* global_threshold: ``scipy.optimize.linprog(method="highs")`` on min sum_u score_u x_u subject to
  sum x = B, per-layer sum x <= cap_l, 0 <= x <= 1 (totally unimodular: the LP optimum is binary).
* uniform: s_l = s_bar, then the same rounding.

Removed importance, not the tie-breaking, is what the LP pins down: for ties its counts may differ from the
torch solver's while its objective agrees.  scipy is imported inside ``run``.
"""

from __future__ import annotations

import numpy as np
import torch

from ...formulations.allocation import LayerAllocation
from ..base import Solver
from ..options import ReferenceOptions
from ..registry import register_solver
from ..solution import Solution


def slsqp_simplex(energies: np.ndarray, temperature: float, tol: float = 1e-12) -> np.ndarray:
    """argmin_{q in simplex} <q, E> + T sum q log q by SLSQP (started at the uniform point)."""
    from scipy.optimize import minimize

    L = energies.size
    eps = 1e-300

    def fun(q):
        return float(q @ energies + temperature * np.sum(q * np.log(np.maximum(q, eps))))

    def jac(q):
        return energies + temperature * (np.log(np.maximum(q, eps)) + 1.0)

    res = minimize(fun, np.full(L, 1.0 / L), jac=jac, method="SLSQP", bounds=[(0.0, 1.0)] * L,
                   constraints=[{"type": "eq", "fun": lambda q: q.sum() - 1.0, "jac": lambda q: np.ones(L)}],
                   options={"ftol": tol, "maxiter": 1000})
    q = np.clip(res.x, 0.0, None)
    return q / q.sum()


def scale_to_budget(q: np.ndarray, sizes: np.ndarray, budget: int, s_max: float) -> np.ndarray:
    from scipy.optimize import brentq

    if budget <= 0:
        return np.zeros_like(q)
    total = lambda c: float(np.sum(sizes * np.minimum(s_max, c * q))) - budget  # noqa: E731
    if total(1e300) <= 0:
        return np.full_like(q, s_max)
    hi = 1.0
    while total(hi) < 0:
        hi *= 2.0
    c = brentq(total, 0.0, hi, xtol=1e-15, rtol=1e-15, maxiter=500)
    return np.minimum(s_max, c * q)


def largest_remainder(target: np.ndarray, budget: int, caps: np.ndarray) -> np.ndarray:
    counts = np.minimum(np.floor(target + 1e-9).astype(np.int64), caps)
    frac = target - counts
    while counts.sum() < budget:
        eligible = np.flatnonzero(counts < caps)
        order = eligible[np.argsort(-frac[eligible], kind="stable")]
        take = order[: budget - counts.sum()]
        counts[take] += 1
        frac[take] -= 1.0
    return counts


@register_solver(LayerAllocation, backend="scipy")
class ScipyAllocation(Solver):
    """SLSQP / brentq / HiGHS reference for the allocation rules."""

    requires = ("scipy",)
    options_type = ReferenceOptions
    max_weights = 4096

    def run(self, formulation: LayerAllocation, options) -> Solution:
        f = formulation
        sizes = f.size_vector().numpy()
        caps = f.caps().numpy()
        budget = f.budget()
        extras: dict = {}
        if f.rule == "global_threshold":
            from scipy.optimize import linprog
            from scipy.sparse import csr_matrix

            scores = [s.numpy() for s in f.score_vectors()]
            c = np.concatenate(scores)
            layer_of = np.concatenate([np.full(s.size, i) for i, s in enumerate(scores)])
            a_ub = csr_matrix((np.ones(c.size), (layer_of, np.arange(c.size))), shape=(len(scores), c.size))
            res = linprog(c, A_ub=a_ub, b_ub=caps, A_eq=np.ones((1, c.size)), b_eq=[budget],
                          bounds=(0, 1), method="highs")
            x = np.round(res.x).astype(bool)
            counts = np.array([int(x[layer_of == i].sum()) for i in range(len(scores))])
            starts = np.cumsum([0] + [s.size for s in scores])
            extras["pruned_units"] = [torch.from_numpy(np.flatnonzero(x[starts[i]:starts[i + 1]]))
                                      for i in range(len(scores))]
            cont = counts / sizes
        else:
            if f.rule == "softmax":
                q = slsqp_simplex(f.energy_vector().numpy(), f.temperature)
                extras["q"] = torch.from_numpy(q)
            else:
                q = np.full(sizes.size, 1.0 / sizes.size)
            cont = scale_to_budget(q, sizes.astype(float), budget, f.s_max)
            counts = largest_remainder(cont * sizes, budget, caps)
        extras.update(counts=torch.from_numpy(np.asarray(counts, dtype=np.int64)), continuous=torch.from_numpy(cont))
        return Solution(weights=torch.from_numpy(counts / sizes), mask=torch.from_numpy(counts > 0),
                        status="optimal", stats={"iterations": 0, "budget": budget}, extras=extras)
