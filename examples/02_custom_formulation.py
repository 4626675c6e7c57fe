"""Define a new formulation, give it a torch solver and a reference twin, and verify both.

``EnergyChannelDrop`` removes the input channels whose *unrestored* removal error is smallest,

    S_j = 1/2 G_jj ||W_:,j||^2      (the error of zeroing column j alone, no compensation),

keeps the best groups of a ``Channels`` spec and restores the kept columns by damped least squares
(methods.md §1 fact 2).  Registering the two solvers is all it takes for the conformance suite to test
them (contracts, determinism, purity, certificates, torch vs reference); we then measure the gap to the
brute-force optimum of the same channel problem.  Run:  python examples/02_custom_formulation.py
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

import prunekit
from prunekit.formulations import Channels, Formulation, Guarantee, MaskedReconstructionMIP, restoration_stationarity
from prunekit.solvers import Solution, Solver, register_solver, unregister_solver
from prunekit.solvers.options import ReferenceOptions
from prunekit.verification.conformance import run_conformance
from prunekit.verification.toy import CONDITIONINGS, random_layer


@dataclass(frozen=True, eq=False)
class EnergyChannelDrop(Formulation):
    """Drop the channel groups with the least removal energy, then restore by least squares.

    .. math::  S_j = \\tfrac12 G_{jj} \\lVert W_{:,j} \\rVert_2^2, \\quad
               \\hat W_{:,S} = W_{:,S} + W_{:,P} \\hat G_{PS} \\hat G_{SS}^{-1}, \\quad \\hat W_{:,P} = 0

    W (m, n), G (n, n), damped G_hat = G + lambda I.  Guarantee: HEURISTIC.  Paper: none (an example).
    """

    sparsity: Channels = None
    guarantee: ClassVar[Guarantee] = Guarantee.HEURISTIC

    def _form(self):
        return self._base_form(is_mixed_integer=True, row_separable=False)

    def _extra_residuals(self, solution):
        return {"stationarity": restoration_stationarity(self.layer, solution.weights, solution.mask)}

    @classmethod
    def example(cls, rng):
        layer = random_layer(rng, int(rng.integers(2, 6)), 8, conditioning=str(rng.choice(CONDITIONINGS)))
        return cls(layer, Channels(count=int(rng.integers(1, 4)), group_size=int(rng.choice([1, 2]))))


class TorchEnergyChannelDrop(Solver):
    """Torch solver: scores, projection and one |S| x |S| solve in ``options.dtype``."""

    def run(self, f, options):
        w0 = f.layer.weight
        w = w0.detach().to(options.torch_dtype)
        g = f.layer.damped_gram(dtype=options.torch_dtype, device=w.device)
        scores = 0.5 * f.layer.gram.diagonal().to(w) * (w**2).sum(0)
        keep = f.sparsity.keep_columns_from_group_scores(f.sparsity.group_scores(scores.double()), w.shape[1])
        s, p = torch.nonzero(keep).squeeze(1), torch.nonzero(~keep).squeeze(1)
        out = torch.zeros_like(w)
        rhs = w[:, p] @ g[p][:, s]
        out[:, s] = w[:, s] + torch.linalg.solve(g[s][:, s], rhs.T).T
        mask = keep.unsqueeze(0).expand_as(w).clone()
        return Solution(weights=out.to(w0.dtype), mask=mask, kept_columns=s)


class ScipyEnergyChannelDrop(Solver):
    """Reference twin: float64 numpy scores and a SciPy Cholesky solve (scipy imported inside run)."""

    options_type = ReferenceOptions

    def run(self, f, options):
        from scipy.linalg import cho_factor, cho_solve

        w = f.layer.weight.detach().cpu().double().numpy()
        g = f.layer.damped_gram(dtype=torch.float64, device="cpu").numpy()
        scores = 0.5 * f.layer.gram.detach().cpu().double().numpy().diagonal() * (w**2).sum(0)
        keep = f.sparsity.keep_columns_from_group_scores(
            f.sparsity.group_scores(torch.from_numpy(scores)), w.shape[1]).numpy()
        out = np.zeros_like(w)
        rhs = w[:, ~keep] @ g[np.ix_(~keep, keep)]
        out[:, keep] = w[:, keep] + cho_solve(cho_factor(g[np.ix_(keep, keep)]), rhs.T).T
        mask = torch.from_numpy(np.broadcast_to(keep, w.shape).copy())
        return Solution(weights=torch.from_numpy(out).to(f.layer.weight), mask=mask,
                        kept_columns=torch.from_numpy(np.nonzero(keep)[0]))


def main() -> int:
    torch_cls = register_solver(EnergyChannelDrop, backend="torch")(TorchEnergyChannelDrop)
    ref_cls = register_solver(EnergyChannelDrop, backend="scipy")(ScipyEnergyChannelDrop)
    try:
        results = run_conformance(seeds=(0, 1), solvers=[torch_cls, ref_cls])
        failed = [r for r in results if r["status"] != "pass"]
        print(f"conformance: {len(results) - len(failed)} of {len(results)} checks pass")
        for r in failed:
            print(f"  FAIL {r['check']}: {r['message']}")

        rng = np.random.default_rng(0)
        gaps = []
        for conditioning in ("well", "correlated", "ill"):
            layer = random_layer(rng, 4, 10, conditioning=conditioning, damping=1e-6)
            spec = Channels(count=3)
            sol = prunekit.solve(EnergyChannelDrop(layer, spec), backend="torch", dtype="float64")
            best = prunekit.solve(MaskedReconstructionMIP(layer, spec), backend="bruteforce")
            gaps.append(sol.objective / best.objective)
            print(f"{conditioning:>10}: EnergyChannelDrop f = {sol.objective:10.4f}, "
                  f"optimum f* = {best.objective:10.4f}, gap {gaps[-1]:.3f}")
        print(f"mean gap to the brute-force optimum: {np.mean(gaps):.3f}")
        ok = not failed and min(gaps) >= 1.0 - 1e-9
    finally:
        unregister_solver(torch_cls)
        unregister_solver(ref_cls)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
