"""``fasp_refit`` / ``spap_refit`` (prunekit.formulations.coupled_refit, penalty_refit, channel_quality): FASP's
and SPAP's layer problems with adaptive allocation and a whole-block refit as the methods' own defaults; ``fasp``
and ``spap`` stay as published."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, fields
from typing import ClassVar

import numpy as np
import pytest
import torch

import prunekit
from prunekit.errors import FormulationError
from prunekit.formulations import (CoupledStructuredRemoval, PenaltyRelaxation, RefitCoupledRemoval,
                                   RefitPenaltyRelaxation)
from prunekit.models.allocation_default import resolve_allocation
from prunekit.models.block_refit import BlockRefit, resolve_block_refit
from prunekit.models.methods import Method, builtin_methods
from prunekit.models.recipe import CalibrationSettings, Recipe
from prunekit.solvers.registry import register_solver, unregister_solver
from prunekit.solvers.torch.coupled import TorchCoupledRemoval

SMALL = CalibrationSettings(nsamples=4, seqlen=24)


@contextmanager
def _solvable(formulation):
    """FASP's torch solver registered for a test-local subclass while the block runs (a method needs one)."""
    solver = register_solver(formulation, "torch")(type(f"{formulation.__name__}Solver", (TorchCoupledRemoval,), {}))
    try:
        yield
    finally:
        unregister_solver(solver)


def _resolved(**fields):
    return resolve_block_refit(resolve_allocation(Recipe(structure="channels", sparsity=0.3, **fields)))


VARIANTS = {"fasp_refit": (RefitCoupledRemoval, CoupledStructuredRemoval, "fasp"),
            "spap_refit": (RefitPenaltyRelaxation, PenaltyRelaxation, "spap")}


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("backend", ["torch", "scipy"])
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_the_layer_problem_is_the_base_methods_bit_for_bit(variant, backend, seed):
    """Same fields, same solve: the variant changes model-level defaults only."""
    cls, base, _ = VARIANTS[variant]
    form = cls.example(np.random.default_rng(seed))
    plain = base(**{f.name: getattr(form, f.name) for f in fields(base)})
    ours, theirs = (prunekit.solve(f, backend=backend) for f in (form, plain))
    assert ours.status == theirs.status
    assert torch.equal(ours.mask, theirs.mask) and torch.equal(ours.weights, theirs.weights)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_auto_means_adaptive_and_the_whole_block_refit_for_the_variants_only(variant):
    cls, _, faithful_name = VARIANTS[variant]
    assert builtin_methods()[variant].formulation is cls
    resolved = _resolved(method=variant)
    assert resolved.allocation == "adaptive"
    assert resolved.block_refit == BlockRefit(scope="block", epochs=8)
    faithful = _resolved(method=faithful_name)
    assert faithful.allocation == "uniform" and faithful.block_refit is None  # the base method as published
    explicit = _resolved(method=variant, allocation="uniform", block_refit=False)
    assert explicit.allocation == "uniform" and explicit.block_refit is None  # an explicit setting always wins


def test_a_default_run_records_and_applies_both_defaults():
    """A whole-model prune with fasp_refit's defaults records the concrete rules it ran (replayable), widths
    differ between blocks under the adaptive rule, and every block has a refit record whose kept fits lowered
    the block error."""
    from _hf_tiny import tiny_model

    tokens = torch.randint(2, 300, (4, 24), generator=torch.Generator().manual_seed(0))
    result = prunekit.prune(tiny_model("llama"), Recipe(method="fasp_refit", structure="channels", sparsity=0.3,
                                                        calibration=SMALL), tokens, progress=False)
    recipe = result.report.recipe
    assert recipe["allocation"] == "adaptive"
    assert recipe["block_refit"] == BlockRefit(scope="block", epochs=8).to_dict()
    assert len({r.kept_units for r in result.report.layers}) > 1
    refits = result.report.refits
    assert refits and all(r.error_after < r.error_before for r in refits if r.kept)
    assert any("self_attn" in name for r in refits for name in r.modules)  # scope "block": attention trains too


def test_bad_method_declarations_are_refused_with_the_fix():
    @dataclass(frozen=True, eq=False)
    class BadRefit(CoupledStructuredRemoval):
        block_refit_default: ClassVar = "yes"

    @dataclass(frozen=True, eq=False)
    class BadAllocation(CoupledStructuredRemoval):
        allocation_defaults: ClassVar = {"rows": "adaptive"}

    @dataclass(frozen=True, eq=False)
    class WrongRule(CoupledStructuredRemoval):
        allocation_defaults: ClassVar = {"channels": "owl"}

    with pytest.raises(FormulationError, match="block_refit_default must be True, False or a non-empty mapping"):
        _ = Method(BadRefit).block_refit_default
    with pytest.raises(FormulationError, match=r"unknown structure kind\(s\) \['rows'\]. Fix"):
        Method(BadAllocation).allocation_default("channels")
    with _solvable(WrongRule), pytest.raises(FormulationError, match="'owl' applies to structure 'unstructured' only"):
        _resolved(method=Method(WrongRule))


def test_a_declared_refit_mapping_is_validated_like_a_recipes():
    @dataclass(frozen=True, eq=False)
    class TooMany(CoupledStructuredRemoval):
        block_refit_default: ClassVar = {"epochs": 0}

    with _solvable(TooMany), pytest.raises(FormulationError, match="epochs must be an int >= 1"):
        _resolved(method=Method(TooMany))


def test_a_prepass_taken_for_auto_scores_units_as_the_rule_auto_means():
    """``importance_prepass`` with ``allocation="auto"`` resolves the rule first: for fasp_refit its unit scores are
    the adaptive rule's standardized ones (a pre-pass taken with raw sums gave another allocation)."""
    from _hf_tiny import tiny_model

    from prunekit.models.allocate import importance_prepass
    from prunekit.models.stores import ModelBlocks

    tokens = torch.randint(2, 300, (4, 24), generator=torch.Generator().manual_seed(0))
    model = ModelBlocks(tiny_model("llama"))
    auto = importance_prepass(model, Recipe(method="fasp_refit", structure="channels", sparsity=0.3,
                                            calibration=SMALL), tokens, progress=False)
    adaptive = importance_prepass(model, Recipe(method="fasp_refit", structure="channels", sparsity=0.3,
                                                allocation="adaptive", calibration=SMALL), tokens, progress=False)
    uniform = importance_prepass(model, Recipe(method="fasp_refit", structure="channels", sparsity=0.3,
                                               allocation="uniform", calibration=SMALL), tokens, progress=False)
    assert all(torch.equal(a.scores, b.scores) for a, b in zip(auto, adaptive))
    assert not all(torch.equal(a.scores, u.scores) for a, u in zip(auto, uniform))
