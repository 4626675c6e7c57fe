"""A throwaway formulation and solvers for registry / solve tests (registered by fixtures, then removed)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from prunekit.formulations.base import Formulation, Guarantee
from prunekit.formulations.sparsity import SparsitySpec, Unstructured
from prunekit.solvers.base import Solver
from prunekit.solvers.solution import Solution
from prunekit.verification.toy import random_layer


@dataclass(frozen=True, eq=False)
class Throwaway(Formulation):
    """Keep the largest |W| (no update); the stand-in for any new formulation."""

    sparsity: SparsitySpec = None
    guarantee: ClassVar[Guarantee] = Guarantee.HEURISTIC

    def _form(self):
        return self._base_form(is_mixed_integer=True)

    @classmethod
    def example(cls, rng):
        return cls(random_layer(rng, 3, 8), Unstructured(0.5))


def make(seed: int = 0) -> Throwaway:
    return Throwaway.example(np.random.default_rng(seed))


class MagnitudeTorch(Solver):
    """Correct torch solver."""

    def run(self, f, options):
        mask = f.sparsity.project(f.layer.weight.detach().abs().double())
        return Solution(weights=f.layer.weight * mask, mask=mask, stats={"dtype": options.dtype})


class TinyOnly(MagnitudeTorch):
    """Declines layers with more than 4 inputs."""

    max_in_features = 4


class NaNSolver(MagnitudeTorch):
    def run(self, f, options):
        sol = super().run(f, options)
        return sol.replace(weights=torch.full_like(sol.weights, float("nan")))


class NeedsMissing(MagnitudeTorch):
    requires = ("a_module_that_does_not_exist_xyz",)
