"""C5: the SPAP W-step is the stacked least-squares solution and tends to the C1 restoration at rate O(1/rho).

For a fixed pruned set P (indicator s) and ``D = diag(s * omega)``, ``W(rho) = W0 G (G + rho D)^{-1}`` minimizes
``1/2 ||(W - W0) Z||^2 + rho/2 ||W D^{1/2}||^2`` (``Z Z^T = G``), i.e. it equals ``lstsq([Z^T; sqrt(rho) D^{1/2}],
[Y^T; 0])^T``; and ``||W(rho) - W_inf|| = O(1/rho)`` where ``W_inf`` is the exact restoration on the kept set.
"""

from __future__ import annotations

import numpy as np
import torch

from ...errors import VerificationError
from . import register_claim

RHO_GRID = (1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6)  # times tr(G)/f


PENALTY_WEIGHTS = ("gram_diag", "literal")


def make_instance(layer, penalty_weight: str, pruned):
    """(PenaltyRelaxation pruning ``len(pruned)`` channels of ``layer``, bool (f,) indicator of ``pruned``)."""
    from ...formulations.penalty import PenaltyRelaxation
    from ...formulations.sparsity import Channels

    idx = torch.as_tensor(np.asarray(pruned, dtype=np.int64))
    f = PenaltyRelaxation(layer, Channels(count=int(idx.numel())), penalty_weight=penalty_weight)
    mask = torch.zeros(layer.in_features, dtype=torch.bool)
    mask[idx] = True
    return f, mask


def draw_instance(rng: np.random.Generator):
    """A PenaltyRelaxation on a toy layer and a random pruned set (bool (f,))."""
    from ..toy import random_layer

    n, m = int(rng.integers(5, 11)), int(rng.integers(3, 7))
    k = max(1, n // 3)
    layer = random_layer(rng, m, n, conditioning=("well", "correlated")[int(rng.integers(0, 2))])
    return make_instance(layer, PENALTY_WEIGHTS[int(rng.integers(0, 2))], rng.choice(n, k, replace=False))


def stacked_lstsq_w_step(f, pruned: torch.Tensor, rho: float) -> np.ndarray:
    """The W-step as ``scipy.linalg.lstsq`` on the stacked system (float64)."""
    from scipy.linalg import cholesky, lstsq

    g = f.gram().numpy()
    z = cholesky(g, lower=True)
    w0 = f.layer.weight.detach().double().numpy()
    dvec = np.sqrt(rho * f.omega().numpy() * pruned.numpy())
    a = np.vstack([z.T, np.diag(dvec)])
    b = np.vstack([(w0 @ z).T, np.zeros((g.shape[0], w0.shape[0]))])
    return lstsq(a, b)[0].T


def rho_errors(f, pruned: torch.Tensor) -> np.ndarray:
    """rho_rel * ||W(rho) - W_inf||_F / ||W_inf||_F over RHO_GRID (rho = rho_rel * tr(G)/f)."""
    from ...solvers.torch.penalty import restore_kept_columns, w_step

    g = f.gram()
    w0 = f.layer.weight.detach().double()
    scale = float(g.diagonal().mean())
    w_inf, _ = restore_kept_columns(w0, g, ~pruned)
    out = []
    for r in RHO_GRID:
        w, _ = w_step(w0 @ g, g, r * scale, pruned.double() * f.omega())
        out.append(r * float(torch.linalg.norm(w - w_inf) / torch.linalg.norm(w_inf)))
    return np.array(out)


@register_claim("C5", "The SPAP W-step W0 G (G + rho D)^-1 equals the stacked lstsq solution and converges to "
                "the C1 restoration with ||W(rho) - W_inf|| = O(1/rho).", tolerance=1e-3, source="methods.md §3.3, §11 C5")
def check_instance(f, pruned: torch.Tensor, rho_rel: float) -> float:
    """C5's error on one instance: W-step vs stacked lstsq at ``rho = rho_rel * mean(diag G)`` (raises above
    1e-8) and the convergence of ``rho ||W(rho) - W_inf||`` along :data:`RHO_GRID`."""
    from ...solvers.torch.penalty import w_step

    g = f.gram()
    w0 = f.layer.weight.detach().double()
    rho = float(g.diagonal().mean()) * rho_rel
    w_torch, _ = w_step(w0 @ g, g, rho, pruned.double() * f.omega())
    ref = stacked_lstsq_w_step(f, pruned, rho)
    lstsq_err = float(np.abs(w_torch.numpy() - ref).max() / max(np.abs(ref).max(), 1e-300))
    if lstsq_err > 1e-8:
        raise VerificationError(f"C5: W-step differs from the stacked lstsq by {lstsq_err:.3g} (rho={rho:.3g}).")
    q = rho_errors(f, pruned)
    if q.max() > 10 * q[-1] or q[-1] <= 0:
        raise VerificationError(f"C5: rho * ||W(rho) - W_inf|| is not bounded along the grid: {q}.")
    return max(lstsq_err, abs(q[-2] / q[-1] - 1.0))


@register_claim("C5", "The SPAP W-step W0 G (G + rho D)^-1 equals the stacked lstsq solution and converges to "
                "the C1 restoration with ||W(rho) - W_inf|| = O(1/rho).", tolerance=1e-3, source="methods.md §3.3, §11 C5")
def check(rng: np.random.Generator) -> float:
    f, pruned = draw_instance(rng)
    return check_instance(f, pruned, 10.0 ** rng.uniform(-2, 3))
