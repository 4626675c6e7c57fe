"""Verify heuristic pruning of a toy layer against the exact optimum.

The masked reconstruction problem  min 1/2 ||W_hat X - W X||^2  over feasible masks is a mixed-integer
program; on a toy layer (n <= 12) ``backend="bruteforce"`` solves it exactly.  We compare two torch
heuristics with that optimum:

* FASP (``CoupledStructuredRemoval``) for channel sparsity: column score + least-squares restoration;
* MRP (``MultipleRemoval``) for unstructured and 2:4 sparsity: OBS-score mask + exact Solution M.

For each we print the optimality gap f / f* (>= 1; 1 = optimal) and check the certificates with the
verification helpers.  Run:  python examples/01_toy_layer_verify.py
"""

from __future__ import annotations

import sys

import numpy as np

import prunekit
from prunekit.formulations import NM, Channels, CoupledStructuredRemoval, MaskedReconstructionMIP, MultipleRemoval, Unstructured
from prunekit.verification import assert_kkt, assert_relaxation_bound, assert_spec_obeyed, for_dtype
from prunekit.verification.toy import random_layer


def compare(name, heuristic, spec, layer):
    """Solve the exact MIP and the heuristic on ``layer``; print and return the gap f / f*."""
    exact = prunekit.solve(MaskedReconstructionMIP(layer, spec), backend="bruteforce")
    sol = prunekit.solve(heuristic, backend="torch", dtype="float64")
    assert_spec_obeyed(spec, sol)  # feasible mask, zero off the mask
    assert_kkt(heuristic, sol, for_dtype("float64"))  # restored weights are optimal for their mask
    # The optimum lower-bounds every feasible point: the heuristic can never beat it.
    assert_relaxation_bound(exact.objective, sol.objective, for_dtype("float64"),
                            scale=layer.dense_energy())
    gap = sol.objective / exact.objective if exact.objective > 0 else 1.0
    same = bool((sol.mask == exact.mask).all())
    print(f"  {name:<34} f* = {exact.objective:10.4f}   f = {sol.objective:10.4f}   "
          f"gap = {gap:6.3f}   same mask: {same}")
    return gap


def main() -> int:
    rng = np.random.default_rng(0)
    gaps = {"FASP channels": [], "MRP unstructured 50%": [], "MRP 2:4": []}
    for conditioning in ("well", "correlated", "ill"):
        layer = random_layer(rng, m=4, n=8, conditioning=conditioning, damping=1e-6)
        print(f"layer 4 x 8, {conditioning}-conditioned inputs (dense energy {layer.dense_energy():.3f})")
        spec = Channels(count=3)
        gaps["FASP channels"].append(compare("FASP (3 of 8 channels)", CoupledStructuredRemoval(layer, spec), spec, layer))
        spec = Unstructured(0.5)
        gaps["MRP unstructured 50%"].append(compare("MRP (unstructured 50%)", MultipleRemoval(layer, spec), spec, layer))
        spec = NM(2, 4)
        gaps["MRP 2:4"].append(compare("MRP (2:4, exact group patterns)",
                                       MultipleRemoval(layer, spec, mask_score="exact_groups"), spec, layer))
    print("\nmean optimality gap f / f* (1 = optimal):")
    for name, values in gaps.items():
        print(f"  {name:<22} {np.mean(values):6.3f}   worst {max(values):6.3f}")
    worst = min(min(v) for v in gaps.values())
    return 0 if worst >= 1.0 - 1e-9 else 1


if __name__ == "__main__":
    sys.exit(main())
