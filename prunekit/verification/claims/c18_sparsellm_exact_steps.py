"""C18: SparseLLM's p-step, OPT ReLU z-step and SwiGLU z-step are exact block minimizers (methods.md §7.2, §11).

* p-step: p = (beta (Y - b2) W2 + gamma act)(beta W2^T W2 + gamma I)^{-1} zeroes the gradient of
  beta ||p W2^T + b2 - Y||^2 + gamma ||p - act||^2 and equals ``numpy.linalg.lstsq`` on the stacked system;
* ReLU z-step: the two-candidate rule attains the minimum of gamma (p - ReLU(z))^2 + alpha (z - m)^2 found by
  a dense 1-D grid (it is never worse than any grid point);
* SwiGLU z-step: z = (alpha m + gamma a p)/(alpha + gamma a^2), a = SiLU(s), is a stationary point (the
  derivative vanishes) and the minimum over the grid of the convex quadratic alpha (z - m)^2 + gamma (p - a z)^2.
"""

from __future__ import annotations

import numpy as np
import torch

from . import register_claim


def _grid_min(f, lo: np.ndarray, hi: np.ndarray, points: int = 20001) -> np.ndarray:
    t = np.linspace(0.0, 1.0, points)[None, :]
    grid = lo[:, None] + (hi - lo)[:, None] * t
    return f(grid).min(axis=1)


def p_step_errors(w2, b2, y, act, beta: float, gamma: float) -> list[float]:
    """Relative gradient norm of the p-objective at the p-step, and its distance to the stacked lstsq solution.

    Shapes: ``w2`` (d, h), ``b2`` (d,), ``y`` (N, d), ``act`` (N, h).
    """
    from ...solvers.torch.sparsellm import p_step

    h = w2.shape[1]
    p = p_step(*(torch.from_numpy(np.asarray(v, dtype=np.float64)) for v in (w2, b2, y, act)), beta, gamma).numpy()
    grad = 2 * beta * (p @ w2.T + b2 - y) @ w2 + 2 * gamma * (p - act)
    scale = 2 * beta * np.abs(y - b2).max() * np.abs(w2).max() * h + 2 * gamma * np.abs(act).max() + 1e-300
    errors = [float(np.abs(grad).max() / scale)]
    stacked = np.vstack([np.sqrt(beta) * w2, np.sqrt(gamma) * np.eye(h)])
    rhs = np.hstack([np.sqrt(beta) * (y - b2), np.sqrt(gamma) * act]).T
    p_ls = np.linalg.lstsq(stacked, rhs, rcond=None)[0].T
    errors.append(float(np.abs(p - p_ls).max() / (np.abs(p_ls).max() + 1e-300)))
    return errors


def z_step_errors(pv, m, s, alpha: float, gamma: float) -> list[float]:
    """ReLU z-step excess over the grid minimum, SwiGLU z-step stationarity and excess over the grid minimum,
    elementwise over the vectors ``pv`` (p), ``m`` and ``s`` (gate pre-activation), all of one length."""
    from ...solvers.torch.sparsellm import z_step_relu, z_step_swiglu

    pv, m, s = (np.asarray(v, dtype=np.float64) for v in (pv, m, s))
    z = z_step_relu(torch.from_numpy(pv), torch.from_numpy(m), alpha, gamma).numpy()
    f_relu = lambda zz: gamma * (pv[:, None] - np.maximum(zz, 0)) ** 2 + alpha * (zz - m[:, None]) ** 2  # noqa: E731
    lo, hi = np.minimum(pv, m) - 1.0, np.maximum(pv, m) + 1.0
    fz = f_relu(z[:, None])[:, 0]
    fgrid = _grid_min(f_relu, lo, hi)
    fscale = np.abs(fgrid).max() + (alpha + gamma) + 1e-300
    errors = [float(np.maximum(fz - fgrid, 0).max() / fscale)]
    a = s / (1 + np.exp(-s))
    zs = z_step_swiglu(torch.from_numpy(m), torch.from_numpy(s), torch.from_numpy(pv), alpha, gamma).numpy()
    deriv = 2 * alpha * (zs - m) - 2 * gamma * a * (pv - a * zs)
    errors.append(float(np.abs(deriv).max() / (2 * alpha * np.abs(m).max() + 2 * gamma * np.abs(a * pv).max() + 1e-300)))
    f_glu = lambda zz: alpha * (zz - m[:, None]) ** 2 + gamma * (pv[:, None] - a[:, None] * zz) ** 2  # noqa: E731
    span = np.abs(zs) + np.abs(m) + 1.0
    fg = _grid_min(f_glu, zs - span, zs + span)
    errors.append(float(np.maximum(f_glu(zs[:, None])[:, 0] - fg, 0).max() / (np.abs(fg).max() + alpha + gamma)))
    return errors


def check_instance(p_block, z_block, alpha: float, beta: float, gamma: float) -> float:
    """C18's error: the worst of :func:`p_step_errors` on ``p_block = (w2, b2, y, act)`` and
    :func:`z_step_errors` on ``z_block = (p, m, s)``."""
    return float(max(p_step_errors(*p_block, beta, gamma) + z_step_errors(*z_block, alpha, gamma)))


@register_claim("C18", "SparseLLM's p-step (linear system), OPT ReLU z-step (two candidates) and SwiGLU z-step "
                "(stationary point) are exact block minimizers.", tolerance=1e-8, source="methods.md §7.2, §11 C18")
def check(rng: np.random.Generator) -> float:
    n_tok, d, h = int(rng.integers(3, 12)), int(rng.integers(2, 6)), int(rng.integers(2, 8))
    alpha, beta, gamma = (float(v) for v in 10.0 ** rng.uniform(-2, 1, size=3))
    p_block = (rng.standard_normal((d, h)), rng.standard_normal(d), rng.standard_normal((n_tok, d)),
               np.maximum(rng.standard_normal((n_tok, h)), 0))
    k = 64
    z_block = (rng.standard_normal(k) * 2, rng.standard_normal(k) * 2, rng.standard_normal(k) * 2)
    return check_instance(p_block, z_block, alpha, beta, gamma)
