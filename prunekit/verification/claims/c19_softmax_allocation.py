"""C19: the softmax allocation q = softmax(-E/T) minimizes <q, E> + T sum q log q over the simplex (methods.md §7.3).

Also: after scaling and rounding the allocation meets the budget exactly within the caps; T -> inf gives the
uniform allocation; T -> 0 concentrates q on argmin E (and the pruning on that layer, up to its cap).
The reference optimum is SciPy's SLSQP (``prunekit.solvers.reference.scipy_allocation.slsqp_simplex``).
"""

from __future__ import annotations

import numpy as np
import torch

from ...errors import VerificationError
from . import register_claim


@register_claim("C19", "softmax(-E/T) minimizes <q,E> + T sum q log q on the simplex (vs SLSQP); the scaled, rounded "
                "allocation meets the budget exactly; T->inf is uniform; T->0 concentrates on argmin E.",
                tolerance=1e-7, source="methods.md §7.3, §11 C19")
def check(rng: np.random.Generator) -> float:
    from ...formulations.allocation import LayerAllocation
    from ...solvers import solve
    from ...solvers.reference.scipy_allocation import slsqp_simplex
    from ...solvers.torch.allocation import softmax_fractions

    L = int(rng.integers(2, 9))
    energies = rng.standard_normal(L) * float(rng.choice([0.3, 1.0, 3.0]))
    temp = float(10.0 ** rng.uniform(-0.5, 1.0))
    q = softmax_fractions(torch.from_numpy(energies), temp).numpy()
    fobj = lambda v: float(v @ energies + temp * np.sum(np.where(v > 0, v * np.log(np.maximum(v, 1e-300)), 0)))  # noqa: E731
    q_ref = slsqp_simplex(energies, temp)
    errors = [max(0.0, fobj(q) - fobj(q_ref)) / (np.abs(energies).max() + temp)]
    for v in rng.dirichlet(np.ones(L), size=50):
        if fobj(v) < fobj(q) - 1e-12:
            raise VerificationError(f"a simplex point beats softmax: {fobj(v)} < {fobj(q)}")

    sizes = tuple(int(v) for v in rng.integers(3, 60, size=L))
    s_bar = float(rng.uniform(0.05, 0.7))
    s_max = float(rng.uniform(s_bar, 1.0))
    kw = dict(sizes=sizes, mean_sparsity=s_bar, energies=tuple(energies.tolist()), s_max=s_max)
    try:
        f = LayerAllocation(temperature=temp, **kw)
    except Exception:  # caps below the budget after flooring: widen s_max
        kw["s_max"] = s_max = 1.0
        f = LayerAllocation(temperature=temp, **kw)
    sol = solve(f, backend="torch")
    if sol.residuals["budget_violation"] != 0 or sol.residuals["cap_violations"] != 0:
        raise VerificationError(f"budget/caps broken: {sol.residuals}")
    hot = solve(LayerAllocation(temperature=1e9, **kw), backend="torch")
    uni = solve(LayerAllocation(rule="uniform", **kw), backend="torch")
    errors.append(float((hot.extras["continuous"] - uni.extras["continuous"]).abs().max()))
    # counts may differ by one unit where uniform remainders tie (q is uniform only up to ~1e-9)
    if int((hot.extras["counts"] - uni.extras["counts"]).abs().max()) > 1:
        raise VerificationError(f"T=1e9 counts {hot.extras['counts'].tolist()} far from uniform {uni.extras['counts'].tolist()}")
    gap = np.sort(energies)[1] - np.sort(energies)[0]
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
