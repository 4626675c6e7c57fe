"""C20: Wanda equals OBS when features are uncorrelated (methods.md §8.2, §11 C20).

If X X^T is diagonal (and undamped), ``(|W_ij| ||X_j||)^2 = W_ij^2 / [H^{-1}]_jj`` with H = X X^T, so Wanda's
mask equals the OBS/MRP Solution-S mask, and the C1 restoration on that mask leaves the kept weights unchanged.
"""

from __future__ import annotations

import numpy as np
import torch

from ...errors import VerificationError
from ...formulations.layer import LayerData
from ...formulations.mrp import MultipleRemoval
from ...formulations.restoration import FixedMaskRestoration
from ...formulations.sparsity import NM, Unstructured
from ...formulations.wanda import WandaPruning
from ...formulations import scores
from ...solvers import solve
from . import register_claim


def orthogonal_layer(rng: np.random.Generator, m: int, n: int) -> LayerData:
    """Layer (damping 0) whose inputs have orthogonal feature rows, so G = X X^T is diagonal."""
    q, _ = np.linalg.qr(rng.standard_normal((4 * n, n)))
    x = q * 10.0 ** rng.uniform(-1, 1, n)[None, :]  # tokens x n, columns orthogonal
    w = rng.standard_normal((m, n))
    return LayerData.from_inputs(torch.from_numpy(w), torch.from_numpy(x), damping=0.0)


def check_instance(layer, spec) -> float:
    """C20's error on ``layer`` (undamped, with a diagonal G up to rounding) pruned to ``spec`` (unstructured
    or N:M): off-diagonal mass of G, Wanda^2 vs the OBS saliency, and restoration / Solution S vs Wanda's
    weights; raises if Wanda's mask differs from the Solution-S mask."""
    g = layer.gram.numpy()
    off = np.abs(g - np.diag(np.diag(g))).max() / np.abs(np.diag(g)).max()
    wanda2 = scores.wanda(layer).numpy() ** 2
    obs = scores.obs_saliency(layer, torch.from_numpy(np.diag(np.linalg.inv(g)).copy())).numpy()
    err = max(off, float(np.abs(wanda2 - obs).max() / obs.max()))
    wanda = solve(WandaPruning(layer, spec), backend="torch", dtype="float64")
    mrp = solve(MultipleRemoval(layer, spec, update="solution_s"), backend="torch", dtype="float64")
    if not bool((wanda.mask == mrp.mask).all()):
        raise VerificationError("Wanda's mask differs from the OBS (Solution-S) mask although G is diagonal")
    rest = solve(FixedMaskRestoration(layer, wanda.mask), backend="torch", dtype="float64")
    scale = max(1.0, float(layer.weight.abs().max()))
    err = max(err, float((rest.weights - wanda.weights).abs().max()) / scale,
              float((mrp.weights - wanda.weights).abs().max()) / scale)
    return err


@register_claim("C20", "If X X^T is diagonal, (|W_ij| ||X_j||)^2 = W_ij^2/[H^{-1}]_jj and the restoration on Wanda's "
                "mask leaves the kept weights unchanged.", tolerance=1e-9, source="methods.md §8.2, §11 C20")
def check(rng: np.random.Generator) -> float:
    m, n = int(rng.integers(2, 7)), int(rng.choice([4, 8, 12]))
    layer = orthogonal_layer(rng, m, n)
    spec = [Unstructured(0.5), NM(2, 4), Unstructured(0.5, scope="layer")][int(rng.integers(0, 3))]
    return check_instance(layer, spec)
