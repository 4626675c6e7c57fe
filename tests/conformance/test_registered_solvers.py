"""Conformance of every registered solver (design principle 8), and meta-tests of the suite itself.

``test_registered_solver`` is parametrized over :func:`prunekit.verification.conformance.conformance_checks`:
registering a solver is enough to get it tested.  The meta-tests register throwaway formulations with
deliberately broken solvers and assert that the corresponding check catches each defect, so a green
conformance run means something.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pytest
import torch

from prunekit.errors import BackendUnavailable, VerificationError
from prunekit.formulations.base import Formulation, Guarantee
from prunekit.formulations.sparsity import SparsitySpec, Unstructured
from prunekit.solvers.base import Solver
from prunekit.solvers.options import ReferenceOptions
from prunekit.solvers.registry import register_solver, unregister_solver
from prunekit.solvers.solution import Solution
from prunekit.verification.conformance import (
    conformance_checks,
    parametrize_with_checks,
    reference_twin,
    registered_pairs,
    run_conformance,
)
from prunekit.verification.toy import random_layer


@parametrize_with_checks()
def test_registered_solver(check):
    """Property: every registered solver meets every contract on its formulation's example instances."""
    try:
        check()
    except BackendUnavailable as exc:  # an optional dependency (e.g. a MIQP solver for cvxpy) is missing
        pytest.skip(str(exc))


# ------------------------------------------------------------------------------------------ meta-tests
@dataclass(frozen=True, eq=False)
class _TopMagnitude(Formulation):
    """Toy problem: keep the largest |W_ij| per the spec, no update (a stand-in for a new formulation)."""

    sparsity: SparsitySpec = None
    guarantee: ClassVar[Guarantee] = Guarantee.HEURISTIC

    def _form(self):
        return self._base_form(is_mixed_integer=True)

    @classmethod
    def example(cls, rng):
        return cls(random_layer(rng, 3, 8), Unstructured(float(rng.choice([0.25, 0.5]))))


class _Good(Solver):
    def run(self, f, options):
        mask = f.sparsity.project(f.layer.weight.detach().abs().double())
        return Solution(weights=f.layer.weight * mask, mask=mask)


class _GoodRef(Solver):
    options_type = ReferenceOptions

    def run(self, f, options):
        w = f.layer.weight.detach().cpu().numpy()
        keep = f.sparsity.project(torch.from_numpy(np.abs(w)))
        return Solution(weights=torch.from_numpy(w * keep.numpy()).to(f.layer.weight), mask=keep)


class _Mutates(_Good):
    def run(self, f, options):
        f.layer.weight[0, 0] += 1.0
        return super().run(f, options)


class _Nondeterministic(_Good):
    calls = 0

    def run(self, f, options):
        type(self).calls += 1
        sol = super().run(f, options)
        return sol.replace(weights=sol.weights * (1.0 + 1e-9 * type(self).calls) * sol.mask)


class _BreaksMask(_Good):
    def run(self, f, options):
        return Solution(weights=f.layer.weight.clone(), mask=torch.ones_like(f.layer.weight, dtype=torch.bool))


class _WrongDtype(_Good):
    def run(self, f, options):
        sol = super().run(f, options)
        return sol.replace(weights=sol.weights.to(torch.float32))


class _AlwaysFloat64(_Good):
    def run(self, f, options):
        sol = super().run(f, options)
        return sol.replace(weights=sol.weights.to(torch.float64))


class _WrongObjective(_Good):
    def run(self, f, options):
        mask = f.sparsity.project(-f.layer.weight.detach().abs().double())  # keeps the smallest
        return Solution(weights=f.layer.weight * mask, mask=mask)


def _register(solver_cls, backend):
    """A fresh formulation type with ``solver_cls`` (and a good reference twin) registered."""
    ftype = type(f"_Toy{solver_cls.__name__}", (_TopMagnitude,), {"__module__": __name__})
    ftype = dataclass(frozen=True, eq=False)(ftype)
    solver = type(f"{solver_cls.__name__}For{ftype.__name__}", (solver_cls,), {})
    ref = type(f"_RefFor{ftype.__name__}", (_GoodRef,), {})
    register_solver(ftype, backend)(solver)
    register_solver(ftype, "scipy")(ref)
    return ftype, solver, ref


