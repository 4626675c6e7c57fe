"""C19: the softmax allocation q = softmax(-E/T) minimizes <q, E> + T sum q log q over the simplex (methods.md §7.3).

Also: after scaling and rounding the allocation meets the budget exactly within the caps; T -> inf gives the
uniform allocation; T -> 0 concentrates q on argmin E (and the pruning on that layer, up to its cap).
The reference optimum is SciPy's SLSQP (``prunekit.solvers.reference.scipy_allocation.slsqp_simplex``).
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from ...errors import VerificationError
from . import register_claim


def check_instance(f, rng: Optional[np.random.Generator] = None) -> float:
    """C19's error for the softmax :class:`~prunekit.formulations.allocation.LayerAllocation` ``f``.

    Checks softmax(-E/T) against SLSQP and 50 Dirichlet probes of the simplex (drawn from ``rng``, default a
    fixed generator), the exact budget and caps, T = 1e9 against the uniform rule, and (when the two smallest
    energies differ by > 1e-6) the T -> 0 concentration; raises :class:`VerificationError` on a qualitative
    failure and returns the worst numeric error.
    """
    from ...formulations.allocation import LayerAllocation
    from ...solvers import solve
    from ...solvers.reference.scipy_allocation import slsqp_simplex
    from ...solvers.torch.allocation import softmax_fractions

    probes = np.random.default_rng(0) if rng is None else rng
    energies = np.asarray(f.energies, dtype=np.float64)
    temp = float(f.temperature)
    q = softmax_fractions(torch.from_numpy(energies), temp).numpy()
    fobj = lambda v: float(v @ energies + temp * np.sum(np.where(v > 0, v * np.log(np.maximum(v, 1e-300)), 0)))  # noqa: E731
    q_ref = slsqp_simplex(energies, temp)
    errors = [max(0.0, fobj(q) - fobj(q_ref)) / (np.abs(energies).max() + temp)]
    for v in probes.dirichlet(np.ones(energies.size), size=50):
        if fobj(v) < fobj(q) - 1e-12:
            raise VerificationError(f"a simplex point beats softmax: {fobj(v)} < {fobj(q)}")
    kw = dict(sizes=tuple(f.sizes), mean_sparsity=f.mean_sparsity, energies=tuple(energies.tolist()), s_max=f.s_max)
    sol = solve(f, backend="torch")
    if sol.residuals["budget_violation"] != 0 or sol.residuals["cap_violations"] != 0:
        raise VerificationError(f"budget/caps broken: {sol.residuals}")
    hot = solve(LayerAllocation(temperature=1e9, **kw), backend="torch")
    uni = solve(LayerAllocation(rule="uniform", **kw), backend="torch")
    errors.append(float((hot.extras["continuous"] - uni.extras["continuous"]).abs().max()))
    # counts may differ by one unit where uniform remainders tie (q is uniform only up to ~1e-9)
    if int((hot.extras["counts"] - uni.extras["counts"]).abs().max()) > 1:
        raise VerificationError(f"T=1e9 counts {hot.extras['counts'].tolist()} far from uniform {uni.extras['counts'].tolist()}")
    gap = np.sort(energies)[1] - np.sort(energies)[0] if energies.size > 1 else 0.0
    if gap > 1e-6:
        cold_t = gap / 60.0
        q_cold = softmax_fractions(torch.from_numpy(energies), cold_t).numpy()
        if q_cold[int(np.argmin(energies))] < 1.0 - 1e-20:
            raise VerificationError(f"T={cold_t:.3g}: q[argmin E] = {q_cold.max()} (not concentrated)")
        cold = solve(LayerAllocation(temperature=cold_t, **kw), backend="torch")
        i = int(np.argmin(energies))
        expected = min(int(f.caps()[i]), f.budget())
        if int(cold.extras["counts"][i]) < expected - 1:  # rounding may move one unit
            raise VerificationError(f"T->0: argmin layer got {int(cold.extras['counts'][i])} < {expected}")
    return float(max(errors))


def draw(rng: np.random.Generator):
    """A random feasible softmax LayerAllocation (2-8 layers; s_max widened to 1 if the caps miss the budget)."""
    from ...formulations.allocation import LayerAllocation

    L = int(rng.integers(2, 9))
    energies = rng.standard_normal(L) * float(rng.choice([0.3, 1.0, 3.0]))
    temp = float(10.0 ** rng.uniform(-0.5, 1.0))
    sizes = tuple(int(v) for v in rng.integers(3, 60, size=L))
    s_bar = float(rng.uniform(0.05, 0.7))
    kw = dict(sizes=sizes, mean_sparsity=s_bar, energies=tuple(energies.tolist()), temperature=temp)
    try:
        return LayerAllocation(s_max=float(rng.uniform(s_bar, 1.0)), **kw)
    except Exception:  # caps below the budget after flooring: widen s_max
        return LayerAllocation(s_max=1.0, **kw)


@register_claim("C19", "softmax(-E/T) minimizes <q,E> + T sum q log q on the simplex (vs SLSQP); the scaled, rounded "
                "allocation meets the budget exactly; T->inf is uniform; T->0 concentrates on argmin E.",
                tolerance=1e-7, source="methods.md §7.3, §11 C19")
def check(rng: np.random.Generator) -> float:
    return check_instance(draw(rng), rng)
