"""CoupledStructuredRemoval (FASP): score whole input columns, keep the best groups, restore by least squares.

For one coupled pair (methods.md §4.2) the downstream weight W (m x n) reads the intermediate channels
Z (n x N), G = Z Z^T (n x n).  Removing channel j deletes column j of W together with the matching
upstream rows (exact, claim C2).  FASP:

.. math::

    S_j = \\lVert W_{:,j} \\rVert_1 \\, \\lVert Z_j \\rVert_2, \\qquad
    \\mathcal S = \\text{top groups by } \\textstyle\\sum_{j \\in g} S_j, \\qquad
    \\hat W_{:,\\mathcal S} = W \\, G_{:,\\mathcal S} (G_{\\mathcal S \\mathcal S})^{-1}, \\;
    \\hat W_{:,\\mathcal P} = 0,

the restoration being the least-squares optimum ``argmin ||W' Z_S - W Z||_F`` (C1), computed with the
layer's damping: ``G -> G + lambda I`` (lambda = damping * mean diag G).  Shapes: scores (n,), kept set
|S| = n - (pruned groups' columns).  Guarantee: HEURISTIC (the selection is a score; C3 checks it never
beats the brute-force optimum of :class:`~prunekit.formulations.mip.MaskedReconstructionMIP`).

Paper: FASP, arXiv 2501.09412.  The model-level option ``ratio_mode`` (pair ratio vs model ratio) belongs
to the recipe, not to this layer problem.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Mapping

from ..errors import FormulationError
from .base import Formulation, Guarantee, restoration_stationarity
from .form import ProblemForm
from .scores import COLUMN_SCORES
from .sparsity import Channels

_NEEDS_MEAN = ("wifv", "ifv")


@dataclass(frozen=True, eq=False)
class CoupledStructuredRemoval(Formulation):
    """FASP's structured removal of input channels (see the module docstring).

    Parameters
    ----------
    layer : LayerData
        The downstream weight W (m, n) and the Gram of its input channels.
    sparsity : Channels
        How many channel groups to remove (single channels, heads, or explicit GQA groups).
    score : str
        Column score from ``prunekit.formulations.scores.COLUMN_SCORES``; "fasp" (default) is
        ||W_:,j||_1 ||Z_j||_2.  Group scores are sums over the group's columns.
    restore : bool
        Apply the least-squares restoration (True, FASP) or only zero the removed columns.
    """

    sparsity: Channels = None
    score: str = "fasp"
    restore: bool = True

    guarantee: ClassVar[Guarantee] = Guarantee.HEURISTIC
    paper: ClassVar[str] = "FASP arXiv 2501.09412"
    method_name: ClassVar[str] = "fasp"

    def validate(self) -> None:
        if not isinstance(self.sparsity, Channels):
            raise FormulationError(
                f"CoupledStructuredRemoval removes whole input channels and needs a Channels spec, got "
                f"{type(self.sparsity).__name__}. Fix: sparsity=Channels(ratio=0.3) (or group_size=head_dim); "
                f"for unstructured/N:M sparsity use MultipleRemoval or SparseGPTPruning."
            )
        if self.score not in COLUMN_SCORES:
            raise FormulationError(
                f"unknown column score {self.score!r}. Fix: use one of {sorted(COLUMN_SCORES)}."
            )
        if self.score in _NEEDS_MEAN and self.layer.input_mean is None:
            raise FormulationError(
                f"score {self.score!r} needs the input mean (a variance). Fix: build LayerData with "
                f"input_mean (GramAccumulator records it), or use score='fasp'."
            )
        if self.layer.has_error_correction:
            raise FormulationError(
                "CoupledStructuredRemoval restores against G = Z Z^T; error-corrected statistics "
                "(gram_star/cross) are not supported. Fix: build LayerData without inputs_star."
            )
        if not isinstance(self.restore, bool):
            raise FormulationError(f"restore must be a bool, got {self.restore!r}.")
        super().validate()

    def _form(self) -> ProblemForm:
        return self._base_form(is_mixed_integer=False, has_bilinear=False, is_convex=True, row_separable=False)

    def _extra_residuals(self, solution) -> Mapping[str, float]:
        """With restoration: stationarity of the damped least squares on the kept columns (0 at the optimum)."""
        if not self.restore:
            return {}
        return {"stationarity": restoration_stationarity(self.layer, solution.weights, solution.mask)}

    @classmethod
    def example(cls, rng) -> "CoupledStructuredRemoval":
        """Small random pair: n = 8 channels, single channels or groups of 2, restore on/off."""
        from ..verification.toy import CONDITIONINGS, random_layer

        n = 8
        layer = random_layer(rng, int(rng.integers(2, 7)), n, conditioning=CONDITIONINGS[int(rng.integers(0, 4))])
        group = int(rng.choice([1, 2]))
        spec = Channels(ratio=float(rng.choice([0.25, 0.5])), group_size=group)
        return cls(layer, spec, restore=bool(rng.integers(0, 4) > 0))
