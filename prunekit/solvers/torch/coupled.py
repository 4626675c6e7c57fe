"""Torch solver for CoupledStructuredRemoval (FASP, methods.md §4.2): score, select groups, restore.

One code path for CPU and CUDA.  Scores are computed in float64 (so the selection is the same for every
compute dtype); the restoration ``W_S = W_S + W_P G_PS (G_SS + lambda I)^{-1} = W Gd_{:,S} (Gd_SS)^{-1}``
(``closed_form.restore_columns``) runs in ``options.dtype`` on ``options.device`` with one damped Cholesky
of the |S| x |S| block (escalating damping, reported in ``stats["damping_used"]``).  Weights come back in the layer weight's dtype and device.
"""

from __future__ import annotations

import torch

from ...formulations.coupled import CoupledStructuredRemoval
from ...formulations.coupled_refit import RefitCoupledRemoval
from ...formulations.scores import COLUMN_SCORES
from ..base import Solver
from ..registry import register_solver
from ..solution import Solution
from .closed_form import restore_columns


def select_columns(formulation: CoupledStructuredRemoval) -> tuple[torch.Tensor, torch.Tensor]:
    """(keep (n,) bool, column scores (n,) float64) of FASP's selection for ``formulation``."""
    layer, spec = formulation.layer, formulation.sparsity
    col = COLUMN_SCORES[formulation.score](layer)
    keep = spec.keep_columns_from_group_scores(spec.group_scores(col), layer.in_features)
    return keep, col


@register_solver(CoupledStructuredRemoval, backend="torch")
class TorchCoupledRemoval(Solver):
    """FASP: column scores, top groups kept, damped least-squares restoration (closed form)."""

    def run(self, formulation: CoupledStructuredRemoval, options) -> Solution:
        layer = formulation.layer
        w0 = layer.weight
        device = options.resolve_device(w0)
        dtype = options.torch_dtype
        keep, col = select_columns(formulation)
        keep = keep.to(device)
        if formulation.restore:
            w_hat, damping = restore_columns(layer, keep, dtype=dtype, device=device,
                                             max_tries=options.max_damping_tries)
        else:
            w_hat = layer.weight.detach().to(device=device, dtype=dtype) * keep.to(dtype).unsqueeze(0)
            damping = 0.0
        mask = keep.unsqueeze(0).expand(layer.out_features, -1).clone()
        w_hat = torch.where(mask, w_hat, torch.zeros((), dtype=dtype, device=device))
        return Solution(
            weights=w_hat.to(device=w0.device, dtype=w0.dtype),
            mask=mask.to(w0.device),
            status="solved",
            kept_columns=torch.nonzero(keep).flatten().to(w0.device),
            stats={"damping_used": damping, "kept": int(keep.sum())},
            extras={"column_scores": col.detach().cpu()},
        )


@register_solver(RefitCoupledRemoval, backend="torch")
class TorchRefitCoupledRemoval(TorchCoupledRemoval):
    """The same solver for ``fasp_refit`` (its layer problem is FASP's; the registry does not follow inheritance)."""
