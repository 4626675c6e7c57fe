"""Wanda: pruning by weights and activations (methods.md §8.2; locuslab/wanda ``prune_wanda``).

.. math::

    S_{ij} = |W_{ij}|\\, \\lVert X_j \\rVert_2 = |W_{ij}| \\sqrt{G_{jj}}, \\qquad
    \\hat W = M \\odot W, \\quad M = \\operatorname{proj}_{\\mathcal S}(S),

no weight update.  Shapes: W, S, M (m x n); G (n x n).

Default scope: a bare ratio (``WandaPruning(layer, 0.5)``) means ``Unstructured(0.5, scope="row")``: Wanda's
comparison group is each output row.  An explicit spec is respected as given.

``variant=True`` is Wanda's ``--use_variant``: per row, sort the scores ascending and prune the prefix whose
cumulative score is at most ``alpha`` times the row total, with one alpha for the layer found by bisection
(start 0.4, bracket [0, 0.8], until the layer sparsity is within 0.001 of the target).  Thresholding the
normalized cumulative score ``c_ir`` at alpha is a single layer-wide threshold on ``c``, so prunekit prunes
exactly ``floor(ratio * m * n)`` entries with the smallest ``c`` (the count the bisection approaches) and
reports the bisection's alpha; the variant therefore needs ``Unstructured(ratio, scope="layer")``.

Guarantee: HEURISTIC.  When G is diagonal (uncorrelated features) and undamped, ``S_ij^2 = W_ij^2/[G^{-1}]_jj``
(the OBS saliency) and no update is the optimal restoration (claim C20).
Paper: Sun, Liu, Bair, Kolter, "A Simple and Effective Pruning Approach for Large Language Models", ICLR 2024.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..errors import FormulationError
from .base import Formulation, Guarantee
from .form import ProblemForm
from .sparsity import NM, SparsitySpec, Unstructured, coerce_sparsity, require_sparsity


@dataclass(frozen=True, eq=False)
class WandaPruning(Formulation):
    """Keep the largest |W_ij| ||X_j|| under ``sparsity`` (a spec, or a ratio = per-row unstructured)."""

    sparsity: SparsitySpec = None  # type: ignore[assignment]
    variant: bool = False

    guarantee: ClassVar[Guarantee] = Guarantee.HEURISTIC
    paper: ClassVar[str] = "Sun et al., Wanda, arXiv 2306.11695 (methods.md §8.2)"
    method_name: ClassVar[str] = "wanda"
    structures: ClassVar[frozenset] = frozenset({"unstructured", "nm"})
    statistics: ClassVar[frozenset] = frozenset({"norms"})

    def __post_init__(self) -> None:
        object.__setattr__(self, "sparsity", coerce_sparsity(self.sparsity, "layer" if self.variant else "row"))
        super().__post_init__()

    def validate(self) -> None:
        require_sparsity("WandaPruning", self.sparsity)
        super().validate()
        if not isinstance(self.variant, bool):
            raise FormulationError(f"variant must be a bool, got {self.variant!r}.")
        if self.variant and not (isinstance(self.sparsity, Unstructured) and self.sparsity.scope == "layer"):
            raise FormulationError(
                f"variant=True (cumulative-score bisection) gives each row its own count, so it needs "
                f"Unstructured(ratio, scope='layer'), got {self.sparsity.describe()}. "
                f"Fix: sparsity=Unstructured({getattr(self.sparsity, 'ratio', 0.5)}, scope='layer'), or variant=False."
            )

    def _form(self) -> ProblemForm:
        return self._base_form(is_mixed_integer=True)

    @classmethod
    def example(cls, rng) -> "WandaPruning":
        from ..verification.toy import CONDITIONINGS, random_layer

        m, n = int(rng.integers(2, 7)), int(rng.choice([4, 8, 12]))
        layer = random_layer(rng, m, n, conditioning=str(rng.choice(CONDITIONINGS)))
        kind = int(rng.integers(0, 4))
        if kind == 3:
            return cls(layer, Unstructured(float(rng.uniform(0.2, 0.7)), scope="layer"), variant=True)
        spec = [Unstructured(0.5), Unstructured(float(rng.uniform(0.1, 0.8)), scope="layer"), NM(2, 4)][kind]
        return cls(layer, spec)
