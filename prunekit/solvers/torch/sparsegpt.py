"""Torch SparseGPT (methods.md §8.3): the lazy-block OBS column sweep of IST-DASLab/sparsegpt.

Follows the reference ``fasterprune`` loop: dead inputs (G_jj = 0) get H_jj := 1 and W[:, j] := 0;
``H += percdamp * mean(diag H) I``; ``U`` = upper Cholesky factor of H^{-1}; columns are swept in blocks of
``block_size`` with the lazy update ``W[:, i2:] -= Err @ U[i1:i2, i2:]`` after each block.  The masks follow
:class:`~prunekit.formulations.sparsegpt.SparseGPTPruning` (exact counts; per-row blocks for
``Unstructured(scope="row")``; SparseGPT's mask is per block, so a per-row count would otherwise only be met
in aggregate).  Rows are swept ``row_batch`` at a time inside each block (the block's unstructured mask is
chosen for all rows first, so the answer does not depend on ``row_batch``).
"""

from __future__ import annotations

import math
from typing import Optional

import torch

from ...formulations.sparsegpt import SparseGPTPruning
from ...formulations.sparsity import NM, SparsitySpec, Unstructured, _stable_topk_keep
from ..base import Solver
from ..options import SolverOptions
from ..registry import register_solver
from ..solution import Solution
from ._linalg import upper_cholesky_of_inverse


def _floor(ratio: float, size: int) -> int:
    return int(math.floor(ratio * size + 1e-9))


def _lowest(scores: torch.Tensor, count: int, dim: int = -1) -> torch.Tensor:
    """Bool mask of the ``count`` lowest scores along ``dim`` (complement of the stable top-k keep)."""
    return ~_stable_topk_keep(scores, scores.shape[dim] - count, dim=dim)


def block_mask(scores: torch.Tensor, spec: Unstructured, i1: int, i2: int) -> torch.Tensor:
    """Unstructured prune-mask of one block [i1, i2): layer scope over all rows x columns, or per row."""
    m = scores.shape[0]
    if spec.scope == "layer":
        k = _floor(spec.ratio, m * i2) - _floor(spec.ratio, m * i1)
        return _lowest(scores.reshape(-1), k, dim=0).reshape(scores.shape)
    k = _floor(spec.ratio, i2) - _floor(spec.ratio, i1)
    return _lowest(scores, k, dim=1)


def sparsegpt_sweep(weight: torch.Tensor, upper: torch.Tensor, spec: SparsitySpec, block_size: int,
                    *, row_batch: Optional[int] = None) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Run the sweep on ``weight`` (m, n) with ``U`` (n, n); returns ``(W_hat, prune_mask, loss)``.

    ``loss`` is the sweep's own accumulated ``sum (w - q)^2 / U_ii^2 / 2``.  Each block is swept transposed,
    (block, m) contiguous, so column i is the contiguous row ``w1[i]`` and its rank-1 update touches contiguous
    memory (measured 1.5x faster than sweeping columns of the (m, block) copy); the arithmetic per entry is
    the same, so masks agree with the untransposed sweep and weights up to the BLAS kernels' rounding.
    """
    w = weight.clone()
    m, n = w.shape
    prune = torch.zeros(m, n, dtype=torch.bool, device=w.device)
    diag = upper.diagonal()
    step = row_batch or m
    loss = 0.0
    zero = torch.zeros((), dtype=w.dtype, device=w.device)
    for i1 in range(0, n, block_size):
        i2 = min(i1 + block_size, n)
        w1 = w[:, i1:i2].t().contiguous()  # (block, m): row i is column i1 + i of W
        u1 = upper[i1:i2, i1:i2]
        d1 = diag[i1:i2]
        pivots = d1.tolist()  # U_ii as Python floats: one scalar division per column, no 0-d tensors
        if isinstance(spec, Unstructured):  # chosen on the (m, block) layout: ties break in its index order
            mask1 = block_mask(w[:, i1:i2] ** 2 / d1.unsqueeze(0) ** 2, spec, i1, i2).t().contiguous()
        else:
            mask1 = torch.zeros_like(w1, dtype=torch.bool)
        err1 = torch.zeros_like(w1)
        for r0 in range(0, m, step):
            rows = slice(r0, min(r0 + step, m))
            wr, maskr, errr = (w1, mask1, err1) if step >= m else (w1[:, rows], mask1[:, rows], err1[:, rows])
            for i in range(i2 - i1):
                if isinstance(spec, NM) and i % spec.m == 0:
                    tmp = wr[i:i + spec.m] ** 2 / d1[i:i + spec.m].unsqueeze(1) ** 2
                    maskr[i:i + spec.m] = _lowest(tmp, spec.n, dim=0)
                # err = (w - q) / U_ii with q = w off the mask and 0 on it; W[:, i:] -= err U[i, i:] (this also
                # sets column i to q: w - (w / U_ii) U_ii on pruned entries, zeroed exactly by the caller's mask)
                err = errr[i]
                torch.where(maskr[i], wr[i], zero, out=err).div_(pivots[i])
                wr[i:].addr_(u1[i, i:], err, alpha=-1.0)
        # the sweep's loss sum (w - q)^2 / U_ii^2 / 2 is 1/2 ||Err||^2
        loss += 0.5 * float(torch.sum(err1 * err1))
        w[:, i1:i2] = w1.masked_fill(mask1, 0.0).t()
        w[:, i2:] -= err1.t() @ upper[i1:i2, i2:]
        prune[:, i1:i2] = mask1.t()
    return w, prune, float(loss)


@register_solver(SparseGPTPruning, backend="torch")
class TorchSparseGPT(Solver):
    """SparseGPT's column sweep with lazy blocks (one code path for CPU/CUDA)."""

    def run(self, formulation: SparseGPTPruning, options: SolverOptions) -> Solution:
        layer = formulation.layer
        dtype, device = options.torch_dtype, options.resolve_device(layer.weight)
        g = layer.gram.detach().to(device=device, dtype=dtype).clone()
        w = layer.weight.detach().to(device=device, dtype=dtype).clone()
        dead = g.diagonal() == 0
        g.diagonal()[dead] = 1.0
        w[:, dead] = 0.0
        lam = formulation.relative_damping * float(g.diagonal().mean())
        upper, used = upper_cholesky_of_inverse(g, lam, max_tries=options.max_damping_tries)
        w_hat, prune, loss = sparsegpt_sweep(w, upper, formulation.sparsity, formulation.block_size,
                                             row_batch=options.row_batch)
        keep = (~prune).to(layer.weight.device)
        weights = w_hat.to(device=layer.weight.device, dtype=layer.weight.dtype).masked_fill(~keep, 0.0)
        return Solution(weights=weights, mask=keep, status="heuristic",
                        stats={"damping_used": used, "sweep_loss": loss, "dead_inputs": int(dead.sum())})
