"""Reference twin of the torch ADMM solver: the same scaled ADMM iteration in float64 numpy/scipy.

W-step by ``scipy.linalg.solve`` (assume_a="pos") on ``(2 G + rho I)`` (no cached factor), Z-step through the
sparsity spec's own ``project`` (the core projection), U-update, the same early stop, and the final
restoration by ``scipy.linalg.lstsq`` on a Cholesky square root of G (row by row): min ||(w' - w0) L|| over
w' supported on S, with G = L L^T.  scipy is imported inside ``run``.
"""

from __future__ import annotations

import numpy as np
import torch

from ...formulations.admm import ADMMSplit
from ..base import Solver
from ..options import ReferenceOptions
from ..registry import register_solver
from ..solution import Solution


def _project(v: np.ndarray, spec, score: str, norms: np.ndarray) -> np.ndarray:
    s = v ** 2 if score == "frobenius" else np.abs(v) * norms[None, :]
    if spec.structured:
        keep = spec.project(torch.from_numpy(s.sum(axis=0))).numpy()[0]
        return np.broadcast_to(keep, v.shape).copy()
    return spec.project(torch.from_numpy(s)).numpy()


@register_solver(ADMMSplit, backend="scipy")
class ScipyADMM(Solver):
    """float64 numpy ADMM (the same iteration as the torch solver); final restoration by lstsq."""

    requires = ("scipy",)
    max_weights = 64 * 64
    options_type = ReferenceOptions

    def run(self, formulation: ADMMSplit, options) -> Solution:
        import scipy.linalg as sla

        layer = formulation.layer
        w0 = layer.weight.detach().double().cpu().numpy()
        gd = layer.damped_gram(dtype=torch.float64, device="cpu").numpy()
        norms = layer.input_norms().cpu().numpy()
        spec, score = formulation.sparsity, formulation.projection_score
        n = gd.shape[0]
        rho = formulation.rho_abs()
        mask = _project(w0, spec, score, norms)
        z = w0 * mask
        u = np.zeros_like(w0)
        scale = float(np.linalg.norm(w0)) or 1.0
        primal = dual = float("nan")
        it = 0
        for it in range(1, formulation.iterations + 1):
            rhs = 2.0 * w0 @ gd + rho * (z - u)
            w = sla.solve(2.0 * gd + rho * np.eye(n), rhs.T, assume_a="pos").T
            v = w + u
            new_mask = _project(v, spec, score, norms)
            z_new = v * new_mask
            u = u + w - z_new
            primal = float(np.linalg.norm(w - z_new))
            dual = rho * float(np.linalg.norm(z_new - z))
            changed = int((new_mask != mask).sum())
            z, mask = z_new, new_mask
            if changed == 0 and primal <= options.tol * scale and dual <= options.tol * scale:
                break
            if formulation.rho_growth != 1.0 and it < formulation.iterations:
                rho_new = rho * formulation.rho_growth
                u = u * (rho / rho_new)
                rho = rho_new
        root = sla.cholesky(gd, lower=True)  # G = L L^T
        weights = np.zeros_like(w0)
        for i in range(w0.shape[0]):
            keep = np.flatnonzero(mask[i])
            if keep.size:
                # min || w'_S L_S,: - w0 L ||  <=>  lstsq(L_S,:^T, L^T w0^T)
                weights[i, keep] = sla.lstsq(root[keep, :].T, root.T @ w0[i])[0]
        dev, dt = layer.weight.device, layer.weight.dtype
        return Solution(
            weights=torch.from_numpy(weights).to(device=dev, dtype=dt),
            mask=torch.from_numpy(mask.astype(bool)).to(dev),
            status="heuristic",
            kept_columns=torch.from_numpy(np.flatnonzero(mask.all(axis=0))).to(dev) if spec.structured else None,
            stats={"iterations": it, "primal_residual": primal, "dual_residual": dual, "rho_final": rho},
        )
