"""SciPy reference twin of the FASP solver (CoupledStructuredRemoval), float64 on CPU.

Independent of the torch path: scores from numpy, and the damped restoration as an ordinary least-squares
problem.  With ``Gd = G + lambda I = R R^T`` (Cholesky), ``1/2 tr((W' - W) Gd (W' - W)^T) = 1/2 ||W' R - W R||^2``
and W' vanishes off S, so ``W'_S = lstsq(R_S^T, (W R)^T)^T`` (``scipy.linalg.lstsq``).
"""

from __future__ import annotations

import numpy as np
import torch

from ...formulations.coupled import CoupledStructuredRemoval
from ...formulations.coupled_refit import RefitCoupledRemoval
from ..base import Solver
from ..options import ReferenceOptions
from ..registry import register_solver
from ..solution import Solution
from ._numpy_scores import column_score, damped_gram, keep_columns, layer_arrays


@register_solver(CoupledStructuredRemoval, backend="scipy")
class ScipyCoupledRemoval(Solver):
    """FASP selection + scipy.linalg.lstsq restoration (reference twin of the torch solver)."""

    devices = ("cpu",)
    options_type = ReferenceOptions
    max_in_features = 4096

    def run(self, formulation, options) -> Solution:
        import scipy.linalg

        layer, spec = formulation.layer, formulation.sparsity
        w, g, mu, n_tok = layer_arrays(layer)
        m, n = w.shape
        col = column_score(formulation.score, w, g, mu, n_tok)
        index = spec.group_index(n)
        keep = keep_columns(spec, np.array([col[gr].sum() for gr in index]), n)
        w_hat = np.where(keep[None, :], w, 0.0)
        if formulation.restore:
            gd = damped_gram(layer, g)
            r = scipy.linalg.cholesky(gd, lower=True)
            w_hat = np.zeros_like(w)
            w_hat[:, keep] = scipy.linalg.lstsq(r[keep].T, (w @ r).T)[0].T
        dev, dt = layer.weight.device, layer.weight.dtype
        mask = np.broadcast_to(keep, (m, n)).copy()
        return Solution(
            weights=torch.from_numpy(w_hat).to(device=dev, dtype=dt),
            mask=torch.from_numpy(mask).to(dev),
            status="solved",
            kept_columns=torch.from_numpy(np.nonzero(keep)[0]).to(dev),
            stats={"damping_used": layer.damping_value()},
            extras={"column_scores": torch.from_numpy(col)},
        )


@register_solver(RefitCoupledRemoval, backend="scipy")
class ScipyRefitCoupledRemoval(ScipyCoupledRemoval):
    """The reference twin for ``fasp_refit`` (FASP's layer problem)."""
