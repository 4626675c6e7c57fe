"""C19 -- the softmax allocation is the entropy-regularized optimum and meets the budget exactly.

Statement: q = softmax(-E/T) minimizes <q, E> + T sum q log q over the simplex (Gibbs variational principle);
after scaling (s = min(s_max, c q), sum n s = B) and rounding, the integer counts sum to B = round(s_bar sum n)
with c_l <= floor(s_max n_l); T -> inf gives uniform sparsity; T -> 0 concentrates q on argmin E.
Assumptions: T > 0, s_max >= s_bar, sum floor(s_max n_l) >= B.
Citation: StructPrune (arXiv 2510.03246), "softmax-form allocation"; the rule is a reconstruction
[derived], methods.md §7.3.  Claim id: C19 (methods.md §11).
"""

import numpy as np
import torch
from hypothesis import given
from hypothesis import strategies as st

from prunekit import solve
from prunekit.formulations.allocation import LayerAllocation
from prunekit.solvers.reference.scipy_allocation import slsqp_simplex
from prunekit.solvers.torch.allocation import softmax_fractions
from prunekit.verification.claims import assert_claim


@given(seed=st.integers(0, 2**32 - 1))
def test_claim_c19_holds(seed):
    """Property: softmax matches SLSQP, the budget is exact, and the T limits behave (random instances)."""
    assert_claim("C19", np.random.default_rng(seed))


@given(sizes=st.lists(st.integers(1, 500), min_size=1, max_size=12), s_bar=st.floats(0.0, 0.9),
       temp=st.floats(1e-3, 1e3), seed=st.integers(0, 2**16))
def test_budget_exact_and_caps(sizes, s_bar, temp, seed):
    """Property: for any sizes, mean sparsity and temperature, the counts sum to round(s_bar sum n) within the caps."""
    energies = np.random.default_rng(seed).standard_normal(len(sizes))
    f = LayerAllocation(sizes=tuple(sizes), mean_sparsity=s_bar, energies=tuple(energies), temperature=temp, s_max=1.0)
    sol = solve(f, backend="torch")
    counts = sol.extras["counts"]
    assert int(counts.sum()) == round(s_bar * sum(sizes))
    assert bool((counts <= torch.tensor(sizes)).all()) and bool((counts >= 0).all())


def test_softmax_matches_slsqp_direct():
    """Property: on a fixed instance the closed form and SLSQP agree to 1e-6 and the objective is not worse."""
    e = np.array([0.3, -1.2, 2.0, 0.0])
    q = softmax_fractions(torch.from_numpy(e), 0.7).numpy()
    r = slsqp_simplex(e, 0.7)
    obj = lambda v: float(v @ e + 0.7 * np.sum(v * np.log(v)))  # noqa: E731
    assert np.abs(q - r).max() < 1e-6 and obj(q) <= obj(r) + 1e-12


def test_low_temperature_fills_least_important_layer_first():
    """Property: T -> 0 puts the pruning on argmin E up to s_max, then on the next layer."""
    f = LayerAllocation(sizes=(100, 100, 100), mean_sparsity=0.4, energies=(1.0, -2.0, 0.5),
                        temperature=1e-3, s_max=0.9)
    counts = solve(f, backend="torch").extras["counts"].tolist()
    assert counts == [0, 90, 30]
