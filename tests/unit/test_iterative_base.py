"""The iterative-solver base (issue 13, "Truth"): one owner of max_iter, tol and typed stats.

Every iterative torch solver reports an :class:`IterationStats` under fixed keys and a status its loop supports
("solved" only when its certificate held, "max_iter" on the limit); the conformance suite decides "iterative"
from the solver's declaration, never from how a stats key is spelt (SPAP says "rounds", SparseLLM "epochs").
"""

from dataclasses import dataclass, replace
from typing import ClassVar

import numpy as np
import pytest
import torch

import prunekit
from prunekit.formulations.admm import ADMMSplit
from prunekit.formulations.base import Formulation, Guarantee
from prunekit.formulations.glu_recovery import GLURecovery
from prunekit.formulations.l1 import L1Relaxation
from prunekit.formulations.l1_refit import RefitL1Relaxation
from prunekit.formulations.penalty import PenaltyRelaxation
from prunekit.formulations.penalty_refit import RefitPenaltyRelaxation
from prunekit.formulations.sparsellm import SparseLLMSplit
from prunekit.formulations.sparsity import NM, SparsitySpec, Unstructured
from prunekit.solvers.base import Solver
from prunekit.solvers.iterative import (
    ITERATION_KEYS,
    IterationLoop,
    IterationStats,
    IterativeSolver,
    iteration_stats,
)
from prunekit.solvers.registry import register_solver, registered, unregister_solver
from prunekit.solvers.solution import Solution
from prunekit.verification.conformance import run_conformance, solver_kkt_bound
from prunekit.verification.tolerances import ITERATIVE_KKT_FACTOR, for_dtype, kkt_bound
from prunekit.verification.toy import random_layer

ITERATIVE_FORMULATIONS = (L1Relaxation, RefitL1Relaxation, PenaltyRelaxation, RefitPenaltyRelaxation, ADMMSplit,
                          SparseLLMSplit, GLURecovery)


# ------------------------------------------------------------------------------------------ the record and the loop
def test_iteration_stats_is_typed_frozen_and_consistent():
    """Property: converged iff stop_reason == "converged"; bad records raise; the stats keys are fixed."""
    rec = IterationStats.certified(7, 10, 1e-6, True, 3e-7, "r <= tol")
    assert rec.status == "solved" and rec.stop_reason == "converged"
    assert tuple(rec.as_stats()) == ITERATION_KEYS
    assert IterationStats.from_stats({**rec.as_stats(), "other": 1}) == rec
    with pytest.raises(AttributeError):
        rec.iterations = 3  # type: ignore[misc]
    assert IterationStats.certified(10, 10, 1e-6, False, 1e-3).status == "max_iter"
    sched = IterationStats.schedule(4, max_iter=8)
    assert (sched.status, sched.converged, sched.tol, sched.max_iter) == ("heuristic", False, 0.0, 8)
    with pytest.raises(ValueError, match="contradicts"):
        IterationStats(3, 10, 1e-6, True, 0.0, "max_iter")
    with pytest.raises(ValueError, match="stop_reason"):
        IterationStats(3, 10, 1e-6, False, 0.0, "rounds")
    with pytest.raises(KeyError, match="IterativeSolver"):
        IterationStats.from_stats({"rounds": 3})


def test_loop_converges_on_the_certificate_or_stops_on_the_limit():
    """Property: the loop ends "converged" at the first iterate whose certificate holds, else at max_iter."""
    loop = IterationLoop(max_iter=10, tol=1e-3, certificate="halving")
    residual = 1.0
    for _ in loop:
        residual /= 10.0
        if loop.check(residual):
            break
    rec = loop.stats()
    assert (rec.iterations, rec.converged, rec.stop_reason, rec.final_residual) == (3, True, "converged", 1e-3)

    loop = IterationLoop(max_iter=4, tol=1e-9)
    for _ in loop:
        if loop.check(1.0):
            break
    assert (loop.stats().iterations, loop.stats().stop_reason, loop.stats().status) == (4, "max_iter", "max_iter")

    loop = IterationLoop(max_iter=5, tol=1e-9)
    for k in loop:  # an explicit rule overrides residual <= tol
        if loop.check(0.5, done=k == 2):
            break
    assert loop.stats().converged and loop.stats().iterations == 2
    assert IterationLoop(0, 1.0).stats().stop_reason == "max_iter"  # nothing ran: nothing certified
    with pytest.raises(ValueError, match="max_iter"):
        IterationLoop(-1, 1.0)


