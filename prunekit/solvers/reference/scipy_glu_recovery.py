"""NumPy float64 twin of the GLU recovery alternation (reference for the torch solver).

The same steps as :mod:`prunekit.solvers.torch.glu_recovery`, computed independently with ``numpy.linalg.lstsq``:

* W_down step: ``V^T = lstsq(A ⊙ X0 U^T, Y)``;
* W_up step (``"lstsq"``): per kept neuron j, ``u_j = lstsq(||v_j|| diag(a_j) X0, R_j v_j / ||v_j||)``
  (the same block Gauss-Seidel sweep); ``"gradient"``: the exact-line-search gradient step;
* a step is accepted only if the block objective does not increase.
"""

from __future__ import annotations

import numpy as np
import torch

from ...formulations.glu_recovery import GLURecovery
from ..base import Solver
from ..options import ReferenceOptions
from ..registry import register_solver
from ..solution import Solution


def _obj(a, x, u, v, y):
    return 0.5 * float(np.sum(((a * (x @ u.T)) @ v.T - y) ** 2))


def _u_lstsq(a, x, u, v, y):
    u = u.copy()
    resid = y - (a * (x @ u.T)) @ v.T
    for j in range(u.shape[0]):
        vj, aj = v[:, j], a[:, j]
        nv = float(np.linalg.norm(vj))
        if nv == 0.0:
            continue
        rj = resid + np.outer(aj * (x @ u[j]), vj)
        u[j] = np.linalg.lstsq(nv * aj[:, None] * x, rj @ vj / nv, rcond=None)[0]
        resid = rj - np.outer(aj * (x @ u[j]), vj)
    return u


def _u_gradient(a, x, u, v, y):
    err = (a * (x @ u.T)) @ v.T - y
    grad = ((err @ v) * a).T @ x
    jg = (a * (x @ grad.T)) @ v.T
    denom = float(np.sum(jg * jg))
    return u if denom == 0.0 else u - (float(np.sum(grad * grad)) / denom) * grad


@register_solver(GLURecovery, backend="scipy")
class ScipyGLURecovery(Solver):
    """Float64 numpy twin of the alternating W_down / W_up recovery."""

    options_type = ReferenceOptions
    exact = False

    def run(self, formulation: GLURecovery, options: ReferenceOptions) -> Solution:
        f = formulation
        x = f.inputs.detach().double().cpu().numpy()
        s = f.kept.cpu().numpy()
        h = x @ f.w_gate.detach().double().cpu().numpy()[s].T
        a = h / (1.0 + np.exp(-h))
        u = f.w_up.detach().double().cpu().numpy()[s].copy()
        v = f.layer.weight.detach().double().cpu().numpy()[:, s].copy()
        y = f.dense_output().cpu().numpy()
        current = _obj(a, x, u, v, y)
        trace, rejected = [current], 0
        for _ in range(f.iterations):
            for which in ("v", "u"):
                if which == "v":
                    cu, cv = u, np.linalg.lstsq(a * (x @ u.T), y, rcond=None)[0].T
                else:
                    cu, cv = (_u_lstsq(a, x, u, v, y) if f.method == "lstsq" else _u_gradient(a, x, u, v, y)), v
                value = _obj(a, x, cu, cv, y)
                if np.all(np.isfinite(cu)) and np.all(np.isfinite(cv)) and value <= current:
                    u, v, current = cu, cv, value
                else:
                    rejected += 1
            trace.append(current)
        d, n = f.layer.shape
        w_down = np.zeros((d, n))
        w_down[:, s] = v
        w_up = np.zeros(tuple(f.w_up.shape))
        w_up[s] = u
        keep = f.keep_vector().to(f.layer.weight.device)
        weight = f.layer.weight
        return Solution(
            weights=torch.from_numpy(w_down).to(device=weight.device, dtype=weight.dtype),
            mask=keep.unsqueeze(0).expand(d, n).clone(),
            kept_columns=f.kept.to(weight.device),
            stats={"iterations": f.iterations, "rejected_steps": rejected},
            extras={"w_up": torch.from_numpy(w_up).to(device=f.w_up.device, dtype=f.w_up.dtype),
                    "objective_trace": trace, "method": f.method},
        )
