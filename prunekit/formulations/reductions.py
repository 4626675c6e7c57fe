"""Reductions: explicit, invertible transformations between formulations (cvxpy's Reduction/Chain).

A :class:`Reduction` maps a formulation f to f' (``apply``), keeps what it needs to map a solution of f'
back to one of f (``invert``), and declares its :class:`~prunekit.formulations.base.Guarantee`:

* EXACT      -- opt(f') = opt(f) and ``invert`` maps optimal solutions to optimal solutions
                (e.g. SPAP's [0, 1] relaxation of the binary neuron selection, claim C4);
* RELAXATION -- opt(f') <= opt(f): a bound;
* HEURISTIC  -- ``invert`` yields a feasible point with no guarantee (e.g. the penalty method).

A :class:`Chain` applies reductions in order, checking ``accepts`` at each step, and inverts in reverse.
:meth:`Chain.reduce` returns the chain's end problem carrying a :class:`ChainOrigin` (the source problem, the
steps and the inverse data), so a solution of the end problem can be mapped back (:meth:`ChainOrigin.invert`) and
its provenance can name every step with its guarantee (:meth:`ChainOrigin.to_dict`).
The verification suite reads ``guarantee`` to decide what to test.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar, Sequence

from ..errors import FormulationError
from .base import Formulation, Guarantee


class Reduction(ABC):
    """Abstract reduction f -> f' with an inverse map for solutions."""

    guarantee: ClassVar[Guarantee] = Guarantee.HEURISTIC

    @abstractmethod
    def accepts(self, formulation: Formulation) -> bool:
        """Whether this reduction applies to ``formulation``."""

    @abstractmethod
    def apply(self, formulation: Formulation) -> tuple[Formulation, Any]:
        """Return ``(reduced formulation, inverse data)``."""

    @abstractmethod
    def invert(self, solution, inverse_data: Any):
        """Map a Solution of the reduced problem back to a Solution of the original problem."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(guarantee={self.guarantee.value})"


_ORDER = (Guarantee.EXACT, Guarantee.RELAXATION, Guarantee.HEURISTIC)


def weakest(guarantees) -> Guarantee:
    """The weakest of ``guarantees`` (EXACT < RELAXATION < HEURISTIC); EXACT for none."""
    return _ORDER[max((_ORDER.index(g) for g in guarantees), default=0)]


@dataclass(frozen=True)
class Chain:
    """A sequence of reductions applied in order and inverted in reverse.

    The chain's guarantee is the weakest of its steps (EXACT < RELAXATION < HEURISTIC).
    """

    reductions: Sequence[Reduction]

    @property
    def guarantee(self) -> Guarantee:
        return weakest(r.guarantee for r in self.reductions)

    def steps(self) -> list[dict[str, str]]:
        """``[{"reduction": repr, "guarantee": value}, ...]`` in the order they are applied."""
        return [{"reduction": repr(r), "guarantee": r.guarantee.value} for r in self.reductions]

    def apply(self, formulation: Formulation) -> tuple[Formulation, list[Any]]:
        inverses = []
        current = formulation
        for red in self.reductions:
            if not red.accepts(current):
                raise FormulationError(
                    f"{type(red).__name__} does not accept {type(current).__name__} "
                    f"(chain step {len(inverses) + 1} of {len(self.reductions)})."
                )
            current, inv = red.apply(current)
            inverses.append(inv)
        return current, inverses

    def invert(self, solution, inverses: list[Any]):
        for red, inv in zip(reversed(list(self.reductions)), reversed(inverses)):
            solution = red.invert(solution, inv)
        return solution

    def reduce(self, formulation: Formulation) -> Formulation:
        """The end problem of the chain applied to ``formulation``, carrying its :class:`ChainOrigin`.

        The origin is attached as the attribute ``_chain_origin`` (formulations are frozen dataclasses without
        slots; the attribute is not a field, so it changes neither the problem's options nor its equality).
        """
        end, inverses = self.apply(formulation)
        object.__setattr__(end, "_chain_origin", ChainOrigin(self, formulation, tuple(inverses)))
        return end

    def solve(self, formulation: Formulation, backend: str = "auto", options=None, **overrides):
        """Apply the chain, solve the reduced problem, and invert the solution."""
        from ..solvers import solve

        reduced, inverses = self.apply(formulation)
        return self.invert(solve(reduced, backend=backend, options=options, **overrides), inverses)


@dataclass(frozen=True, eq=False)
class ChainOrigin:
    """Where a reduced problem came from: the chain, the source problem and each step's inverse data."""

    chain: Chain
    source: Formulation
    inverses: tuple

    @property
    def guarantee(self) -> Guarantee:
        """The chain's guarantee for the source problem (the weakest step)."""
        return self.chain.guarantee

    def invert(self, solution):
        """Map a solution of the end problem back to one of :attr:`source` (every step's ``invert``, reversed)."""
        return self.chain.invert(solution, list(self.inverses))

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly record: ``{"source", "steps": [{"reduction", "guarantee"}], "guarantee"}``."""
        return {"source": type(self.source).__name__, "steps": self.chain.steps(), "guarantee": self.guarantee.value}
