"""ADMMSplit: scaled ADMM for one module with a structured projection (StructPrune reconstruction).

.. warning::

   The update rules below are a **reconstruction [derived]** of the STRUPRUNE ADMM framework
   (methods.md §7.3); they are consistent with every source but not confirmed from the paper text.
   The projection score is a named option (``projection_score``) and every default is swappable.

Problem (one linear module, W0 = the dense weight, G = X X^T the (damped) Gram of its inputs)

.. math::

    \\min_{W, Z}\\; \\lVert W X - Y \\rVert_F^2 \\quad \\text{s.t.}\\; W = Z,\\; Z \\in \\mathcal{S},
    \\qquad Y = W_0 X,

with W, Z in R^{m x n} and S the set of matrices whose support obeys ``sparsity`` (Channels: k kept
columns shared by all rows; Unstructured; N:M).  Scaled ADMM with penalty rho:

.. math::

    W^{t+1} &= (2 Y X^T + \\rho (Z^t - U^t)) (2 X X^T + \\rho I)^{-1}
             = (2 W_0 G + \\rho (Z^t - U^t)) (2 G + \\rho I)^{-1} \\\\
    Z^{t+1} &= \\mathrm{Proj}_{\\mathcal S}(W^{t+1} + U^t) \\\\
    U^{t+1} &= U^t + W^{t+1} - Z^{t+1}

The Z-step keeps the units with the largest score of V = W + U: ``"frobenius"`` scores columns by
||V_{:,j}||_2^2 (per weight V_ij^2) -- the exact Euclidean projection; ``"wanda_l1"`` scores columns by
||V_{:,j}||_1 ||X_j||_2 (per weight |V_ij| ||X_j||_2), FASP/Wanda style.  ``rho`` is *relative*:
the absolute penalty is rho * mean(diag G), multiplied by ``rho_growth`` after every iteration (U is
rescaled by rho_old / rho_new, as scaled ADMM requires).  After ``iterations`` steps the support of Z is
the mask and the weights are restored on it in closed form (methods.md §1 fact 2).  Primal and dual
residuals ||W - Z||_F and rho ||Z - Z_prev||_F are reported in the solution.

G is the damped Gram ``layer.damped_gram()`` throughout, as in every prunekit solver.

Guarantee: HEURISTIC (ADMM on a non-convex set; feasible output, no optimality guarantee).
Source: StructPrune, arXiv 2510.03246 (§7.3 of methods.md, [derived]).
"""

from __future__ import annotations

from typing import ClassVar

import math
from dataclasses import dataclass
from typing import Mapping

from ..errors import FormulationError
from .base import Formulation, Guarantee, restoration_stationarity
from .form import ProblemForm
from .sparsity import NM, Channels, SparsitySpec, Unstructured

PROJECTION_SCORES = ("wanda_l1", "frobenius")


@dataclass(frozen=True, eq=False)
class ADMMSplit(Formulation):
    """Scaled ADMM splitting W = Z, Z in the sparsity set, for one module (heuristic, [derived]).

    Parameters
    ----------
    layer : LayerData
        Weight W0 (m, n) and Gram G (n, n).
    sparsity : SparsitySpec
        Channels (closed-form column projection), Unstructured or NM.
    rho : float
        Relative ADMM penalty: rho_abs = rho * mean(diag G) (> 0).
    iterations : int
        Number of ADMM iterations (>= 1).
    projection_score : {"wanda_l1", "frobenius"}
        Score of the Z-step projection (see the module docstring) [derived option].
    rho_growth : float
        Factor (>= 1) applied to rho after each iteration (1 = constant rho).
    """

    sparsity: SparsitySpec = None  # type: ignore[assignment]
    rho: float = 1.0
    iterations: int = 50
    projection_score: str = "wanda_l1"
    rho_growth: float = 1.0

    guarantee = Guarantee.HEURISTIC
    paper = "StructPrune (arXiv 2510.03246), ADMM splitting [derived, methods.md §7.3]"
    method_name: ClassVar[str] = "admm"
    structures: ClassVar[frozenset] = frozenset({"unstructured", "nm", "channels"})

    def validate(self) -> None:
        if self.sparsity is None:
            raise FormulationError("ADMMSplit needs sparsity= (Channels, Unstructured or NM).")
        super().validate()
        if not isinstance(self.sparsity, (Channels, Unstructured, NM)):
            raise FormulationError(f"ADMMSplit projects onto Channels, Unstructured or NM, got {self.sparsity!r}.")
        if not (isinstance(self.rho, (int, float)) and math.isfinite(self.rho) and self.rho > 0):
            raise FormulationError(f"rho must be a finite number > 0, got {self.rho!r}. Fix: rho=1.0 (relative to mean diag G).")
        if isinstance(self.iterations, bool) or not isinstance(self.iterations, int) or self.iterations < 1:
            raise FormulationError(f"iterations must be an int >= 1, got {self.iterations!r}.")
        if self.projection_score not in PROJECTION_SCORES:
            raise FormulationError(f"projection_score must be one of {PROJECTION_SCORES}, got {self.projection_score!r}.")
        if not (isinstance(self.rho_growth, (int, float)) and math.isfinite(self.rho_growth) and self.rho_growth >= 1):
            raise FormulationError(f"rho_growth must be >= 1, got {self.rho_growth!r}. Fix: 1.0 (constant) or e.g. 1.1.")

    def _form(self) -> ProblemForm:
        return self._base_form(is_mixed_integer=True, has_bilinear=False, is_convex=False,
                               row_separable=not self.sparsity.structured)

    def rho_abs(self) -> float:
        """The absolute initial penalty rho * mean(diag G) (1.0 * rho for an all-zero G)."""
        mean_diag = float(self.layer.gram.detach().double().diagonal().mean())
        return self.rho * (mean_diag if mean_diag > 0 else 1.0)

    def _extra_residuals(self, solution) -> Mapping[str, float]:
        out = {"stationarity": restoration_stationarity(self.layer, solution.weights, solution.mask)}
        for key in ("primal_residual", "dual_residual"):
            if key in solution.stats:
                out[key] = float(solution.stats[key])
        return out

    @classmethod
    def example(cls, rng) -> "ADMMSplit":
        from ..verification.toy import random_layer

        choice = int(rng.integers(0, 3))
        layer = random_layer(rng, 6, 8, conditioning=("well", "correlated", "ill")[int(rng.integers(0, 3))])
        spec = (Channels(ratio=0.25), Unstructured(0.5), NM(2, 4))[choice]
        return cls(layer, spec, rho=float(rng.choice([0.5, 1.0, 2.0])), iterations=int(rng.integers(5, 30)),
                   projection_score=str(rng.choice(PROJECTION_SCORES)), rho_growth=float(rng.choice([1.0, 1.1])))
