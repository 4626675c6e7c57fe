"""C9: the prox of tau||.||_1 is soft thresholding; at W* = 0 the gradient of the FISTAPruner smooth part is -W X X*^T."""

from __future__ import annotations

import numpy as np

from . import register_claim


def grid_prox(v: float, tau: float, points: int = 1001, refinements: int = 3) -> float:
    """argmin_x 1/2 (x - v)^2 + tau |x| by grid search with successive refinement (convex, so valid)."""
    lo, hi = -abs(v) - tau - 1.0, abs(v) + tau + 1.0
    best = 0.0
    for _ in range(refinements + 1):
        xs = np.linspace(lo, hi, points)
        vals = 0.5 * (xs - v) ** 2 + tau * np.abs(xs)
        i = int(np.argmin(vals))
        best, h = xs[i], xs[1] - xs[0]
        lo, hi = best - 2 * h, best + 2 * h
    cand = np.array([best, 0.0])  # the kink is a grid-free candidate
    return float(cand[np.argmin(0.5 * (cand - v) ** 2 + tau * np.abs(cand))])


def gradient_at_zero_error(rng: np.random.Generator) -> float:
    """max |grad f(0) + W X X*^T| / max |W X X*^T| with explicit X, X*."""
    import torch

    from ...formulations.l1 import L1Relaxation
    from ...formulations.layer import LayerData
    from ...formulations.sparsity import Unstructured

    n, m, tokens = int(rng.integers(3, 9)), int(rng.integers(1, 5)), 40
    x = rng.standard_normal((n, tokens))
    xs = x + 0.2 * rng.standard_normal((n, tokens))
    w = rng.standard_normal((m, n))
    layer = LayerData.from_inputs(torch.from_numpy(w), torch.from_numpy(x.T), inputs_star=torch.from_numpy(xs.T))
    f = L1Relaxation(layer, Unstructured(0.5), lam=0.0, adaptive=False, project=False)
    expected = -(w @ x @ xs.T)
    got = f.grad(torch.zeros(m, n, dtype=torch.float64)).numpy()
    return float(np.abs(got - expected).max() / np.abs(expected).max())


@register_claim("C9", "The prox of tau||.||_1 is soft thresholding sign(v) max(|v| - tau, 0); at W* = 0 the "
                "gradient of 1/2||W* X* - W X||^2 is -W X X*^T.", tolerance=1e-6, source="methods.md §5.2, §11 C9")
def check(rng: np.random.Generator) -> float:
    import torch

    from ...solvers.torch.prox import prox_l1

    tau = float(rng.uniform(0.0, 2.0))
    v = rng.standard_normal(12) * 2.0
    v[0] = tau * 0.999  # just inside the dead zone
    v[1] = -tau * 1.001  # just outside it
    got = prox_l1(torch.from_numpy(v), tau).numpy()
    grid = np.array([grid_prox(float(vi), tau) for vi in v])
    return max(float(np.abs(got - grid).max()), gradient_at_zero_error(rng))
