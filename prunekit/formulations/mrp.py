"""MRP: the multiple-removal problem of "Pruning Foundation Models for High Accuracy without Retraining".

For one row w (1 x n) and its pruned set P (|P| = q), with the Hessian ``H = 2 G + gamma I`` (methods.md §6.2):

.. math::

    \\min_{\\delta w \\in \\mathbb{R}^{1 \\times n}} \\tfrac12\\, \\delta w\\, H\\, \\delta w^T
    \\quad \\text{s.t.} \\quad (w + \\delta w)\\, E_P = 0,

    \\text{Solution M:}\\quad \\delta w^* = -w_P (H^{-1}_{PP})^{-1} H^{-1}_{P,:}, \\qquad
    L^*(P) = \\tfrac12 w_P (H^{-1}_{PP})^{-1} w_P^T = \\tfrac12 w_P (H/H_{SS}) w_P^T,

    \\text{Solution S:}\\quad \\delta w_S = -\\sum_{p \\in P} \\frac{w_p}{[H^{-1}]_{pp}} H^{-1}_{p,:}
    \\;\\text{ then } w_P := 0, \\qquad L_S(P) = \\sum_{p\\in P} \\frac{w_p^2}{2 [H^{-1}]_{pp}}.

Shapes: W (m x n), G = X X^T and H (n x n); each of the m rows has its own P (unstructured/N:M) or all rows
share it (``Channels``).  **Damping:** prunekit uses ``gamma = 2 lambda`` with ``lambda = layer.damping *
mean(diag G)``, i.e. ``H = 2 (G + lambda I)`` = twice ``layer.damped_gram()``.  Solution M and S and the
Solution-S mask are invariant to the factor 2, so Solution M equals the damped fixed-mask restoration
(:class:`~prunekit.formulations.restoration.FixedMaskRestoration`) on the same mask, and ``L*(P)`` in H
units is twice the damped objective ``1/2 ||dW X||^2 + lambda/2 ||dW||^2``.

Options (problem-defining hyperparameters):

* ``mask_score="solution_s"``: keep the highest OBS saliencies ``w_ij^2 / [H^{-1}]_jj`` projected onto the
  spec; ``"exact_groups"`` (N:M only): in every row and M-group, prune the pattern among the C(M, N) candidates
  with the smallest ``L*(P)`` (each group scored alone, with all other weights free to compensate).
* ``update="solution_m"`` (exact for the chosen mask) or ``"solution_s"`` (summed single-removal updates).
* ``block_size=None`` (full width) or B: the blocked Solution M of §6.2 (joint MRP per column block over the
  trailing columns F with ``(H_FF)^{-1} = U_FF^T U_FF``, then freeze the block).  **Non-dominating**: with
  the same mask it is not always better than SparseGPT (claim C15); only full width is the exact optimum.

Guarantee: HEURISTIC for the masked-reconstruction problem (the mask is chosen by a score); for the chosen
mask ``update="solution_m"`` with ``block_size=None`` is the exact optimum (claims C12-C14).
Paper: Zhao et al., arXiv 2410.15567 (closed forms Eq. 11-14, via a third-party reimplementation).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Mapping, Optional

from ..errors import FormulationError
from .base import Formulation, Guarantee, restoration_stationarity
from .form import ProblemForm
from .sparsity import NM, SparsitySpec, Unstructured

MASK_SCORES = ("solution_s", "exact_groups")
UPDATES = ("solution_m", "solution_s")
MAX_PATTERNS = 5000


@dataclass(frozen=True, eq=False)
class MultipleRemoval(Formulation):
    """Multiple-removal pruning (MRP): mask by OBS/exact-group scores, compensate with Solution M or S.

    Parameters
    ----------
    layer : LayerData
    sparsity : SparsitySpec
        ``Unstructured``, ``NM`` or ``Channels`` (shared pruned columns).
    mask_score : {"solution_s", "exact_groups"}
    update : {"solution_m", "solution_s"}
    block_size : int, optional
        None = full-width Solution M; an int selects the blocked (non-dominating) variant.
    """

    sparsity: SparsitySpec = None  # type: ignore[assignment]
    mask_score: str = "solution_s"
    update: str = "solution_m"
    block_size: Optional[int] = None

    guarantee: ClassVar[Guarantee] = Guarantee.HEURISTIC
    paper: ClassVar[str] = "Zhao et al., Pruning Foundation Models for High Accuracy without Retraining, arXiv 2410.15567"
    method_name: ClassVar[str] = "mrp"
    structures: ClassVar[frozenset] = frozenset({"unstructured", "nm"})

    def validate(self) -> None:
        if self.sparsity is None:
            raise FormulationError("MultipleRemoval needs a sparsity spec. Fix: e.g. sparsity=NM(2, 4) or Unstructured(0.5).")
        super().validate()
        if self.layer.has_error_correction:
            raise FormulationError(
                "MultipleRemoval minimizes the plain objective 1/2 ||(W_hat - W) X||^2; this layer carries error-correction "
                "terms (gram_star/cross). Fix: build LayerData without inputs_star, or use a formulation that supports "
                "X* (e.g. L1Relaxation for FISTAPruner)."
            )
        if self.mask_score not in MASK_SCORES:
            raise FormulationError(f"mask_score must be one of {MASK_SCORES}, got {self.mask_score!r}.")
        if self.update not in UPDATES:
            raise FormulationError(f"update must be one of {UPDATES}, got {self.update!r}.")
        if self.mask_score == "exact_groups":
            if not isinstance(self.sparsity, NM):
                raise FormulationError(
                    f"mask_score='exact_groups' scores all C(M, N) patterns of each N:M group and needs an NM "
                    f"spec, got {self.sparsity.describe()}. Fix: use sparsity=NM(2, 4), or "
                    f"mask_score='solution_s' for {type(self.sparsity).__name__} sparsity."
                )
            patterns = math.comb(self.sparsity.m, self.sparsity.n)
            if patterns > MAX_PATTERNS:
                raise FormulationError(
                    f"mask_score='exact_groups' would score C({self.sparsity.m}, {self.sparsity.n}) = {patterns} "
                    f"patterns per group (limit {MAX_PATTERNS}). Fix: use mask_score='solution_s'."
                )
        if self.block_size is not None:
            if isinstance(self.block_size, bool) or not isinstance(self.block_size, int) or self.block_size < 1:
                raise FormulationError(f"block_size must be None or a positive int, got {self.block_size!r}.")
            if self.update != "solution_m":
                raise FormulationError(
                    "block_size selects the blocked Solution M variant, but update='solution_s'. "
                    "Fix: use update='solution_m' with block_size, or block_size=None with update='solution_s'."
                )

    @property
    def exact_for_mask(self) -> bool:
        """True when the update is the exact optimum for the chosen mask (full-width Solution M)."""
        return self.update == "solution_m" and self.block_size is None

    def _form(self) -> ProblemForm:
        return self._base_form(is_mixed_integer=True, has_bilinear=False, is_convex=False, row_separable=True)

    def _extra_residuals(self, solution) -> Mapping[str, float]:
        if not self.exact_for_mask:
            return {}
        return {"stationarity": restoration_stationarity(self.layer, solution.weights, solution.mask)}

    @classmethod
    def example(cls, rng) -> "MultipleRemoval":
        from ..verification.toy import CONDITIONINGS, random_layer

        m = int(rng.integers(2, 7))
        n = int(rng.choice([4, 8, 12]))
        layer = random_layer(rng, m, n, conditioning=str(rng.choice(CONDITIONINGS)))
        kind = int(rng.integers(0, 4))
        spec = [Unstructured(0.5), Unstructured(float(rng.uniform(0.2, 0.7)), scope="layer"), NM(2, 4), NM(1, 4)][kind]
        mask_score = "exact_groups" if isinstance(spec, NM) and rng.random() < 0.5 else "solution_s"
        update = str(rng.choice(UPDATES))
        block_size = int(rng.choice([2, 4])) if update == "solution_m" and rng.random() < 0.3 else None
        return cls(layer, spec, mask_score=mask_score, update=update, block_size=block_size)
