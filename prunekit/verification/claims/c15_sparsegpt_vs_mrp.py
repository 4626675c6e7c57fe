"""C15: SparseGPT with a fixed mask never beats MRP Solution M (methods.md §6.2, §11 C15).

SparseGPT's column sweep removes each pruned weight with an OBS update restricted to the columns on its right
and freezes the columns it has passed; for the same mask its (damped) error is >= that of Solution M (the exact
optimum), with equality when every pruned column precedes every kept column.  The blocked MRP variant does
*not* dominate SparseGPT (see ``blocked_vs_sparsegpt``).
"""

from __future__ import annotations

import numpy as np
import torch

from ...errors import VerificationError
from ...formulations.restoration import FixedMaskRestoration
from ...formulations.sparsegpt import SparseGPTPruning
from ...formulations.sparsity import NM, Unstructured
from ...solvers import solve
from ..toy import random_layer
from . import register_claim


def sparsegpt_fixed_mask(w: np.ndarray, prune: np.ndarray, h: np.ndarray) -> np.ndarray:
    """SparseGPT's left-to-right sweep with a given prune-mask (U = upper Cholesky of H^{-1})."""
    u = np.linalg.cholesky(np.linalg.inv(h)).T
    w = w.copy()
    for i in range(w.shape[1]):
        q = np.where(prune[:, i], 0.0, w[:, i])
        err = (w[:, i] - q) / u[i, i]
        w[:, i:] -= np.outer(err, u[i, i:])
        w[:, i] = q
    return w


def damped_loss(w: np.ndarray, w_hat: np.ndarray, h: np.ndarray) -> np.ndarray:
    """Per-row 1/2 dw H dw^T."""
    d = w_hat - w
    return 0.5 * np.sum((d @ h) * d, axis=1)


def solution_m(layer, prune: np.ndarray) -> np.ndarray:
    sol = solve(FixedMaskRestoration(layer, torch.from_numpy(~prune)), backend="torch", dtype="float64")
    return sol.weights.numpy()


def check_instance(layer, prune: np.ndarray, prefix_counts, spec) -> float:
    """C15's error on ``layer``: raises if SparseGPT beats Solution M on the prune-mask ``prune`` (m x n bool)
    or the packaged SparseGPT solver (on ``spec``, any unstructured or N:M spec) beats Solution M on its own
    mask; returns the relative loss
    gap for the prefix masks that prune the first ``prefix_counts[i]`` columns of row i (should be 0)."""
    w, h = layer.weight.numpy(), layer.damped_gram().numpy()
    n = w.shape[1]
    prune = np.asarray(prune, dtype=bool)
    l_sgpt = damped_loss(w, sparsegpt_fixed_mask(w, prune, h), h)
    l_m = damped_loss(w, solution_m(layer, prune), h)
    if np.any(l_sgpt < l_m - 1e-9 * np.maximum(1.0, l_m)):
        raise VerificationError(f"SparseGPT beat Solution M on a fixed mask: {l_sgpt} < {l_m}")
    # equality: per row, the pruned columns are a prefix
    prefix = np.arange(n)[None, :] < np.asarray(prefix_counts)[:, None]
    l1 = damped_loss(w, sparsegpt_fixed_mask(w, prefix, h), h)
    l2 = damped_loss(w, solution_m(layer, prefix), h)
    err = float(np.max(np.abs(l1 - l2) / np.maximum(1.0, l2)))
    # the packaged solver, on its own mask, is dominated by Solution M on that mask (block: a multiple of M near 128)
    block = 128 // spec.m * spec.m if isinstance(spec, NM) else 128
    sol = solve(SparseGPTPruning(layer, spec, block_size=block), backend="torch", dtype="float64")
    own = ~sol.mask.numpy()
    if np.sum(damped_loss(w, sol.weights.numpy(), h)) < np.sum(damped_loss(w, solution_m(layer, own), h)) * (1 - 1e-9) - 1e-12:
        raise VerificationError("the SparseGPT solver beat Solution M on its own mask")
    return err


@register_claim("C15", "SparseGPT with a fixed mask has error >= MRP Solution M, with equality when all pruned columns "
                "precede all kept columns.", tolerance=1e-8, source="methods.md §6.2, §11 C15")
def check(rng: np.random.Generator) -> float:
    m, n = int(rng.integers(2, 6)), int(rng.choice([4, 8, 12]))
    layer = random_layer(rng, m, n, conditioning=str(rng.choice(["well", "correlated", "ill"])))
    prune = rng.random((m, n)) < 0.5
    prefix_counts = rng.integers(0, n + 1, size=m)
    spec = NM(2, 4) if n % 4 == 0 and rng.random() < 0.5 else Unstructured(0.5, scope="layer")
    return check_instance(layer, prune, prefix_counts, spec)


def blocked_vs_sparsegpt(rng: np.random.Generator, block_size: int = 4) -> tuple[float, float]:
    """(blocked-MRP loss, SparseGPT loss) for the same random 2:4-feasible mask on a random layer (n = 12)."""
    from ...formulations.mrp import MultipleRemoval

    layer = random_layer(rng, 3, 12, conditioning="correlated")
    sol = solve(MultipleRemoval(layer, NM(2, 4), block_size=block_size), backend="torch", dtype="float64")
    w, h = layer.weight.numpy(), layer.damped_gram().numpy()
    prune = ~sol.mask.numpy()
    return float(damped_loss(w, sol.weights.numpy(), h).sum()), float(damped_loss(w, sparsegpt_fixed_mask(w, prune, h), h).sum())
