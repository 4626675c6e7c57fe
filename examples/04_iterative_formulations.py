"""The iterative formulations on one toy layer, each checked against an exact reference.

* SPAP's penalty method (``PenaltyRelaxation``, methods.md §3.3, update rules derived) chooses 4 of 12
  channels to remove; the brute-force MIP (``MaskedReconstructionMIP``, backend "bruteforce") gives the optimum.
* FISTA on the l1 relaxation (``L1Relaxation``, FISTAPruner, methods.md §5): the pure lasso solved by torch FISTA
  against CVXPY, then the full FISTAPruner loop (adaptive lambda, hard projection onto 50%) against SparseGPT.
* ADMM splitting with the closed-form column projection (``ADMMSplit``, StructPrune, derived).
* StructPrune's softmax allocation of a global budget across layers (``LayerAllocation``), meeting it exactly.

Run:  python examples/04_iterative_formulations.py   (CPU, a few seconds)
"""

from __future__ import annotations

import sys

import numpy as np
import torch

import prunekit
from prunekit.formulations import (ADMMSplit, Channels, L1Relaxation, LayerAllocation, LayerData,
                                   MaskedReconstructionMIP, PenaltyRelaxation, SparseGPTPruning, Unstructured)


def glu_layer(rng: np.random.Generator, d: int = 6, f: int = 12, tokens: int = 96) -> LayerData:
    """down_proj of a toy GLU MLP: inputs Z = SiLU(A x) * (B x), weight (d x f)."""
    x = rng.standard_normal((tokens, d))
    a, b = rng.standard_normal((f, d)), rng.standard_normal((f, d))
    za = x @ a.T
    z = za / (1.0 + np.exp(-za)) * (x @ b.T)
    w = rng.standard_normal((d, f))
    return LayerData.from_inputs(torch.from_numpy(w), torch.from_numpy(z), damping=1e-6)


def main() -> int:
    rng = np.random.default_rng(0)
    layer = glu_layer(rng)
    spec = Channels(count=4)

    exact = prunekit.solve(MaskedReconstructionMIP(layer, spec), backend="bruteforce")
    spap = prunekit.solve(PenaltyRelaxation(layer, spec), dtype="float64")
    admm = prunekit.solve(ADMMSplit(layer, spec), dtype="float64")
    print(f"channels 4 of 12: optimum f* = {exact.objective:.4f}")
    for name, sol in (("SPAP penalty", spap), ("ADMM", admm)):
        print(f"  {name:<13} f = {sol.objective:.4f}  gap {sol.objective / exact.objective:.3f}  "
              f"kept {sol.kept_columns.tolist()}")
    ok = spap.objective >= exact.objective * (1 - 1e-9) and admm.objective >= exact.objective * (1 - 1e-9)

    lasso = L1Relaxation(layer, Unstructured(0.5), lam=0.05 * L1Relaxation(layer, Unstructured(0.5)).lambda_max(),
                         adaptive=False, project=False, K=2000, eps=0.0)
    fista = prunekit.solve(lasso, backend="torch", dtype="float64")
    ref = prunekit.solve(lasso, backend="cvxpy")
    print(f"lasso at 5% of lambda_max: FISTA {fista.objective:.6f} vs CVXPY {ref.objective:.6f} "
          f"(zeros: {int((fista.weights.abs() < 1e-9).sum())} of {fista.weights.numel()})")
    ok &= abs(fista.objective - ref.objective) <= 1e-5 * max(1.0, ref.objective)

    pruner = prunekit.solve(L1Relaxation(layer, Unstructured(0.5), warm_start="sparsegpt"), dtype="float64")
    sgpt = prunekit.solve(SparseGPTPruning(layer, Unstructured(0.5)), dtype="float64")
    print(f"50% unstructured: FISTAPruner {pruner.objective:.4f} (sparsity {pruner.sparsity:.2f}) "
          f"vs SparseGPT {sgpt.objective:.4f}")

    energies = torch.tensor([3.0, 1.0, 2.0, 0.5])
    alloc = prunekit.solve(LayerAllocation(sizes=[64, 64, 128, 128], mean_sparsity=0.3, energies=energies,
                                           rule="softmax", temperature=1.0))
    counts = alloc.extras.get("counts")
    print(f"softmax allocation of 30% over layers with energies {energies.tolist()}: pruned units {counts}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
