"""C12 — MRP Solution M is the exact constrained optimum.

Statement: for H = 2 X X^T + gamma I and each row's pruned set P, Solution M
``dw = -w_P (H^{-1}_PP)^{-1} H^{-1}_{P,:}`` is exactly zero on P, equals the restricted solve
``w_S + w_P H_PS H_SS^{-1}``, and has loss ``1/2 w_P (H^{-1}_PP)^{-1} w_P^T = 1/2 w_P (H/H_SS) w_P^T``.
Assumptions: H positive definite (prunekit uses gamma = 2 lambda, lambda = 1% of mean diag G).
Citation: methods.md §1 fact 3, §6.2 and §11 C12; Zhao et al. arXiv 2410.15567, Eq. 11-13.
Claim id: C12.
"""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prunekit.formulations.mrp import MultipleRemoval
from prunekit.formulations.restoration import FixedMaskRestoration
from prunekit.formulations.sparsity import NM, Unstructured
from prunekit.solvers import solve
from prunekit.verification.claims import get_claim
from prunekit.verification.toy import random_layer

CLAIM = get_claim("C12")


@given(seed=st.integers(0, 2**32 - 1))
def test_claim_c12_holds(seed):
    """Property: Solution M is zero on P, equals the restricted solve, and its loss matches both closed forms."""
    err = CLAIM.check(np.random.default_rng(seed))
    assert err <= CLAIM.tolerance, f"C12 error {err:.3g} > {CLAIM.tolerance}"


@given(seed=st.integers(0, 2**32 - 1), nm=st.booleans())
def test_solution_m_equals_damped_restoration(seed, nm):
    """Property: MRP Solution M equals FixedMaskRestoration on the same mask (H = 2(G + lambda I))."""
    layer = random_layer(np.random.default_rng(seed), 4, 8, conditioning="correlated")
    sol = solve(MultipleRemoval(layer, NM(2, 4) if nm else Unstructured(0.5)), backend="torch", dtype="float64")
    rest = solve(FixedMaskRestoration(layer, sol.mask), backend="torch", dtype="float64")
    assert float((sol.weights - rest.weights).abs().max()) < 1e-10 * max(1.0, float(layer.weight.abs().max()))
    assert sol.residuals["stationarity"] < 1e-10


@pytest.mark.reference
@settings(max_examples=5)
@given(seed=st.integers(0, 2**32 - 1))
def test_solution_m_matches_cvxpy_qp(seed):
    """Property: the equality-constrained CVXPY QP (second reference) returns Solution M's weights and mask."""
    layer = random_layer(np.random.default_rng(seed), 3, 8, conditioning="well")
    f = MultipleRemoval(layer, NM(2, 4))
    a, b = solve(f, backend="torch", dtype="float64"), solve(f, backend="cvxpy")
    assert bool((a.mask == b.mask).all())
    assert float((a.weights - b.weights).abs().max()) < 1e-6 * max(1.0, float(a.weights.abs().max()))
    assert abs(a.objective - b.objective) <= 1e-7 * max(1.0, a.objective)
