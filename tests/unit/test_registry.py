"""Unit tests of the solver registry: registration, auto/explicit dispatch, errors, unregistration."""

from __future__ import annotations

import pytest

from prunekit.errors import NoSolverError
from prunekit.solvers import backends_for, register_solver, registered, resolve, solvers_for, unregister_solver

from _throwaway import MagnitudeTorch, NeedsMissing, Throwaway, TinyOnly, make


@pytest.fixture
def reg():
    made = []

    def add(cls, backend, ftype=Throwaway):
        sub = type(f"{cls.__name__}_{backend}", (cls,), {})
        register_solver(ftype, backend)(sub)
        made.append(sub)
        return sub

    yield add
    for cls in made:
        unregister_solver(cls)
    assert not solvers_for(Throwaway)


def test_register_sets_class_attributes_and_lists_it(reg):
    """Property: the decorator records (formulation type, backend) and the registry lists the class."""
    cls = reg(MagnitudeTorch, "torch")
    assert cls.formulation_type is Throwaway and cls.backend == "torch"
    assert cls in registered() and backends_for(Throwaway) == ["torch"]


def test_auto_takes_first_accepting_solver_in_registration_order(reg):
    """Property: backend='auto' skips solvers that decline and takes the first that accepts."""
    tiny = reg(TinyOnly, "torch")
    ref = reg(MagnitudeTorch, "scipy")
    assert type(resolve(make(), "auto")) is ref  # n = 8 > 4: the torch solver declines
    assert tiny().accepts(make())[0] is False


def test_explicit_backend_picks_that_backend(reg):
    """Property: an explicit backend resolves to the solver of that backend even if another comes first."""
    reg(MagnitudeTorch, "torch")
    ref = reg(MagnitudeTorch, "scipy")
    assert type(resolve(make(), "scipy")) is ref


def test_no_solver_error_lists_backends_tried_and_able(reg):
    """Property: NoSolverError names each backend tried with its reason, and the backends that can solve."""
    reg(TinyOnly, "torch")
    reg(MagnitudeTorch, "scipy")
    with pytest.raises(NoSolverError) as info:
        resolve(make(), "torch")
    msg = str(info.value)
    assert "max_in_features=4" in msg and "torch" in msg and "Backends that can solve this problem: scipy" in msg


def test_missing_requirement_declines_with_install_hint(reg):
    """Property: a solver whose optional module is missing declines with a pip install hint."""
    reg(NeedsMissing, "cvxpy")
    with pytest.raises(NoSolverError, match="a_module_that_does_not_exist_xyz.*pip install"):
        resolve(make(), "cvxpy")


def test_unregistered_formulation_reports_nothing_registered():
    """Property: a formulation with no solver fails with 'nothing registered'."""
    with pytest.raises(NoSolverError, match="nothing registered"):
        resolve(make(), "auto")


def test_unknown_backend_is_rejected_with_the_valid_names(reg):
    """Property: an unknown backend name raises NoSolverError listing the valid ones."""
    reg(MagnitudeTorch, "torch")
    with pytest.raises(NoSolverError, match="unknown backend 'jax'.*bruteforce"):
        resolve(make(), "jax")


def test_duplicate_registration_is_an_error_and_unregister_removes(reg):
    """Property: a second, different solver for the same pair is rejected; unregister frees the pair."""
    first = reg(MagnitudeTorch, "torch")

    class Other(MagnitudeTorch):
        pass

    with pytest.raises(ValueError, match="already registered"):
        register_solver(Throwaway, "torch")(Other)
    unregister_solver(first)
    assert first not in registered()
    register_solver(Throwaway, "torch")(Other)
    unregister_solver(Other)


def test_register_rejects_non_solver():
    """Property: only Solver subclasses can be registered."""
    with pytest.raises(TypeError):
        register_solver(Throwaway, "torch")(object)
