"""Torch solver for FLAPRemoval (methods.md §8.4): fluctuation metric, group selection, bias compensation.

The metric is computed in float64 from the layer statistics; the compensated bias ``b + W_{:,P} mu_P``
in ``options.dtype`` on ``options.device``.  No weight update (no factorization: ``damping_used`` = 0).
Weights and bias come back in the layer weight's dtype and device.
"""

from __future__ import annotations

import torch

from ...formulations.flap import FLAPRemoval
from ...formulations.scores import COLUMN_SCORES
from ..base import Solver
from ..registry import register_solver
from ..solution import Solution


def flap_group_scores(formulation: FLAPRemoval) -> tuple[torch.Tensor, torch.Tensor]:
    """(group scores, column scores), float64, for the formulation's metric and group reduction."""
    layer, spec = formulation.layer, formulation.sparsity
    col = COLUMN_SCORES[formulation.metric](layer)
    if formulation.group_reduction == "squared_mean":
        index = spec.group_index(layer.in_features)
        groups = torch.stack([(col[g] ** 2).mean() for g in index])
    else:
        groups = spec.group_scores(col)
    return groups, col


@register_solver(FLAPRemoval, backend="torch")
class TorchFLAP(Solver):
    """FLAP: keep the groups with the largest fluctuation metric; compensate the bias with the input mean."""

    def run(self, formulation: FLAPRemoval, options) -> Solution:
        layer = formulation.layer
        w0 = layer.weight
        device = options.resolve_device(w0)
        dtype = options.torch_dtype
        groups, col = flap_group_scores(formulation)
        keep = formulation.sparsity.keep_columns_from_group_scores(groups, layer.in_features).to(device)
        w = w0.detach().to(device=device, dtype=dtype)
        w_hat = w * keep.to(dtype).unsqueeze(0)
        bias = None
        if formulation.bias_compensation:
            mu = layer.input_mean.detach().to(device=device, dtype=dtype)
            b0 = (layer.bias.detach().to(device=device, dtype=dtype) if layer.bias is not None
                  else torch.zeros(layer.out_features, dtype=dtype, device=device))
            bias = (b0 + w[:, ~keep] @ mu[~keep]).to(device=w0.device, dtype=w0.dtype)
        mask = keep.unsqueeze(0).expand(layer.out_features, -1).clone()
        return Solution(
            weights=w_hat.to(device=w0.device, dtype=w0.dtype),
            mask=mask.to(w0.device),
            status="solved",
            bias=bias,
            kept_columns=torch.nonzero(keep).flatten().to(w0.device),
            stats={"damping_used": 0.0, "kept": int(keep.sum())},
            extras={"column_scores": col.detach().cpu(), "group_scores": groups.detach().cpu()},
        )
