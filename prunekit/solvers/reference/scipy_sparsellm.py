"""Reference twin of the torch SparseLLM loop: the same epochs in float64 numpy/scipy, written independently.

p-step by ``scipy.linalg.solve`` (assume_a="pos"), pseudo-inverses by ``scipy.linalg.pinv``, the ReLU z-step
by comparing both candidate branches, the SwiGLU z-step in closed form, the s-step by the same minibatch GD.
Only the cheap inner pruners ("magnitude", "wanda") are implemented here; "sparsegpt" is declined (the
SparseGPT solver has its own reference).  Toy sizes only.  scipy is imported inside ``run``.
"""

from __future__ import annotations

import numpy as np
import torch

from ...formulations.sparsellm import SparseLLMSplit
from ..base import Solver
from ..options import ReferenceOptions
from ..registry import register_solver
from ..solution import Solution


def _silu(v):
    return v / (1.0 + np.exp(-v))


def _prune(w, gram, spec, how):
    score = np.abs(w) if how == "magnitude" else np.abs(w) * np.sqrt(np.clip(np.diag(gram), 0, None))[None, :]
    mask = spec.project(torch.from_numpy(score)).numpy()
    return w * mask, mask


def _loop(f: SparseLLMSplit):
    import scipy.linalg as sla

    n64 = lambda t: None if t is None else t.detach().double().cpu().numpy()  # noqa: E731
    x, y = n64(f.inputs), f.dense_target(device="cpu").numpy()
    a, b, c = f.alpha, f.beta, f.gamma
    llama = f.family == "llama"
    w1, w2, b1, b2, wg = n64(f.up), n64(f.layer.weight), n64(f.up_bias), n64(f.layer.bias), n64(f.gate)
    b1z = b1 if b1 is not None else 0.0
    b2z = b2 if b2 is not None else 0.0
    xp = sla.pinv(x)
    if llama:
        s, z = x @ wg.T, x @ w1.T
        p = _silu(s) * z
    else:
        z = x @ w1.T + b1z
        p = np.maximum(z, 0.0)
    masks, keep = {}, None
    h = w1.shape[0]
    for epoch in range(f.epochs):
        if epoch > 0:
            w1 = (xp @ (z - b1z)).T
            if llama:
                wg = (xp @ s).T
                w2 = (sla.pinv(p) @ y).T
            else:
                for _ in range(f.w2_steps):
                    w2 = w2 - f.w2_lr * (2.0 / y.size) * ((p @ w2.T + b2z - y).T @ p)
        if f.structured:
            col = (w2 ** 2).sum(0) if f.projection_score == "frobenius" else np.abs(w2).sum(0) * np.linalg.norm(p, axis=0)
            keep = f.sparsity.project(torch.from_numpy(col)).numpy()[0]
            pk = p[:, keep]
            g = pk.T @ pk
            lam = 0.01 * float(np.mean(np.diag(g))) or 1e-12
            w2 = np.zeros_like(w2)
            w2[:, keep] = sla.solve(g + lam * np.eye(g.shape[0]), pk.T @ (y - b2z), assume_a="pos").T
            w1 = w1 * keep[:, None]
            if llama:
                wg = wg * keep[:, None]
        else:
            w1, masks["up" if llama else "fc1"] = _prune(w1, x.T @ x, f.sparsity, f.inner_pruner)
            if llama:
                wg, masks["gate"] = _prune(wg, x.T @ x, f.sparsity, f.inner_pruner)
            w2, masks["down" if llama else "fc2"] = _prune(w2, p.T @ p, f.sparsity, f.inner_pruner)
        act = _silu(s) * z if llama else np.maximum(z, 0.0)
        p = sla.solve(b * w2.T @ w2 + c * np.eye(h), (b * (y - b2z) @ w2 + c * act).T, assume_a="pos").T
        if llama:
            sig = _silu(s)
            z = (a * (x @ w1.T) + c * sig * p) / (a + c * sig ** 2)
            mg = x @ wg.T
            for _ in range(f.s_epochs):
                for st in range(0, s.shape[0], f.s_batch):
                    sl = slice(st, st + f.s_batch)
                    sb = s[sl]
                    sgm = 1.0 / (1.0 + np.exp(-sb))
                    grad = 2 * a * (sb - mg[sl]) - 2 * c * (p[sl] - sb * sgm * z[sl]) * z[sl] * sgm * (1 + sb * (1 - sgm))
                    s[sl] = sb - f.s_lr * grad / sb.size
        else:
            m = x @ w1.T + b1z
            cands = [np.maximum((c * p + a * m) / (c + a), 0.0), np.minimum(m, 0.0)]
            vals = [c * (p - np.maximum(zc, 0.0)) ** 2 + a * (zc - m) ** 2 for zc in cands]
            z = np.where(vals[0] <= vals[1], cands[0], cands[1])
    weights = {"gate": wg, "up": w1, "down": w2} if llama else {"fc1": w1, "fc2": w2}
    if f.structured:
        masks = {k: np.broadcast_to(keep[None, :] if k in ("fc2", "down") else keep[:, None], v.shape).copy()
                 for k, v in weights.items()}
    return weights, masks, keep


@register_solver(SparseLLMSplit, backend="scipy")
class ScipySparseLLM(Solver):
    """float64 numpy SparseLLM loop (magnitude/wanda inner pruners; structured option)."""

    requires = ("scipy",)
    max_weights = 3 * 64 * 64
    options_type = ReferenceOptions

    def _accepts(self, formulation):
        if not formulation.structured and formulation.inner_pruner == "sparsegpt":
            return False, "the reference loop implements inner_pruner 'magnitude' and 'wanda' only"
        if formulation.inputs.shape[0] > 4096:
            return False, "more than 4096 calibration tokens (toy sizes only)"
        return True, ""

    def run(self, formulation: SparseLLMSplit, options) -> Solution:
        weights, masks, keep = _loop(formulation)
        dev, dt = formulation.layer.weight.device, formulation.layer.weight.dtype
        tw = {k: torch.from_numpy(np.ascontiguousarray(v)).to(device=dev, dtype=dt) for k, v in weights.items()}
        tm = {k: torch.from_numpy(np.ascontiguousarray(v.astype(bool))).to(dev) for k, v in masks.items()}
        first = "fc2" if formulation.family == "opt" else "down"
        return Solution(weights=tw[first], mask=tm[first], status="heuristic",
                        kept_columns=torch.from_numpy(np.flatnonzero(keep)).to(dev) if keep is not None else None,
                        stats={"iterations": formulation.epochs}, extras={"weights": tw, "masks": tm})
