"""MaskedReconstructionMIP: the pruning problem itself (mask and weights chosen jointly).

.. math::

    \\min_{\\hat W \\in \\mathbb{R}^{m \\times n},\\; M \\in \\{0,1\\}^{m \\times n}}
        \\tfrac12 \\lVert \\hat W X - W X \\rVert_F^2
    \\quad \\text{s.t.} \\quad \\hat W = M \\odot \\hat W, \\; M \\in \\mathcal{M}(\\text{spec}),

with W (m x n) the dense weight, X (n x N) the calibration inputs (only G = X X^T (n x n) enters) and
:math:`\\mathcal{M}` the masks allowed by the sparsity spec (per-row / per-layer count, N:M).  For a
:class:`~prunekit.formulations.sparsity.Channels` spec it is SPAP's model (P) (methods.md §3.2): with
:math:`s \\in \\{0,1\\}^n` (s_j = 1 <=> column j pruned; per group when groups are given)

.. math::

    \\min_{\\hat W, s} \\tfrac12 \\lVert \\hat W X - W X \\rVert_F^2
    \\quad \\text{s.t.} \\quad \\hat W \\operatorname{diag}(s) = 0, \\; \\mathbf 1^T s = k, \\; s \\in \\{0,1\\}^n.

The constraint couples the binary and the continuous variables (bilinear), so the problem is a
mixed-integer program.  Guarantee: EXACT (it *is* the problem every heuristic approximates).  Once the
mask is fixed, the weights follow by least squares (C1), so exact solvers enumerate masks
(``backend="bruteforce"``, toy sizes) or branch and bound (``backend="cvxpy"``, with a MIQP solver).

Papers: SPAP (arXiv 2505.03373) for the channel form; SparseGPT / MRP state the same objective.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Mapping


from ..errors import FormulationError
from .base import Formulation, Guarantee, restoration_stationarity
from .form import ProblemForm
from .sparsity import NM, Channels, SparsitySpec, Unstructured

_ADVICE = (
    "torch cannot solve this mixed-integer problem exactly. Fix: backend='bruteforce' (toy layers, "
    "n <= 16) or backend='cvxpy' (needs a mixed-integer QP solver such as SCIP/ECOS_BB/GUROBI/MOSEK); "
    "at scale, solve a heuristic or relaxed formulation instead (MultipleRemoval, SparseGPTPruning, "
    "CoupledStructuredRemoval, FLAPRemoval, or SPAP's PenaltyRelaxation for channels)."
)


@dataclass(frozen=True, eq=False)
class MaskedReconstructionMIP(Formulation):
    """Exact masked reconstruction: choose the mask and the weights (see the module docstring).

    Parameters
    ----------
    layer : LayerData
        W (m, n) and G (n, n) (error-corrected objective when ``gram_star``/``cross`` are set).
    sparsity : Unstructured | NM | Channels
        The feasible masks.
    """

    sparsity: SparsitySpec = None

    guarantee: ClassVar[Guarantee] = Guarantee.EXACT
    paper: ClassVar[str] = "SPAP arXiv 2505.03373 (channel model (P)); SparseGPT/MRP objective"
    advice: ClassVar[str] = _ADVICE

    def validate(self) -> None:
        if self.sparsity is None:
            raise FormulationError(
                "MaskedReconstructionMIP needs a sparsity spec. Fix: pass sparsity=Unstructured(0.5), "
                "NM(2, 4) or Channels(ratio=0.25). Note: " + _ADVICE
            )
        if not isinstance(self.sparsity, (Unstructured, NM, Channels)):
            raise FormulationError(
                f"MaskedReconstructionMIP supports Unstructured, NM and Channels specs, got "
                f"{type(self.sparsity).__name__}. Fix: state the mask set with one of those specs. Note: " + _ADVICE
            )
        super().validate()

    @property
    def is_channel_model(self) -> bool:
        """True for SPAP's model (P): a Channels spec (binary s over column groups)."""
        return isinstance(self.sparsity, Channels)

    def _form(self) -> ProblemForm:
        row_sep = isinstance(self.sparsity, NM) or (
            isinstance(self.sparsity, Unstructured) and self.sparsity.scope == "row"
        )
        return self._base_form(is_mixed_integer=True, has_bilinear=True, is_convex=False, row_separable=row_sep)

    def _extra_residuals(self, solution) -> Mapping[str, float]:
        """Stationarity of the weights for the solution's own mask (an optimum is restored, C1).

        ``stationarity`` uses the damped Gram (``restoration_stationarity``), so an exact (undamped) optimum
        shows a residual of order ``layer.damping`` there; ``stationarity_undamped`` is the exact certificate
        ``max |(W_hat A - B)_kept| / max |B|`` with A = G, B = W G (A = G*, B = C with error correction).
        """
        out = {"stationarity": restoration_stationarity(self.layer, solution.weights, solution.mask)}
        dev = solution.weights.device
        if self.layer.has_error_correction:
            a = self.layer.gram_star.detach().double().to(dev)
            b = self.layer.cross.detach().double().to(dev)
        else:
            a = self.layer.gram.detach().double().to(dev)
            b = self.layer.weight.detach().double().to(dev) @ a
        grad = solution.weights.detach().double() @ a - b
        kept = grad[solution.mask.bool()]
        scale = float(b.abs().max()) or 1.0
        out["stationarity_undamped"] = float(kept.abs().max()) / scale if kept.numel() else 0.0
        return out

    @classmethod
    def example(cls, rng) -> "MaskedReconstructionMIP":
        """A small random instance: channel, per-row, per-layer or 2:4 sparsity across seeds (n <= 8)."""
        from ..verification.toy import CONDITIONINGS, random_layer

        kind = int(rng.integers(0, 4))
        n = 8
        m = int(rng.integers(2, 5))
        cond = CONDITIONINGS[int(rng.integers(0, len(CONDITIONINGS)))]
        layer = random_layer(rng, m, n, conditioning=cond)
        spec = (
            Channels(count=int(rng.integers(1, 5))),
            Unstructured(0.5, scope="row"),
            Unstructured(0.5, scope="layer"),
            NM(2, 4),
        )[kind]
        return cls(layer, spec)
