"""Unit tests of Reduction / Chain with toy reductions: guarantee, order of apply and invert, solve."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from prunekit.errors import FormulationError
from prunekit.formulations import Chain, Guarantee, Reduction
from prunekit.solvers import register_solver, solve, unregister_solver

from _throwaway import MagnitudeTorch, Throwaway, make


class Scale(Reduction):
    """f -> f with W scaled by c (magnitude masks are scale-invariant); invert divides by c."""

    def __init__(self, c, log, guarantee=Guarantee.EXACT):
        self.c, self.log, self.guarantee = c, log, guarantee

    def accepts(self, f):
        return isinstance(f, Throwaway)

    def apply(self, f):
        self.log.append(("apply", self.c))
        layer = dataclasses.replace(f.layer, weight=f.layer.weight * self.c)
        return dataclasses.replace(f, layer=layer), self.c

    def invert(self, solution, c):
        self.log.append(("invert", c))
        return solution.replace(weights=solution.weights / c)


class Rejects(Scale):
    def accepts(self, f):
        return False


@pytest.fixture
def solver():
    cls = type("Solver_for_test_reductions", (MagnitudeTorch,), {})
    register_solver(Throwaway, "torch")(cls)
    yield cls
    unregister_solver(cls)


@pytest.mark.parametrize("guarantees, expected", [
    ((Guarantee.EXACT, Guarantee.EXACT), Guarantee.EXACT),
    ((Guarantee.EXACT, Guarantee.RELAXATION), Guarantee.RELAXATION),
    ((Guarantee.RELAXATION, Guarantee.HEURISTIC, Guarantee.EXACT), Guarantee.HEURISTIC),
    ((), Guarantee.EXACT),
])
def test_chain_guarantee_is_the_weakest_step(guarantees, expected):
    """Property: EXACT < RELAXATION < HEURISTIC, and the chain takes the weakest."""
    chain = Chain([Scale(2.0, [], g) for g in guarantees])
    assert chain.guarantee is expected


def test_chain_applies_in_order_and_inverts_in_reverse():
    """Property: apply runs steps 1..k, invert runs k..1 with each step's own inverse data."""
    log = []
    chain = Chain([Scale(2.0, log), Scale(3.0, log), Scale(5.0, log)])
    f = make()
    reduced, inverses = chain.apply(f)
    assert inverses == [2.0, 3.0, 5.0]
    torch.testing.assert_close(reduced.layer.weight, f.layer.weight * 30.0)
    from prunekit.solvers.solution import Solution

    back = chain.invert(Solution(weights=reduced.layer.weight, mask=torch.ones_like(reduced.layer.weight, dtype=torch.bool)), inverses)
    assert log == [("apply", 2.0), ("apply", 3.0), ("apply", 5.0), ("invert", 5.0), ("invert", 3.0), ("invert", 2.0)]
    torch.testing.assert_close(back.weights, f.layer.weight)


def test_chain_checks_accepts_at_each_step():
    """Property: a step that does not accept its input stops the chain with the step number."""
    chain = Chain([Scale(2.0, []), Rejects(3.0, [])])
    with pytest.raises(FormulationError, match="step 2 of 2"):
        chain.apply(make())


def test_chain_solve_equals_direct_solve_for_exact_steps(solver):
    """Property: solving through exact (scale) reductions gives the direct solution; input untouched."""
    f = make()
    w = f.layer.weight.clone()
    direct = solve(f)
    through = Chain([Scale(2.0, []), Scale(0.25, [])]).solve(f)
    assert torch.equal(through.mask, direct.mask)
    torch.testing.assert_close(through.weights, direct.weights)
    assert torch.equal(f.layer.weight, w)


def test_reduction_repr_names_guarantee():
    """Property: a reduction's repr names its class and guarantee."""
    assert "Scale" in repr(Scale(2.0, [])) and "exact" in repr(Scale(2.0, []))
