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
from prunekit.verification import strategies as pst
from prunekit.verification.claims import get_claim
from prunekit.verification.claims.c19_softmax_allocation import check_instance

CLAIM = get_claim("C19")


@given(pst.allocation_problems())
def test_claim_c19_holds(f):
    """Property: softmax matches SLSQP, the budget is exact, and the T limits behave (drawn problems, with ties)."""
    assert check_instance(f) <= CLAIM.tolerance


@given(pst.allocation_problems(num_layers=st.integers(1, 12), sizes=st.integers(1, 500),
                               mean_sparsity=st.floats(0.0, 0.9), s_max=1.0, temperature=st.floats(1e-3, 1e3)))
def test_budget_exact_and_caps(f):
    """Property: for any sizes, mean sparsity and temperature, the counts sum to round(s_bar sum n) within the caps."""
    sizes = list(f.sizes)
    sol = solve(f, backend="torch")
    counts = sol.extras["counts"]
    assert int(counts.sum()) == round(f.mean_sparsity * sum(sizes))
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
