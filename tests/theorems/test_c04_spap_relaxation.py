"""C4 — SPAP's [0, 1] relaxation of the channel selection is exact (methods.md §3.2, §11 C4).

Statement: min over s in [0,1]^n with 1^T s = k (and W diag(s) = 0) equals the binary optimum; every
relaxed feasible point rounds to a binary one with the same objective by pruning k indices of supp(s).
Assumptions: s_j <= 1 and sum s = k force |supp(s)| >= k; the restored error is monotone in the zeroed set.
Citation: SPAP, arXiv 2505.03373 (relaxation theorem as reconstructed in methods.md §3.2).  Claim id: C4.
"""

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from prunekit import solve
from prunekit.errors import FormulationError
from prunekit.formulations.mip import MaskedReconstructionMIP
from prunekit.formulations.reductions_spap import SPAPRelaxation
from prunekit.formulations.sparsity import Channels
from prunekit.solvers.reference.bruteforce import best_channel_set
from prunekit.solvers.solution import Solution
from prunekit.verification import strategies as pst
from prunekit.verification.claims import get_claim
from prunekit.verification.claims.c04_spap_relaxation import relaxation_errors_for
from prunekit.verification.toy import random_layer

CLAIM = get_claim("C4")


@st.composite
def relaxation_instances(draw):
    """(layer, Channels(count=k), relaxed selection s with 1^T s = k) over every conditioning."""
    layer = draw(pst.toy_layers(m=st.integers(2, 5), n=st.integers(3, 8)))
    k = draw(st.integers(0, layer.in_features - 1))
    return layer, Channels(count=k), draw(pst.capped_simplex_points(layer.in_features, k))


@given(relaxation_instances())
def test_claim_c04_holds(instance):
    """Property: the claim's error (worst of its four parts) is within its tolerance on drawn instances."""
    assert max(relaxation_errors_for(*instance).values()) <= CLAIM.tolerance


@given(pst.toy_layers(m=3, n=6), st.integers(1, 4))
def test_relaxed_optimum_equals_binary_and_is_reached_at_size_k(layer, k):
    """Property: the relaxed brute-force optimum equals the binary one, reached with |supp(s)| = k."""
    spec = Channels(count=k)
    relaxed, inv = SPAPRelaxation().apply(MaskedReconstructionMIP(layer, spec))
    sol = solve(relaxed, backend="bruteforce")
    _, opt = best_channel_set(layer, spec)
    assert sol.objective == pytest.approx(opt, rel=1e-9, abs=1e-12 * layer.dense_energy())
    by_size = sol.extras["best_by_size"]
    assert by_size[k] == pytest.approx(min(by_size.values()), rel=1e-12, abs=1e-12 * layer.dense_energy())
    back = SPAPRelaxation().invert(sol, inv)
    assert back.residuals["mask_violations"] == 0
    assert back.objective == pytest.approx(opt, rel=1e-9, abs=1e-12 * layer.dense_energy())


@given(pst.toy_layers(m=3, n=6))
def test_rounding_keeps_the_weights(layer):
    """Property: without restoration, rounding returns the same W (zero on the k chosen groups)."""
    spec = Channels(count=2)
    _, inv = SPAPRelaxation().apply(MaskedReconstructionMIP(layer, spec))
    w = layer.weight.clone()
    w[:, [1, 3, 4]] = 0.0
    s = torch.tensor([0.0, 0.5, 0.0, 0.9, 0.6, 0.0], dtype=torch.float64)
    point = Solution(weights=w, mask=(s == 0).expand(3, 6).clone(), extras={"s": s})
    out = SPAPRelaxation(restore=False).invert(point, inv)
    assert torch.equal(out.weights, w)
    assert out.kept_columns.tolist() == [0, 1, 2, 5]  # largest s first: groups 3 and 4 pruned
    assert out.objective == pytest.approx(layer.reconstruction_error(w), rel=1e-14)


def test_infeasible_relaxed_point_is_rejected():
    """Property: a point whose support is smaller than k cannot be rounded (clear error)."""
    layer = random_layer(np.random.default_rng(1), 2, 5)
    _, inv = SPAPRelaxation().apply(MaskedReconstructionMIP(layer, Channels(count=2)))
    s = torch.tensor([1.0, 0, 0, 0, 0], dtype=torch.float64)
    with pytest.raises(FormulationError, match="supp"):
        SPAPRelaxation().invert(Solution(weights=layer.weight, mask=torch.ones(2, 5, dtype=torch.bool),
                                         extras={"s": s}), inv)


@given(relaxation_instances())
def test_all_parts_of_the_check(instance):
    """Property: optimum gap, monotonicity, rounding and restoration errors are all at rounding level."""
    errs = relaxation_errors_for(*instance)
    assert set(errs) == {"opt_gap", "monotone", "rounding", "restore_increase"}
    assert max(errs.values()) < 1e-10, errs
