"""SciPy/numpy reference twin of the FLAP solver (FLAPRemoval), float64 on CPU.

Independent of the torch path: the metric from numpy, and the compensated bias as the least-squares
intercept, without the closed form ``W_P mu_P``: with the augmented Gram of the inputs ``[x; 1]``,
``G_aug = [[G, N mu], [N mu^T, N]] = R R^T`` (eigen-factor), the bias change db minimizes
``1/2 ||[W' - W, db] R||_F^2 = 1/2 sum_t ||(W' - W) x_t + db||^2``, i.e.
``db = lstsq(R_last^T, -((W' - W) R_top)^T)`` (``scipy.linalg.lstsq``).
"""

from __future__ import annotations

import numpy as np
import torch

from ...formulations.flap import FLAPRemoval
from ..base import Solver
from ..options import ReferenceOptions
from ..registry import register_solver
from ..solution import Solution
from ._numpy_scores import column_score, keep_columns, layer_arrays


@register_solver(FLAPRemoval, backend="scipy")
class ScipyFLAP(Solver):
    """FLAP metric, selection and bias compensation in numpy/scipy (reference twin of the torch solver)."""

    devices = ("cpu",)
    options_type = ReferenceOptions
    max_in_features = 4096

    def run(self, formulation, options) -> Solution:
        import scipy.linalg

        layer, spec = formulation.layer, formulation.sparsity
        w, g, mu, n_tok = layer_arrays(layer)
        m, n = w.shape
        col = column_score(formulation.metric, w, g, mu, n_tok)
        index = spec.group_index(n)
        if formulation.group_reduction == "squared_mean":
            gs = np.array([np.mean(col[gr] ** 2) for gr in index])
        else:
            gs = np.array([col[gr].sum() for gr in index])
        keep = keep_columns(spec, gs, n)
        w_hat = np.where(keep[None, :], w, 0.0)
        dev, dt = layer.weight.device, layer.weight.dtype
        bias = None
        if formulation.bias_compensation:
            b0 = layer.bias.detach().double().cpu().numpy() if layer.bias is not None else np.zeros(m)
            g_aug = np.zeros((n + 1, n + 1))
            g_aug[:n, :n], g_aug[:n, n], g_aug[n, :n], g_aug[n, n] = g, n_tok * mu, n_tok * mu, n_tok
            evals, evecs = scipy.linalg.eigh(g_aug)
            r = evecs * np.sqrt(np.clip(evals, 0.0, None))[None, :]
            db = scipy.linalg.lstsq(r[n:].T, -((w_hat - w) @ r[:n]).T)[0].ravel()
            bias = torch.from_numpy(b0 + db).to(device=dev, dtype=dt)
        mask = np.broadcast_to(keep, (m, n)).copy()
        return Solution(
            weights=torch.from_numpy(w_hat).to(device=dev, dtype=dt),
            mask=torch.from_numpy(mask).to(dev),
            status="solved",
            bias=bias,
            kept_columns=torch.from_numpy(np.nonzero(keep)[0]).to(dev),
            stats={"damping_used": 0.0},
            extras={"column_scores": torch.from_numpy(col), "group_scores": torch.from_numpy(gs)},
        )
