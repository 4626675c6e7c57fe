"""C17: FLAP's bias compensation b_new = b + W_{:,P} mu_P is the least-squares-optimal intercept.

After removing input channels P (no weight update), the remaining squared error is
``sum_t ||W_P (x_{P,t} - mu_P)||^2 = N tr(W_P Cov(X_P) W_P^T)`` (population covariance), which for one
channel j is ``N Var(x_j) ||W_:,j||^2`` = N x the WIFV score (methods.md §8.4).
"""

from __future__ import annotations

import numpy as np
import torch

from . import register_claim


def flap_errors_for(layer, x: np.ndarray, pruned) -> dict[str, float]:
    """C17's five relative errors for ``layer`` (with a bias) accumulated from inputs ``x`` (tokens x n) when
    the input channels ``pruned`` (a non-empty proper subset of range(n)) are removed."""
    from ...formulations import scores
    from ...formulations.flap import FLAPRemoval
    from ...formulations.sparsity import Channels
    from ...solvers import solve

    w, b = layer.weight.double().numpy(), layer.bias.double().numpy()
    n_tok = x.shape[0]
    pruned = np.sort(np.asarray(pruned, dtype=np.int64))
    w_hat = w.copy()
    w_hat[:, pruned] = 0.0
    target = x @ w.T + b
    # least-squares intercept with the pruned weights fixed: lstsq on a column of ones
    b_ls = np.linalg.lstsq(np.ones((n_tok, 1)), target - x @ w_hat.T, rcond=None)[0].ravel()
    mu = x.mean(axis=0)
    b_flap = b + w[:, pruned] @ mu[pruned]
    scale_b = max(np.abs(b_ls).max(), 1e-300)
    out = {"intercept": float(np.abs(b_flap - b_ls).max() / scale_b)}
    resid = float(np.sum((x @ w_hat.T + b_flap - target) ** 2))
    cov = np.cov(x[:, pruned].T, bias=True).reshape(len(pruned), len(pruned))
    predicted = n_tok * float(np.trace(w[:, pruned] @ cov @ w[:, pruned].T))
    scale = max(resid, predicted, 1e-12 * float(np.sum(target ** 2)), 1e-300)
    out["residual"] = abs(resid - predicted) / scale
    # the moment form 1/2 [tr(dW G dW^T) + 2N db^T dW mu + N ||db||^2] cancels at the scale of its terms
    moment_scale = max(scale, float(np.sum((x @ (w_hat - w).T) ** 2)))
    layer_obj = 2 * layer.reconstruction_error(torch.from_numpy(w_hat), torch.from_numpy(b_flap))
    out["layer_objective"] = abs(layer_obj - resid) / moment_scale
    j = int(pruned[0])
    single = float(np.sum((np.outer(x[:, j] - mu[j], w[:, j])) ** 2))
    wifv = n_tok * float(scores.flap_wifv(layer)[j])
    # Var = G_jj / N - mu_j^2 cancels at the scale of the raw second moment
    raw = float(np.sum(x[:, j] ** 2)) * float(np.sum(w[:, j] ** 2))
    out["single_channel_wifv"] = abs(single - wifv) / max(raw, 1e-300)
    sol = solve(FLAPRemoval(layer, Channels(count=len(pruned))), backend="torch", dtype="float64")
    keep = sol.mask[0].numpy()
    b_opt = np.linalg.lstsq(np.ones((n_tok, 1)), target - x @ np.where(keep, w, 0.0).T, rcond=None)[0].ravel()
    out["solver_bias"] = float(np.abs(sol.bias.numpy() - b_opt).max() / max(np.abs(b_opt).max(), 1e-300))
    return out


def flap_errors(rng: np.random.Generator) -> dict[str, float]:
    """:func:`flap_errors_for` on a random biased layer with shifted inputs and a random pruned set."""
    from ...formulations.layer import LayerData
    from ..toy import CONDITIONINGS, random_inputs

    m, n = int(rng.integers(2, 7)), int(rng.integers(3, 10))
    x = random_inputs(rng, n, conditioning=CONDITIONINGS[int(rng.integers(0, 4))]) + 2.0 * rng.standard_normal(n)
    w, b = rng.standard_normal((m, n)), rng.standard_normal(m)
    layer = LayerData.from_inputs(torch.from_numpy(w), torch.from_numpy(x), bias=torch.from_numpy(b))
    return flap_errors_for(layer, x, rng.choice(n, size=int(rng.integers(1, n)), replace=False))


@register_claim(
    "C17",
    "FLAP's bias b + W_P mu_P is the least-squares-optimal intercept; the residual is N tr(W_P Cov(X_P) W_P^T), "
    "for one channel N Var(x_j) ||W_:,j||^2 (N x WIFV).",
    tolerance=1e-9,
    source="methods.md §8.4, §11 C17",
)
def check(rng: np.random.Generator) -> float:
    return max(flap_errors(rng).values())
