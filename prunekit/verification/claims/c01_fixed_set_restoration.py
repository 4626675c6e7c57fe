"""C1: fixed-set restoration is least squares (methods.md §1 fact 2, §11 C1).

With a kept set S shared by all rows and X of full row rank, ``W'_S = Y X_S^T (X_S X_S^T)^{-1}``,
``W'_P = 0`` is the unique least-squares optimum and equals ``lstsq(X_S^T, Y^T)``; no perturbation of the
kept weights lowers the error.  Checked against the torch restoration solver (float64, damping 0).
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from ...errors import VerificationError
from ...formulations.layer import LayerData
from ...formulations.restoration import FixedMaskRestoration
from ...solvers import solve
from ..toy import random_inputs
from . import register_claim


def draw(rng: np.random.Generator, shared: bool = True):
    """(layer with damping 0, X (N x n), W, keep-mask) for a random full-rank instance."""
    m, n = int(rng.integers(2, 7)), int(rng.integers(3, 11))
    x = random_inputs(rng, n, 3 * n, str(rng.choice(["well", "correlated"])))
    w = rng.standard_normal((m, n))
    layer = LayerData.from_inputs(torch.from_numpy(w), torch.from_numpy(x), damping=0.0)
    if shared:
        keep_cols = rng.permutation(n) < int(rng.integers(1, n))
        mask = np.broadcast_to(keep_cols, (m, n)).copy()
    else:
        mask = rng.random((m, n)) < 0.6
    return layer, x, w, mask


def check_instance(layer: LayerData, x: np.ndarray, mask: np.ndarray, rng: Optional[np.random.Generator] = None) -> float:
    """C1's error on one instance (0 when the statement holds exactly).

    Parameters
    ----------
    layer : LayerData
        Damping 0, with ``G = X X^T`` accumulated from ``x``.
    x : ndarray, shape (N, n)
        The calibration inputs (one token per row).
    mask : ndarray of bool, shape (m, n)
        Keep-mask whose rows are all equal (the shared kept set S); X_S must have full column rank.
    rng : numpy Generator, optional
        Draws the 5 perturbation probes of the kept weights (default: a fixed generator).

    Raises
    ------
    VerificationError
        If X_S X_S^T is singular or a perturbation lowers the restored error.
    """
    mask = np.asarray(mask, dtype=bool)
    probes = np.random.default_rng(0) if rng is None else rng
    w = layer.weight.numpy()
    sol = solve(FixedMaskRestoration(layer, torch.from_numpy(mask)), backend="torch", dtype="float64")
    w_hat = sol.weights.numpy()
    s = mask[0]
    y = w @ x.T  # (m, N)
    xs = x[:, s]  # (N, |S|)
    if np.linalg.eigvalsh(xs.T @ xs).min(initial=np.inf) <= 0:
        raise VerificationError("X_S X_S^T is singular: the optimum would not be unique")
    ref = np.linalg.lstsq(xs, y.T, rcond=None)[0].T
    closed = y @ xs @ np.linalg.inv(xs.T @ xs)
    scale = max(1.0, float(np.abs(ref).max(initial=0.0)))
    err = max(float(np.abs(w_hat[:, s] - ref).max(initial=0.0)), float(np.abs(closed - ref).max(initial=0.0))) / scale
    err = max(err, float(np.abs(w_hat[:, ~s]).max(initial=0.0)))
    base = layer.reconstruction_error(sol.weights)
    for _ in range(5):  # no perturbation of the kept weights lowers the error
        d = np.zeros_like(w_hat)
        d[:, s] = probes.standard_normal((w.shape[0], int(s.sum()))) * 10.0 ** probes.uniform(-4, 0)
        worse = layer.reconstruction_error(torch.from_numpy(w_hat + d))
        gain = 0.5 * float(np.sum((d @ (x.T @ x)) * d))  # exact increase: 1/2 tr(D G D^T)
        if worse < base - 1e-9 * max(1.0, base):
            raise VerificationError(f"a perturbation lowered the restoration error ({worse} < {base})")
        err = max(err, abs(worse - base - gain) / max(1.0, base + gain))
    return err


@register_claim("C1", "With a shared kept set S, W'_S = Y X_S^T (X_S X_S^T)^{-1}, W'_P = 0 is the unique "
                "least-squares optimum and equals lstsq(X_S^T, Y^T).", tolerance=1e-8,
                source="methods.md §1 fact 2, §11 C1")
def check(rng: np.random.Generator) -> float:
    layer, x, _, mask = draw(rng)
    return check_instance(layer, x, mask, rng)
