"""C6 — the SPAP s-step LP has a binary optimum: the k smallest penalty weights (methods.md §3.2, §3.3).

Statement: for c >= 0, min c^T s over {0 <= s <= 1, 1^T s = k} is attained at the indicator of the k
smallest c_j; ``scipy.optimize.linprog(method="highs")`` returns the same value (and the same vector when
the optimum is unique).
Assumptions: the polytope is integral (a totally unimodular constraint matrix).
Citation: SPAP, arXiv 2505.03373 (companion lemma as reconstructed in methods.md §3.2).  Claim id: C6.
"""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from prunekit.solvers.reference.scipy_lp import lp_s_step, topk_s_step
from prunekit.verification.claims import assert_claim


@given(seed=st.integers(0, 2**32 - 1))
def test_claim_c06_holds(seed):
    """Property: the claim's check passes on hypothesis-drawn seeds."""
    assert assert_claim("C6", np.random.default_rng(seed)) <= 1e-9


@given(c=st.lists(st.floats(0, 1e3, allow_nan=False), min_size=1, max_size=12), data=st.data())
def test_topk_is_optimal_among_all_binary_points(c, data):
    """Property: no binary feasible s (any k-subset) has a lower cost than the top-k indicator, and the LP agrees."""
    import itertools

    c = np.asarray(c)
    k = data.draw(st.integers(0, len(c)))
    best = min((c[list(sub)].sum() for sub in itertools.combinations(range(len(c)), k)), default=0.0)
    assert float(c @ topk_s_step(c, k)) == pytest.approx(best, rel=1e-12, abs=1e-12)
    _, val = lp_s_step(c, k)
    assert val == pytest.approx(best, rel=1e-9, abs=1e-9)


def test_lp_rejects_bad_k():
    """Property: k outside [0, n] is an error, not a silent infeasible LP."""
    with pytest.raises(ValueError, match="k must lie"):
        lp_s_step([1.0, 2.0], 3)
