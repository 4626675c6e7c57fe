"""C16: SparseGPT's lazy batching is exact (methods.md §1 fact 4, §8.3, §11 C16).

For 2:4 sparsity the pruned weight is identical for block sizes B in {4, 8, 128} (and equals the un-batched
NumPy sweep), every group of 4 has exactly 2 pruned weights, and ``U_jj^2 = [(H_FF)^{-1}]_jj`` for
F = {j, ..., n-1} where ``H^{-1} = U^T U``.
"""

from __future__ import annotations

import numpy as np
import torch

from ...errors import VerificationError
from ...formulations.sparsegpt import SparseGPTPruning
from ...formulations.sparsity import NM
from ...solvers import solve
from ...solvers.torch._linalg import upper_cholesky_of_inverse
from ..toy import random_layer
from . import register_claim


def trailing_identity_error(h: torch.Tensor) -> float:
    """max_j |U_jj^2 - [(H_FF)^{-1}]_jj| / [(H_FF)^{-1}]_jj for F = {j..n-1}."""
    u, _ = upper_cholesky_of_inverse(h, 0.0)
    err = 0.0
    for j in range(h.shape[0]):
        ref = float(torch.linalg.inv(h[j:, j:])[0, 0])
        err = max(err, abs(float(u[j, j]) ** 2 - ref) / ref)
    return err


@register_claim("C16", "SparseGPT lazy batching is exact: for 2:4 the pruned W is identical for B in {4, 8, 128}, every "
                "group of 4 has exactly 2 zeros, and U_jj^2 = [(H_FF)^{-1}]_jj.", tolerance=1e-9,
                source="methods.md §8.3, §11 C16")
def check_instance(layer) -> float:
    """C16's error on ``layer`` (n divisible by 4): 2:4 SparseGPT weights for B in {4, 8, 128} vs each other
    and the scipy sweep, plus the trailing-inverse identity; raises on a wrong 2:4 pattern or a B-dependent mask."""
    m, n = layer.shape
    sols = [solve(SparseGPTPruning(layer, NM(2, 4), block_size=b), backend="torch", dtype="float64") for b in (4, 8, 128)]
    ref = solve(SparseGPTPruning(layer, NM(2, 4), block_size=4), backend="scipy")
    scale = max(1.0, float(layer.weight.abs().max()))
    err = 0.0
    for sol in sols:
        pruned = (~sol.mask).reshape(m, n // 4, 4).sum(dim=2)
        if not bool((pruned == 2).all()) or bool(sol.weights[~sol.mask].abs().max() > 0):
            raise VerificationError("a 2:4 group does not have exactly 2 pruned (zero) weights")
        if not bool((sol.mask == sols[0].mask).all()) or not bool((sol.mask == ref.mask).all()):
            raise VerificationError("the 2:4 mask depends on the block size")
        err = max(err, float((sol.weights - sols[0].weights).abs().max()) / scale,
                  float((sol.weights - ref.weights).abs().max()) / scale)
    return max(err, trailing_identity_error(layer.damped_gram()))


@register_claim("C16", "SparseGPT lazy batching is exact: for 2:4 the pruned W is identical for B in {4, 8, 128}, every "
                "group of 4 has exactly 2 zeros, and U_jj^2 = [(H_FF)^{-1}]_jj.", tolerance=1e-9,
                source="methods.md §8.3, §11 C16")
def check(rng: np.random.Generator) -> float:
    m, n = int(rng.integers(2, 6)), int(rng.choice([8, 12, 16, 24]))
    return check_instance(random_layer(rng, m, n, conditioning=str(rng.choice(["well", "correlated", "ill"]))))
