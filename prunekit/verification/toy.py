"""Random toy layers from a numpy Generator (the non-hypothesis twin of ``strategies.toy_layers``).

``random_layer(rng, m, n, conditioning=...)`` draws W (m x n) and X (n x N) and returns the LayerData with
G = X X^T accumulated in float64.  Conditioning:

* ``"well"``          -- X Gaussian with N = 4n tokens;
* ``"ill"``           -- columns of X scaled by 10^{-3 .. 1} (condition number ~1e8 in G);
* ``"rank_deficient"``-- X of rank n // 2 (G singular; damping makes the problems well posed);
* ``"correlated"``    -- features mixed by a random matrix (strong off-diagonal G).
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from ..formulations.layer import LayerData

CONDITIONINGS = ("well", "ill", "rank_deficient", "correlated")


def random_inputs(rng: np.random.Generator, n: int, tokens: Optional[int] = None, conditioning: str = "well") -> np.ndarray:
    """Calibration inputs X^T of shape (tokens, n)."""
    tokens = tokens or 4 * n
    if conditioning == "well":
        x = rng.standard_normal((tokens, n))
    elif conditioning == "ill":
        x = rng.standard_normal((tokens, n)) * np.logspace(-3, 1, n)[rng.permutation(n)]
    elif conditioning == "rank_deficient":
        r = max(1, n // 2)
        x = rng.standard_normal((tokens, r)) @ rng.standard_normal((r, n))
    elif conditioning == "correlated":
        x = rng.standard_normal((tokens, n)) @ (np.eye(n) + 0.8 * rng.standard_normal((n, n)) / np.sqrt(n))
    else:
        raise ValueError(f"conditioning must be one of {CONDITIONINGS}, got {conditioning!r}")
    return x


def random_layer(
    rng: np.random.Generator,
    m: int = 6,
    n: int = 8,
    *,
    conditioning: str = "well",
    tokens: Optional[int] = None,
    damping: float = 0.01,
    with_bias: bool = False,
    mean_shift: float = 0.0,
) -> LayerData:
    """A random LayerData (float64, cpu) with G = X X^T; ``mean_shift`` offsets the inputs (FLAP needs a mean)."""
    x = random_inputs(rng, n, tokens, conditioning) + mean_shift * rng.standard_normal(n)
    w = rng.standard_normal((m, n))
    bias = torch.from_numpy(rng.standard_normal(m)) if with_bias else None
    return LayerData.from_inputs(torch.from_numpy(w), torch.from_numpy(x), bias=bias, damping=damping)