def test_solution_refuses_clashing_keys_and_overclaimed_status():
    """Property: a solver cannot redefine the fixed keys, nor claim "solved" for a loop that hit its limit."""
    w = torch.zeros(2, 3)
    limit = IterationStats.certified(5, 5, 1e-6, False, 1.0)
    with pytest.raises(ValueError, match="collide"):
        IterativeSolver.solution(limit, weights=w, mask=w.bool(), stats={"iterations": 5})
    with pytest.raises(ValueError, match="not supported"):
        IterativeSolver.solution(limit, weights=w, mask=w.bool(), status="solved")
    sol = IterativeSolver.solution(limit, weights=w, mask=w.bool(), stats={"rounds": 5}, status="heuristic")
    assert sol.status == "heuristic" and sol.stats["rounds"] == 5 and iteration_stats(sol) == limit


# ------------------------------------------------------------------------------------------ the ported solvers
def test_iterative_solvers_declare_it_and_closed_forms_do_not():
    """Property: the torch solvers of iterative formulations derive from IterativeSolver; the others declare
    iterative = False even where they spell a stats key "iterations" (TorchAllocation)."""
    torch_solvers = {cls.formulation_type: cls for cls in registered() if cls.backend == "torch"}
    for ftype in ITERATIVE_FORMULATIONS:
        assert issubclass(torch_solvers[ftype], IterativeSolver) and torch_solvers[ftype].iterative is True, ftype
    for ftype, cls in torch_solvers.items():
        if ftype not in ITERATIVE_FORMULATIONS:
            assert cls.iterative is False, cls


@pytest.mark.parametrize("ftype", ITERATIVE_FORMULATIONS, ids=lambda t: t.__name__)
@pytest.mark.parametrize("seed", [0, 1])
def test_every_iterative_solver_reports_iteration_stats(ftype, seed):
    """Property: the example solutions carry a valid IterationStats and the status it supports."""
    f = ftype.example(np.random.default_rng([seed, 0]))
    sol = prunekit.solve(f, backend="torch", dtype="float64")
    rec = iteration_stats(sol)
    assert sol.status in (rec.status, "heuristic")
    assert 0 <= rec.iterations <= rec.max_iter
    if rec.stop_reason != "schedule":
        assert rec.final_residual is not None and rec.converged == (sol.status == "solved")


def test_spap_rounds_are_the_iterations_and_the_limit_gives_max_iter():
    """Property: SPAP reports through the base ("rounds" kept for compatibility); one round cannot meet
    stable_rounds = 3, so the loop ends on its limit with status "max_iter"."""
    f = PenaltyRelaxation.example(np.random.default_rng(0))
    sol = prunekit.solve(f, backend="torch", dtype="float64")
    rec = iteration_stats(sol)
    assert sol.stats["rounds"] == rec.iterations and (rec.max_iter, rec.tol) == (f.max_rounds, f.eps)
    assert sol.status == ("solved" if rec.converged else "max_iter")
    short = prunekit.solve(replace(f, max_rounds=1), backend="torch", dtype="float64")
    assert (short.status, short.stats["stop_reason"], short.stats["iterations"]) == ("max_iter", "max_iter", 1)


def test_admm_status_follows_its_stopping_rule():
    """Property: ADMM stopping on its limit is "max_iter" (it was "heuristic" whatever happened); a fixed point
    within options.tol is "solved" and stops early."""
    layer = random_layer(np.random.default_rng(3), 6, 8)
    f = ADMMSplit(layer, NM(2, 4), iterations=2)
    sol = prunekit.solve(f, backend="torch", dtype="float64", tol=1e-12)
    assert (sol.status, sol.stats["stop_reason"], sol.stats["iterations"]) == ("max_iter", "max_iter", 2)
    loose = prunekit.solve(replace(f, iterations=200), backend="torch", dtype="float64", tol=10.0)
    assert loose.status == "solved" and loose.stats["converged"] and loose.stats["iterations"] < 200
    assert loose.stats["tol"] == 10.0 and loose.stats["final_residual"] <= 10.0


