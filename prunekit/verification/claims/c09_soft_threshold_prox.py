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


def gradient_at_zero_error_for(layer, x: np.ndarray, xs: np.ndarray) -> float:
    """max |grad f(0) + W X X*^T| / max |W X X*^T| for ``layer`` built from inputs ``x`` and ``xs`` (tokens x n)."""
    import torch

    from ...formulations.l1 import L1Relaxation
    from ...formulations.sparsity import Unstructured

    w = layer.weight.double().numpy()
    f = L1Relaxation(layer, Unstructured(0.5), lam=0.0, adaptive=False, project=False)
    expected = -(w @ x.T @ xs)
    got = f.grad(torch.zeros(layer.shape, dtype=torch.float64)).numpy()
    return float(np.abs(got - expected).max() / max(float(np.abs(expected).max()), 1e-300))


def gradient_at_zero_error(rng: np.random.Generator) -> float:
    """:func:`gradient_at_zero_error_for` with explicit random X, X* = X + 0.2 noise and W."""
    import torch

    from ...formulations.layer import LayerData

    n, m, tokens = int(rng.integers(3, 9)), int(rng.integers(1, 5)), 40
    x = rng.standard_normal((tokens, n))
    xs = x + 0.2 * rng.standard_normal((tokens, n))
    w = rng.standard_normal((m, n))
    layer = LayerData.from_inputs(torch.from_numpy(w), torch.from_numpy(x), inputs_star=torch.from_numpy(xs))
    return gradient_at_zero_error_for(layer, x, xs)


def prox_error(v: np.ndarray, tau: float) -> float:
    """max |prox_l1(v, tau) - grid minimizer| over ``v`` plus the two probes just inside (0.999 tau) and just
    outside (-1.001 tau) the dead zone."""
    import torch

    from ...solvers.torch.prox import prox_l1

    v = np.concatenate([[tau * 0.999, -tau * 1.001], np.ravel(v)])
    got = prox_l1(torch.from_numpy(v), tau).numpy()
    grid = np.array([grid_prox(float(vi), tau) for vi in v])
    return float(np.abs(got - grid).max())


@register_claim("C9", "The prox of tau||.||_1 is soft thresholding sign(v) max(|v| - tau, 0); at W* = 0 the "
                "gradient of 1/2||W* X* - W X||^2 is -W X X*^T.", tolerance=1e-6, source="methods.md §5.2, §11 C9")
def check(rng: np.random.Generator) -> float:
    tau = float(rng.uniform(0.0, 2.0))
    v = rng.standard_normal(10) * 2.0
    return max(prox_error(v, tau), gradient_at_zero_error(rng))
