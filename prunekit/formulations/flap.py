"""FLAPRemoval: fluctuation-based channel removal with bias compensation (methods.md §8.4, C17).

For a layer W (m x n) with inputs X (n x N), token mean mu = X 1 / N (n,) and per-channel variance
Var_t(x_j) = G_jj / N - mu_j^2, FLAP scores each input channel by

.. math::

    \\text{WIFV: } S_j = \\operatorname{Var}_t(x_j)\\, \\lVert W_{:,j} \\rVert_2^2, \\quad
    \\text{IFV: } S_j = \\operatorname{Var}_t(x_j), \\quad
    \\text{WIFN: } S_j = \\tfrac1m \\textstyle\\sum_i |W_{ij}| \\, \\lVert X_j \\rVert_2,

removes the lowest-scoring groups P (no weight update) and compensates with the bias

.. math::

    b_{new} = b + W_{:,P} \\, \\mu_P \\quad (m,),

the least-squares-optimal intercept; the remaining error is
:math:`\\tfrac12 N \\operatorname{tr}(W_P \\operatorname{Cov}(X_P) W_P^T)` (C17; for one channel 1/2 N x WIFV).
The objective is the bias-aware reconstruction error ``LayerData.reconstruction_error(W_hat, b_new)``.
Guarantee: HEURISTIC.  Group scores: sum over the group ("sum"), or FLAP's attention rule "squared_mean"
(square the channel metric, average over the head).  The per-layer standardization and the global AL-AM
allocation of FLAP act across layers and are not part of this layer problem.

Paper: FLAP (An et al., AAAI 2024), code CASIA-IVA-Lab/FLAP ``lib/prune.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Mapping

import torch

from ..errors import FormulationError
from .base import Formulation, Guarantee
from .form import ProblemForm
from .sparsity import Channels

METRICS = ("wifv", "ifv", "wifn")
GROUP_REDUCTIONS = ("sum", "squared_mean")


@dataclass(frozen=True, eq=False)
class FLAPRemoval(Formulation):
    """FLAP's structured removal of input channels with bias compensation (see the module docstring).

    Parameters
    ----------
    layer : LayerData
        W (m, n), G, ``num_tokens`` and ``input_mean`` (needed for WIFV/IFV and for the compensation).
    sparsity : Channels
        Channel groups to remove.
    metric : {"wifv", "ifv", "wifn"}
        The fluctuation metric.
    bias_compensation : bool
        Add W_{:,P} mu_P to the bias (default True).
    group_reduction : {"sum", "squared_mean"}
        How channel scores combine into a group score.
    """

    sparsity: Channels = None
    metric: str = "wifv"
    bias_compensation: bool = True
    group_reduction: str = "sum"

    guarantee: ClassVar[Guarantee] = Guarantee.HEURISTIC
    paper: ClassVar[str] = "FLAP (An et al., AAAI 2024), CASIA-IVA-Lab/FLAP"
    method_name: ClassVar[str] = "flap"
    column_score: ClassVar[str] = "wifv"
    statistics: ClassVar[frozenset] = frozenset({"norms", "mean"})
    calibration_mode: ClassVar[str] = "dense"
    """FLAP's own protocol (CASIA-IVA-Lab/FLAP ``prune_flap``): every layer's statistics come from the dense model
    (the original outputs feed the next layer), one forward per block."""

    def validate(self) -> None:
        if not isinstance(self.sparsity, Channels):
            raise FormulationError(
                f"FLAPRemoval removes whole input channels and needs a Channels spec, got "
                f"{type(self.sparsity).__name__}. Fix: sparsity=Channels(ratio=0.2) (group_size=head_dim for heads)."
            )
        if self.metric not in METRICS:
            raise FormulationError(f"unknown FLAP metric {self.metric!r}. Fix: use one of {list(METRICS)}.")
        if self.group_reduction not in GROUP_REDUCTIONS:
            raise FormulationError(
                f"unknown group_reduction {self.group_reduction!r}. Fix: use one of {list(GROUP_REDUCTIONS)}."
            )
        if self.layer.has_error_correction:
            raise FormulationError(
                "FLAPRemoval compares outputs with a bias change, which error-corrected statistics "
                "(gram_star/cross) do not support. Fix: build LayerData without inputs_star."
            )
        needs = []
        if self.metric in ("wifv", "ifv"):
            needs.append(f"metric {self.metric!r} (a variance)")
        if self.bias_compensation:
            needs.append("bias_compensation (b_new = b + W_P mu_P)")
        if needs and self.layer.input_mean is None:
            raise FormulationError(
                f"FLAPRemoval needs layer.input_mean for {' and '.join(needs)}, but the LayerData has none. "
                f"Fix: build it with GramAccumulator(...).layer_data(W) or LayerData.from_inputs (both record "
                f"the mean), or use metric='wifn' with bias_compensation=False."
            )
        super().validate()

    def _form(self) -> ProblemForm:
        return self._base_form(is_mixed_integer=False, has_bilinear=False, is_convex=True, row_separable=False)

    def compensated_bias(self, keep_columns: torch.Tensor) -> torch.Tensor:
        """b + W_{:,P} mu_P in float64 (cpu) for the boolean kept-column vector ``keep_columns`` (n,)."""
        w = self.layer.weight.detach().double().cpu()
        mu = self.layer.input_mean.detach().double().cpu()
        pruned = ~keep_columns.bool().cpu()
        b0 = self.layer.bias.detach().double().cpu() if self.layer.bias is not None else torch.zeros(w.shape[0], dtype=torch.float64)
        return b0 + w[:, pruned] @ mu[pruned]

    def _extra_residuals(self, solution) -> Mapping[str, float]:
        """``bias_stationarity``: |d F / d b| / scale at the returned bias (0 for the optimal intercept)."""
        if not self.bias_compensation or solution.bias is None:
            return {}
        w = self.layer.weight.detach().double().cpu()
        d = solution.weights.detach().double().cpu() - w
        mu = self.layer.input_mean.detach().double().cpu()
        b0 = self.layer.bias.detach().double().cpu() if self.layer.bias is not None else torch.zeros(w.shape[0], dtype=torch.float64)
        db = solution.bias.detach().double().cpu() - b0
        grad = db + d @ mu  # dF/db divided by N
        scale = float((w @ mu).abs().max()) or 1.0
        return {"bias_stationarity": float(grad.abs().max()) / scale}

    @classmethod
    def example(cls, rng) -> "FLAPRemoval":
        """Small random layer with shifted inputs (a nonzero mean) and a bias; metrics vary across seeds."""
        from ..verification.toy import CONDITIONINGS, random_layer

        n = 8
        layer = random_layer(rng, int(rng.integers(2, 7)), n, conditioning=CONDITIONINGS[int(rng.integers(0, 4))],
                             with_bias=True, mean_shift=1.0)
        group = int(rng.choice([1, 2]))
        return cls(layer, Channels(ratio=float(rng.choice([0.25, 0.5])), group_size=group),
                   metric=METRICS[int(rng.integers(0, 3))], bias_compensation=bool(rng.integers(0, 4) > 0),
                   group_reduction=GROUP_REDUCTIONS[int(rng.integers(0, 2))] if group > 1 else "sum")