def test_fista_pure_lasso_limit_is_max_iter_and_projected_mode_is_scheduled():
    """Property: one FISTA step from the dense weight certifies nothing ("max_iter"); FISTAPruner's T rounds of
    K steps are a schedule ("heuristic") with the per-round counts kept in extras."""
    layer = random_layer(np.random.default_rng(4), 3, 8, conditioning="correlated")
    probe = L1Relaxation(layer, Unstructured(0.5), lam=0.0, adaptive=False, project=False)
    f = replace(probe, lam=0.3 * probe.lambda_max(), K=1, eps=1e-6, warm_start="dense")
    sol = prunekit.solve(f, backend="torch", dtype="float64")
    assert (sol.status, sol.stats["stop_reason"], sol.stats["max_iter"]) == ("max_iter", "max_iter", 1)
    assert sol.stats["final_residual"] > f.eps
    proj = prunekit.solve(L1Relaxation(layer, NM(2, 4), warm_start="magnitude"), backend="torch", dtype="float64")
    rec = iteration_stats(proj)
    assert proj.status == "heuristic" and rec.stop_reason == "schedule"
    assert rec.iterations == sum(proj.extras["iterations_per_round"]) and rec.max_iter == 3 * 20


# ------------------------------------------------------------------------------------------ conformance
@dataclass(frozen=True, eq=False)
class _Certified(Formulation):
    """Toy problem whose stationarity certificate is 1e-5: above the float64 bound, below 100 * tol = 1e-4."""

    sparsity: SparsitySpec = None
    guarantee: ClassVar[Guarantee] = Guarantee.HEURISTIC

    def _form(self):
        return self._base_form(is_mixed_integer=True)

    def _extra_residuals(self, solution):
        return {"stationarity": 1e-5}

    @classmethod
    def example(cls, rng):
        return cls(random_layer(rng, 3, 8), Unstructured(0.5))


def _keep_top(f):
    mask = f.sparsity.project(f.layer.weight.detach().abs().double())
    return f.layer.weight * mask, mask


class _SaysRounds(IterativeSolver):
    """Declares itself iterative and counts in "rounds", like SPAP."""

    def run(self, f, options):
        w, mask = _keep_top(f)
        loop = IterationStats.certified(3, 10, 1e-6, True, 5e-7, "toy")
        return self.solution(loop, weights=w, mask=mask, stats={"rounds": 3})


class _SpellsIterations(Solver):
    """Not iterative, yet reports stats["iterations"] (the spelling the old rule keyed on)."""

    def run(self, f, options):
        w, mask = _keep_top(f)
        return Solution(weights=w, mask=mask, stats={"iterations": 3})


@pytest.fixture
def toy_solvers():
    made = []

    def make(solver_cls):
        ftype = dataclass(frozen=True, eq=False)(type(f"_For{solver_cls.__name__}", (_Certified,), {}))
        solver = type(f"{solver_cls.__name__}On{ftype.__name__}", (solver_cls,), {})
        register_solver(ftype, "torch")(solver)
        made.append(solver)
        return solver

    yield make
    for cls in made:
        unregister_solver(cls)


def _conformance(solver):
    return {r["check"].split("-")[1]: r for r in run_conformance(seeds=(0,), solvers=[solver])
            if r["check"].startswith(solver.__name__)}


def test_conformance_reads_the_declaration_not_the_stats_spelling(toy_solvers):
    """Property: a declared-iterative solver saying "rounds" is judged against 100 * its tol and passes; a closed
    form saying "iterations" is judged against the float64 bound and fails -- the reverse of the old rule."""
    rounds, spelled = toy_solvers(_SaysRounds), toy_solvers(_SpellsIterations)
    got = _conformance(rounds)
    assert got["residuals"]["status"] == "pass", got["residuals"]
    assert got["iteration_stats"]["status"] == "pass", got["iteration_stats"]
    other = _conformance(spelled)
    assert other["residuals"]["status"] == "fail" and "iterative=False" in other["residuals"]["message"]
    assert "iteration_stats" not in other


def test_kkt_bound_uses_the_declared_tolerance():
    """Property: kkt_bound loosens only for iterative solvers, to ITERATIVE_KKT_FACTOR * their own tol."""
    base = for_dtype("float64", backend="torch").kkt
    assert kkt_bound("float64", "torch") == base
    assert kkt_bound("float64", "torch", iterative=True, tol=1e-6) == pytest.approx(ITERATIVE_KKT_FACTOR * 1e-6)
    assert kkt_bound("float64", "torch", iterative=True, tol=0.0) == base
    w = torch.zeros(2, 2)
    loop = IterationStats.certified(1, 1, 1e-3, True, 0.0)
    assert solver_kkt_bound(_SaysRounds, IterativeSolver.solution(loop, weights=w, mask=w.bool())) == pytest.approx(0.1)
    spelled = Solution(weights=w, mask=w.bool(), stats={"iterations": 9}, provenance={"options": {"tol": 1e-3}})
    assert solver_kkt_bound(_SpellsIterations, spelled) == kkt_bound("float64", _SpellsIterations.backend)
