"""Fixed-mask restoration: the optimal weights for a given keep-mask (methods.md §1 fact 2, claim C1).

.. math::

    \\min_{\\hat W \\in \\mathbb{R}^{m \\times n}} \\; \\tfrac12 \\operatorname{tr}\\big((\\hat W - W)\\,
    \\hat G\\,(\\hat W - W)^T\\big) \\quad \\text{s.t.} \\quad \\hat W_{ij} = 0 \\;\\; \\text{for } M_{ij} = 0,
    \\qquad \\hat G = G + \\lambda I,

with W (m x n), G = X X^T (n x n), the keep-mask M (m x n, True = kept) and the absolute damping
``lambda = layer.damping * mean(diag G)`` (``layer.damped_gram``; dead inputs get G_jj := 1).  With
``layer.damping = 0`` this is exactly ``1/2 ||(W_hat - W) X||_F^2``; with damping it is the ridge-regularised
problem whose KKT residual ``restoration_stationarity`` certifies.

Rows separate (fact 1), so for row i with kept set S_i and pruned set P_i

.. math::

    \\hat w_{i,S} = w_{i,S} + w_{i,P}\\, \\hat G_{PS} \\hat G_{SS}^{-1}, \\qquad \\hat w_{i,P} = 0,

equivalently (Lagrange/OBS form, fact 3) ``dw = -w_P (H^{-1}_{PP})^{-1} H^{-1}_{P,:}``.  When all rows share
the kept set S (structured case) ``W_S = Y X_S^T (X_S X_S^T)^{-1}``.

Guarantee: EXACT -- the unique optimum of a strictly convex QP (G_SS + lambda I positive definite).
Paper: the restoration step of FASP (arXiv 2501.09412) and SPAP (arXiv 2505.03373); Solution M of MRP
(arXiv 2410.15567) for the same zero set.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Mapping

import torch

from ..errors import FormulationError, ShapeError
from .base import Formulation, Guarantee, restoration_stationarity
from .form import ProblemForm


@dataclass(frozen=True, eq=False)
class FixedMaskRestoration(Formulation):
    """Least-squares restoration of W on a fixed keep-mask.

    Parameters
    ----------
    layer : LayerData
        W (m x n) and G (n x n).
    mask : Tensor (m, n), bool
        Keep-mask (True = kept).  Per-row kept sets are allowed; a mask whose rows are all equal is the
        structured (shared kept columns) special case, which solvers detect and solve with one
        |S| x |S| factorization.
    """

    mask: torch.Tensor = None  # type: ignore[assignment]

    guarantee: ClassVar[Guarantee] = Guarantee.EXACT
    paper: ClassVar[str] = "FASP arXiv 2501.09412 / SPAP arXiv 2505.03373 (restoration); methods.md §1 fact 2"

    def __post_init__(self) -> None:
        mask = self.mask
        if isinstance(mask, torch.Tensor) and mask.dtype != torch.bool:
            if mask.is_floating_point() and not bool(((mask == 0) | (mask == 1)).all()):
                raise ShapeError("mask must be boolean or 0/1 valued (True/1 = kept).")
            object.__setattr__(self, "mask", mask.detach() != 0)
        super().__post_init__()

    def validate(self) -> None:
        super().validate()
        if self.layer.has_error_correction:
            raise FormulationError(
                "FixedMaskRestoration minimizes the plain objective 1/2 ||(W_hat - W) X||^2; this layer carries error-correction "
                "terms (gram_star/cross). Fix: build LayerData without inputs_star, or use a formulation that supports "
                "X* (e.g. L1Relaxation for FISTAPruner)."
            )
        if not isinstance(self.mask, torch.Tensor):
            raise ShapeError(
                f"mask must be a boolean tensor of shape {self.layer.shape}, got {type(self.mask).__name__}. "
                f"Fix: pass the keep-mask, e.g. spec.project(scores)."
            )
        if tuple(self.mask.shape) != self.layer.shape:
            raise ShapeError(
                f"mask must have the weight's shape {self.layer.shape}, got {tuple(self.mask.shape)}. "
                f"Fix: build an (out_features x in_features) keep-mask; for kept columns S use "
                f"mask = zeros(m, n, bool); mask[:, S] = True."
            )

    @property
    def shared_columns(self) -> bool:
        """True when all rows share one kept set (structured restoration)."""
        return bool((self.mask == self.mask[:1]).all())

    def _form(self) -> ProblemForm:
        m, n = self.layer.shape
        return ProblemForm(is_mixed_integer=False, has_bilinear=False, is_convex=True, row_separable=True,
                           structured=self.shared_columns, num_weights=m * n, in_features=n)

    def _extra_residuals(self, solution) -> Mapping[str, float]:
        mask = self.mask.to(solution.mask.device)
        return {
            "stationarity": restoration_stationarity(self.layer, solution.weights, mask),
            "mask_mismatch": float((solution.mask.bool() != mask).sum()),
        }

    @classmethod
    def example(cls, rng) -> "FixedMaskRestoration":
        from ..verification.toy import CONDITIONINGS, random_layer

        m = int(rng.integers(2, 7))
        n = int(rng.choice([4, 6, 8, 12]))
        layer = random_layer(rng, m, n, conditioning=str(rng.choice(CONDITIONINGS)))
        kind = int(rng.integers(0, 3))
        if kind == 0:  # shared kept columns (structured)
            keep = torch.from_numpy(rng.permutation(n) < max(1, n // 2))
            mask = keep.unsqueeze(0).expand(m, n).clone()
        elif kind == 1:  # per-row kept sets of equal size
            mask = torch.from_numpy(rng.random((m, n)).argsort(axis=1) < n - n // 2)
        else:  # per-row kept sets of varying size (some rows fully kept or fully pruned)
            mask = torch.from_numpy(rng.random((m, n)) < rng.uniform(0.2, 0.9))
        return cls(layer, mask)
