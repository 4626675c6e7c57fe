"""Unit tests of ``prunekit.solve``: options, residuals/provenance, NaN guard, purity."""

from __future__ import annotations

import pytest
import torch

from prunekit.errors import FormulationError, NumericalError
from prunekit.solvers import SolverOptions, register_solver, solve, unregister_solver

from _throwaway import MagnitudeTorch, NaNSolver, Throwaway, make


@pytest.fixture
def torch_solver():
    cls = type("Solver_for_test_solve", (MagnitudeTorch,), {})
    register_solver(Throwaway, "torch")(cls)
    yield cls
    unregister_solver(cls)


def test_solve_fills_objective_residuals_and_provenance(torch_solver):
    """Property: solve attaches the formulation's residuals, objective, time and provenance."""
    f = make()
    sol = solve(f)
    assert sol.objective == pytest.approx(f.objective(sol.weights))
    assert sol.residuals["mask_violations"] == 0 and sol.residuals["nonfinite"] == 0
    assert sol.provenance["solver"] == torch_solver.__name__ and sol.provenance["backend"] == "torch"
    assert sol.provenance["formulation"] == "Throwaway" and "time_s" in sol.stats


def test_option_overrides_reach_the_solver(torch_solver):
    """Property: keyword overrides replace option fields; an options object is honoured too."""
    assert solve(make(), dtype="float64").stats["dtype"] == "float64"
    assert solve(make(), options=SolverOptions(dtype="float64")).provenance["options"]["dtype"] == "float64"
    assert solve(make()).provenance["options"]["dtype"] == "float32"


def test_unknown_option_lists_valid_names(torch_solver):
    """Property: a misspelt option raises TypeError listing the valid option names."""
    with pytest.raises(TypeError, match="unknown solver option.*'max_iters'.*max_iter"):
        solve(make(), max_iters=5)


def test_invalid_option_value_is_a_formulation_error(torch_solver):
    """Property: an invalid dtype raises FormulationError naming the valid dtypes."""
    with pytest.raises(FormulationError, match="float32"):
        solve(make(), dtype="float16")


def test_nan_output_raises_numerical_error():
    """Property: a solver returning NaN never passes silently: NumericalError with a fix."""
    cls = type("NaN_for_test_solve", (NaNSolver,), {})
    register_solver(Throwaway, "torch")(cls)
    try:
        with pytest.raises(NumericalError, match="NaN/Inf.*Fix"):
            solve(make())
    finally:
        unregister_solver(cls)


def test_solve_leaves_the_formulation_untouched(torch_solver):
    """Property: weights, Gram and the formulation object are bitwise unchanged by solve."""
    f = make()
    w, g = f.layer.weight.clone(), f.layer.gram.clone()
    sol = solve(f)
    assert torch.equal(f.layer.weight, w) and torch.equal(f.layer.gram, g)
    assert sol.weights.data_ptr() != f.layer.weight.data_ptr()
    assert not hasattr(f, "solution") and not hasattr(f, "value")


def test_solve_rejects_non_formulations():
    """Property: solve() takes a Formulation and says so."""
    with pytest.raises(TypeError, match="Formulation"):
        solve("not a formulation")


def test_formulation_solve_sugar_forwards(torch_solver):
    """Property: Formulation.solve(...) equals prunekit.solve(formulation, ...)."""
    f = make()
    assert torch.equal(f.solve(dtype="float64").weights, solve(f, dtype="float64").weights)


def test_solution_replace_is_a_copy(torch_solver):
    """Property: Solution is frozen; replace returns a new record."""
    sol = solve(make())
    other = sol.replace(status="optimal")
    assert sol.status == "solved" and other.status == "optimal"
    with pytest.raises(Exception):
        sol.status = "x"  # type: ignore[misc]
