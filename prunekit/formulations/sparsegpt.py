"""SparseGPT: one-shot pruning by a left-to-right OBS column sweep (methods.md §8.3; IST-DASLab/sparsegpt).

With ``H = G + lambda I`` (dead inputs: G_jj := 1 and W[:, j] := 0; ``lambda = percdamp * mean(diag G)``) and
``U`` the upper Cholesky factor of ``H^{-1} = U^T U``, columns i = 0..n-1 are visited in order; the masked
entries q of column i are removed with the OBS update restricted to the columns on the right:

.. math::

    e = (w_{:,i} - q) / U_{ii}, \\qquad W_{:, i:} \\mathrel{-}= e\\, U_{i, i:},

which is exact for the trailing problem because ``(H_{FF})^{-1} = U_{FF}^T U_{FF}`` for F = {i..n-1}
(fact 4).  Masks are chosen lazily from the *updated* weights with the score ``W_ij^2 / U_jj^2``:

* ``NM(N, M)``: at every column i with i % M == 0, prune the N lowest scores of columns i..i+M-1 in each row
  (``block_size`` must be a multiple of M; then the result does not depend on it, claim C16);
* ``Unstructured(scope="layer")`` (SparseGPT's natural spec; a bare ratio means this): at the start of each
  column block [i1, i2) of width ``block_size``, prune the lowest scores over **all rows x block columns**.
  prunekit prunes exactly ``floor(r m i2) - floor(r m i1)`` entries per block (the reference code's
  ``<= threshold`` may prune one more), so the layer count is exactly ``floor(r m n)``;
* ``Unstructured(scope="row")``: SparseGPT's per-block mask only meets a per-row count in aggregate, so
  prunekit honours the row spec by selecting **per row** within each block, ``floor(r i2) - floor(r i1)``
  lowest scores of that row (row-balanced blocks).  Every row then prunes exactly ``floor(r n)``.

Shapes: W (m x n), G/H/U (n x n).  ``Channels`` is not supported (SparseGPT prunes single weights).
Guarantee: HEURISTIC; for a fixed mask its error is >= that of MRP Solution M, with equality when every
pruned column precedes every kept column (claim C15).
Paper: Frantar & Alistarh, "SparseGPT: Massive Language Models Can Be Accurately Pruned in One-Shot", ICML 2023.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Optional

from ..errors import FormulationError
from .base import Formulation, Guarantee
from .form import ProblemForm
from .sparsity import NM, SparsitySpec, Unstructured, coerce_sparsity, require_sparsity


@dataclass(frozen=True, eq=False)
class SparseGPTPruning(Formulation):
    """SparseGPT's lazy-block column sweep.

    Parameters
    ----------
    layer : LayerData
    sparsity : SparsitySpec or float
        ``NM`` or ``Unstructured``; a bare ratio means ``Unstructured(ratio, scope="layer")``.
    block_size : int
        Lazy-batch width B (128 in the reference code); selects the unstructured mask blocks.
    percdamp : float, optional
        Relative damping; None = ``layer.damping``.
    """

    sparsity: SparsitySpec = None  # type: ignore[assignment]
    block_size: int = 128
    percdamp: Optional[float] = None

    guarantee: ClassVar[Guarantee] = Guarantee.HEURISTIC
    paper: ClassVar[str] = "Frantar & Alistarh, SparseGPT, ICML 2023, arXiv 2301.00774 (methods.md §8.3)"
    method_name: ClassVar[str] = "sparsegpt"
    structures: ClassVar[frozenset] = frozenset({"unstructured", "nm"})

    def __post_init__(self) -> None:
        object.__setattr__(self, "sparsity", coerce_sparsity(self.sparsity, "layer"))
        super().__post_init__()

    def validate(self) -> None:
        require_sparsity("SparseGPTPruning", self.sparsity)
        super().validate()
        if self.layer.has_error_correction:
            raise FormulationError(
                "SparseGPTPruning minimizes the plain objective 1/2 ||(W_hat - W) X||^2; this layer carries error-correction "
                "terms (gram_star/cross). Fix: build LayerData without inputs_star, or use a formulation that supports "
                "X* (e.g. L1Relaxation for FISTAPruner)."
            )
        if not isinstance(self.sparsity, (NM, Unstructured)):
            raise FormulationError(
                f"SparseGPT prunes individual weights; {self.sparsity.describe()} is not supported. "
                f"Fix: use Unstructured/NM, or FixedMaskRestoration / a structured formulation for channels."
            )
        if isinstance(self.block_size, bool) or not isinstance(self.block_size, int) or self.block_size < 1:
            raise FormulationError(f"block_size must be a positive int, got {self.block_size!r}.")
        if isinstance(self.sparsity, NM) and self.block_size % self.sparsity.m:
            raise FormulationError(
                f"block_size {self.block_size} must be a multiple of M = {self.sparsity.m} for N:M sparsity "
                f"(groups must not straddle blocks). Fix: e.g. block_size="
                f"{max(self.sparsity.m, 128 // self.sparsity.m * self.sparsity.m)}."
            )
        if self.percdamp is not None and not (isinstance(self.percdamp, (int, float)) and math.isfinite(self.percdamp)
                                              and self.percdamp >= 0):
            raise FormulationError(f"percdamp must be None or a finite number >= 0, got {self.percdamp!r}.")

    @property
    def relative_damping(self) -> float:
        return float(self.layer.damping if self.percdamp is None else self.percdamp)

    def _form(self) -> ProblemForm:
        return self._base_form(is_mixed_integer=True)

    @classmethod
    def example(cls, rng) -> "SparseGPTPruning":
        from ..verification.toy import CONDITIONINGS, random_layer

        m, n = int(rng.integers(2, 7)), int(rng.choice([4, 8, 12]))
        layer = random_layer(rng, m, n, conditioning=str(rng.choice(CONDITIONINGS)))
        kind = int(rng.integers(0, 4))
        spec = [Unstructured(0.5, scope="layer"), Unstructured(float(rng.uniform(0.2, 0.7))), NM(2, 4), NM(1, 4)][kind]
        block = int(rng.choice([4, 8, 128]))
        return cls(layer, spec, block_size=block)
