"""Magnitude pruning (methods.md §8.1; locuslab/wanda ``prune_magnitude``).

.. math::

    \\hat W = M \\odot W, \\qquad M = \\operatorname{proj}_{\\mathcal S}\\big(|W_{ij}|\\big),

i.e. keep the largest ``|W_ij|`` subject to the sparsity structure S; no weight update.  Shapes: W, M (m x n).

Default scope: a bare ratio (``MagnitudePruning(layer, 0.5)``) means ``Unstructured(0.5, scope="layer")``,
the single per-layer threshold of the reference code.  An explicit spec is respected as given (e.g.
``Unstructured(0.5)`` is per row; ``NM(2, 4)`` prunes the N smallest of each M-group of each row).

Guarantee: HEURISTIC (no optimality claim for the reconstruction objective).
Paper: the magnitude baseline of Sun et al., "A Simple and Effective Pruning Approach for LLMs" (Wanda), 2023.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .base import Formulation, Guarantee
from .form import ProblemForm
from .sparsity import NM, SparsitySpec, Unstructured, coerce_sparsity, require_sparsity


@dataclass(frozen=True, eq=False)
class MagnitudePruning(Formulation):
    """Keep the largest |W_ij| under ``sparsity`` (a spec, or a ratio = per-layer unstructured)."""

    sparsity: SparsitySpec = None  # type: ignore[assignment]

    guarantee: ClassVar[Guarantee] = Guarantee.HEURISTIC
    paper: ClassVar[str] = "magnitude baseline, locuslab/wanda prune_magnitude (methods.md §8.1)"
    method_name: ClassVar[str] = "magnitude"
    structures: ClassVar[frozenset] = frozenset({"unstructured", "nm"})
    statistics: ClassVar[frozenset] = frozenset()
    unstructured_scope: ClassVar[str] = "layer"

    def __post_init__(self) -> None:
        object.__setattr__(self, "sparsity", coerce_sparsity(self.sparsity, "layer"))
        super().__post_init__()

    def validate(self) -> None:
        require_sparsity("MagnitudePruning", self.sparsity)
        super().validate()

    def _form(self) -> ProblemForm:
        return self._base_form(is_mixed_integer=True)

    @classmethod
    def example(cls, rng) -> "MagnitudePruning":
        from ..verification.toy import random_layer

        m, n = int(rng.integers(2, 7)), int(rng.choice([4, 8, 12]))
        layer = random_layer(rng, m, n)
        spec = [Unstructured(0.5, scope="layer"), Unstructured(float(rng.uniform(0.1, 0.8))), NM(2, 4)][int(rng.integers(0, 3))]
        return cls(layer, spec)
