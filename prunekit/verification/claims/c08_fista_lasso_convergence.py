"""C8: FISTA converges to the lasso optimum with F(W_k) - F* <= 2 L ||W_0 - W*||^2 / (k+1)^2 (Beck-Teboulle Thm 4.4)."""

from __future__ import annotations

import numpy as np

from ...errors import VerificationError
from . import register_claim

ITERATIONS = 3000


def draw_lasso(rng: np.random.Generator, *, iterations: int = ITERATIONS, error_correction=None):
    """A pure-lasso L1Relaxation (adaptive=False, project=False, dense warm start, no early stop)."""
    import torch

    from ...formulations.l1 import L1Relaxation
    from ...formulations.layer import LayerData
    from ...formulations.sparsity import Unstructured
    from ..toy import random_inputs

    n, m = int(rng.integers(3, 9)), int(rng.integers(1, 5))
    x = random_inputs(rng, n, conditioning=("well", "correlated")[int(rng.integers(0, 2))])
    w = rng.standard_normal((m, n))
    ec = bool(rng.integers(0, 2)) if error_correction is None else error_correction
    xs = torch.from_numpy(x + 0.1 * rng.standard_normal(x.shape)) if ec else None
    layer = LayerData.from_inputs(torch.from_numpy(w), torch.from_numpy(x), inputs_star=xs)
    probe = L1Relaxation(layer, Unstructured(0.5), lam=0.0, adaptive=False, project=False)
    lam = float(rng.uniform(0.05, 0.6)) * probe.lambda_max()
    return L1Relaxation(layer, Unstructured(0.5), lam=lam, adaptive=False, project=False, K=iterations, eps=0.0,
                        warm_start="dense")


@register_claim("C8", "FISTA on the lasso converges to its optimum and F(W_k) - F* <= 2L||W_0 - W*||^2/(k+1)^2 "
                "for every k (L = lambda_max(X* X*^T)).", tolerance=1e-6, source="methods.md §5.2, §11 C8")
def check_instance(f) -> float:
    """C8's error on the pure-lasso problem ``f`` (see :func:`draw_lasso`): relative distance of FISTA's weights
    and objective to the L-BFGS-B optimum; raises if the Beck-Teboulle bound fails at some k."""
    from ...solvers import solve

    sol = solve(f, backend="torch", dtype="float64")
    ref = solve(f, backend="scipy")
    trace = np.array(sol.extras["objective_trace"])
    w_ref = ref.weights.double().numpy()
    f_star = min(ref.objective, float(trace.min()))
    w_init = f.layer.weight.double().numpy()
    k = np.arange(1, len(trace) + 1)
    bound = 2.0 * f.lipschitz() * float(np.sum((w_init - w_ref) ** 2)) / (k + 1.0) ** 2
    excess = trace - f_star - bound
    scale = max(abs(f_star), 1e-300)
    if excess.max() > 1e-9 * scale:
        bad = int(np.argmax(excess))
        raise VerificationError(f"C8: FISTA rate bound violated at k={bad + 1}: gap {trace[bad] - f_star:.3g} "
                                f"> bound {bound[bad]:.3g}.")
    w_err = float(np.linalg.norm(sol.weights.double().numpy() - w_ref) / max(np.linalg.norm(w_ref), 1e-12))
    f_err = abs(sol.objective - ref.objective) / scale
    return max(w_err, f_err)


@register_claim("C8", "FISTA on the lasso converges to its optimum and F(W_k) - F* <= 2L||W_0 - W*||^2/(k+1)^2 "
                "for every k (L = lambda_max(X* X*^T)).", tolerance=1e-6, source="methods.md §5.2, §11 C8")
def check(rng: np.random.Generator) -> float:
    return check_instance(draw_lasso(rng))
