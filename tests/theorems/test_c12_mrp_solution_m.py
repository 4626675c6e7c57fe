"""C12 — MRP Solution M is the exact constrained optimum.

Statement: for H = 2 X X^T + gamma I and each row's pruned set P, Solution M
``dw = -w_P (H^{-1}_PP)^{-1} H^{-1}_{P,:}`` is exactly zero on P, equals the restricted solve
``w_S + w_P H_PS H_SS^{-1}``, and has loss ``1/2 w_P (H^{-1}_PP)^{-1} w_P^T = 1/2 w_P (H/H_SS) w_P^T``.
Assumptions: H positive definite (prunekit uses gamma = 2 lambda, lambda = 1% of mean diag G).
Citation: methods.md §1 fact 3, §6.2 and §11 C12; Zhao et al. arXiv 2410.15567, Eq. 11-13.
Claim id: C12.
"""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prunekit.formulations.mrp import MultipleRemoval
from prunekit.formulations.restoration import FixedMaskRestoration
from prunekit.solvers import solve
from prunekit.verification import strategies as pst
from prunekit.verification.claims import get_claim
from prunekit.verification.claims.c12_mrp_solution_m import check_instance

CLAIM = get_claim("C12")


@given(pst.layers_and_specs(m=st.integers(2, 5), n=st.sampled_from((4, 8, 12)), kinds=("unstructured", "nm"), max_m=4,
                            conditionings=pst.CONDITIONINGS))
def test_claim_c12_holds(instance):
    """Property: Solution M is zero on P, equals the restricted solve, and its loss matches both closed forms."""
    err = check_instance(*instance)
    assert err <= CLAIM.tolerance, f"C12 error {err:.3g} > {CLAIM.tolerance}"


@given(pst.toy_layers(m=4, n=8, conditionings=("correlated",)), pst.sparsity_specs(8, kinds=("unstructured", "nm"), max_m=4))
def test_solution_m_equals_damped_restoration(layer, spec):
    """Property: MRP Solution M equals FixedMaskRestoration on the same mask (H = 2(G + lambda I))."""
    sol = solve(MultipleRemoval(layer, spec), backend="torch", dtype="float64")
    rest = solve(FixedMaskRestoration(layer, sol.mask), backend="torch", dtype="float64")
    assert float((sol.weights - rest.weights).abs().max()) < 1e-10 * max(1.0, float(layer.weight.abs().max()))
    assert sol.residuals["stationarity"] < 1e-10


@pytest.mark.reference
@settings(max_examples=5)
@given(pst.toy_layers(m=3, n=8, conditionings=("well",)), pst.sparsity_specs(8, kinds=("nm",), max_m=4))
def test_solution_m_matches_cvxpy_qp(layer, spec):
    """Property: the equality-constrained CVXPY QP (second reference) returns Solution M's weights and mask."""
    f = MultipleRemoval(layer, spec)
    a, b = solve(f, backend="torch", dtype="float64"), solve(f, backend="cvxpy")
    assert bool((a.mask == b.mask).all())
    assert float((a.weights - b.weights).abs().max()) < 1e-6 * max(1.0, float(a.weights.abs().max()))
    assert abs(a.objective - b.objective) <= 1e-7 * max(1.0, a.objective)