@pytest.fixture
def toy_registry():
    made = []

    def make(solver_cls, backend="torch"):
        ftype, solver, ref = _register(solver_cls, backend)
        made.extend([solver, ref])
        return solver

    yield make
    for cls in made:
        unregister_solver(cls)


def _results(solver):
    return {r["check"].split("-")[1]: r for r in run_conformance(seeds=(0,), solvers=[solver])
            if r["check"].startswith(solver.__name__)}


def test_good_toy_solver_passes_every_check(toy_registry):
    """Property: a correct torch solver with a correct twin passes every check (no false alarms)."""
    solver = toy_registry(_Good)
    assert reference_twin(solver) is not None
    results = _results(solver)
    assert {"solution_contract", "mask_obeys_spec", "deterministic", "input_not_mutated", "residuals",
            "dtype_float32", "matches_reference", "has_reference_twin"} <= set(results)
    failed = {k: r["message"] for k, r in results.items() if r["status"] != "pass"}
    assert not failed, failed


@pytest.mark.parametrize("broken, check", [
    (_Mutates, "input_not_mutated"),
    (_Nondeterministic, "deterministic"),
    (_BreaksMask, "mask_obeys_spec"),
    (_WrongDtype, "solution_contract"),
    (_AlwaysFloat64, "dtype_float32"),
    (_WrongObjective, "matches_reference"),
])
def test_broken_solver_is_caught(toy_registry, broken, check):
    """Property: each deliberately broken contract makes the corresponding check fail."""
    solver = toy_registry(broken)
    result = _results(solver)[check]
    assert result["status"] == "fail", result


class _OverclaimsSolved(_Good):
    """Declares itself iterative, stops on its limit, yet says "solved" (bypassing IterativeSolver.solution)."""

    iterative = True

    def run(self, f, options):
        from prunekit.solvers.iterative import IterationStats

        sol = super().run(f, options)
        return sol.replace(status="solved", stats=IterationStats.certified(5, 5, 1e-6, False, 1.0).as_stats())


class _IterativeWithoutStats(_Good):
    iterative = True


@pytest.mark.parametrize("broken", [_OverclaimsSolved, _IterativeWithoutStats])
def test_iteration_stats_check_catches_untrue_statuses(toy_registry, broken):
    """Property: a solver declaring iterative=True must report IterationStats and the status they support."""
    result = _results(toy_registry(broken))["iteration_stats"]
    assert result["status"] == "fail", result


def test_registered_solvers_are_all_collected():
    """Property: every registered solver appears in the parametrized checks (registration is enough)."""
    ids = {c.id for c in conformance_checks(seeds=(0,))}
    for _, cls in registered_pairs():
        assert any(i.startswith(f"{cls.__name__}[{cls.backend}]") for i in ids), cls


def test_missing_example_and_missing_twin_fail(toy_registry):
    """Property: a formulation without ``example`` and a torch solver without twin are failing checks."""

    @dataclass(frozen=True, eq=False)
    class NoExample(Formulation):
        def _form(self):
            return self._base_form(is_mixed_integer=False)

    class Lonely(_Good):
        pass

    register_solver(NoExample, "torch")(Lonely)
    try:
        checks = {c.name: c for c in conformance_checks(seeds=(0,), solvers=[Lonely])}
        with pytest.raises(VerificationError, match="example"):
            checks["example_implemented[NoExample]"]()
        with pytest.raises(VerificationError, match="reference twin"):
            checks["has_reference_twin"]()
        assert not any(n in checks for n in ("solution_contract", "deterministic"))
    finally:
        unregister_solver(Lonely)


def test_to_device_moves_every_tensor_and_keeps_values():
    """Property: to_device copies the formulation with all tensors on the target device (CPU here)."""
    from prunekit.formulations import FixedMaskRestoration
    from prunekit.verification.contracts import _tensors, to_device

    f = FixedMaskRestoration.example(np.random.default_rng(0))
    g = to_device(f, "cpu")
    assert g is not f and type(g) is type(f)
    before, after = _tensors(f), _tensors(g)
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
