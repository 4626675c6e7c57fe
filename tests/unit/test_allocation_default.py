"""``allocation="auto"`` (prunekit.models.allocation_default): the measured-best rule per setting, resolved per run."""

from __future__ import annotations

import pytest
import torch

import prunekit
from prunekit.errors import FormulationError
from prunekit.models.allocation_default import auto_allocation, resolve_allocation
from prunekit.models.recipe import CalibrationSettings, Recipe

SMALL = CalibrationSettings(nsamples=4, seqlen=24)


@pytest.mark.parametrize("kind, sparsity, rule", [
    ("unstructured", 0.7, "owl"),
    ("unstructured", 0.6, "owl"),
    ("unstructured", 0.5, "uniform"),
    ("nm", 0.5, "uniform"),
    ("channels", 0.3, "uniform"),  # adaptive would pad the stock output to the widest layer
    ("channels", 0.7, "uniform"),
])
def test_auto_stands_for_the_measured_best_rule(kind, sparsity, rule):
    assert auto_allocation(kind, sparsity) == rule


def test_a_method_stated_rule_takes_precedence_over_the_table():
    from prunekit.models.methods import resolve_method

    assert auto_allocation("channels", 0.3, resolve_method("fasp_refit")) == "adaptive"
    assert auto_allocation("channels", 0.3, resolve_method("fasp")) == "uniform"
    assert auto_allocation("unstructured", 0.7, resolve_method("sparsegpt")) == "owl"  # no stated rule: the table


def test_auto_is_the_default_and_round_trips():
    recipe = Recipe(method="sparsegpt", sparsity=0.7)
    assert recipe.allocation == "auto"
    assert Recipe.from_dict(recipe.to_dict()).allocation == "auto"
    assert resolve_allocation(recipe).allocation == "owl"
    explicit = Recipe(method="sparsegpt", sparsity=0.7, allocation="uniform")
    assert resolve_allocation(explicit) is explicit  # an explicit rule is never replaced
    with pytest.raises(FormulationError, match="auto"):
        Recipe(allocation="best")


def _tokens():
    return torch.randint(2, 300, (4, 24), generator=torch.Generator().manual_seed(0))


def test_a_default_run_records_the_rule_it_used_and_prunes_by_it():
    """At 70% unstructured the default recipe runs OWL: the report records 'owl' (a replayable recipe) and the
    per-module sparsities differ between blocks while the global budget holds; the same run with 'uniform' gives
    every module 70%."""
    from _hf_tiny import tiny_model

    auto = prunekit.prune(tiny_model("llama"), Recipe(method="wanda", sparsity=0.7, calibration=SMALL), _tokens(),
                          progress=False)
    assert auto.report.recipe["allocation"] == "owl"
    ratios = {r.module: r.target_sparsity for r in auto.report.layers}
    assert len({round(v, 6) for v in ratios.values()}) > 1
    uniform = prunekit.prune(tiny_model("llama"), Recipe(method="wanda", sparsity=0.7, allocation="uniform",
                                                         calibration=SMALL), _tokens(), progress=False)
    assert uniform.report.recipe["allocation"] == "uniform"
    assert {round(r.target_sparsity, 6) for r in uniform.report.layers} == {0.7}
    # same global budget (OWL meets it exactly up to one row's rounding per module)
    assert abs(auto.report.nonzero_params_after - uniform.report.nonzero_params_after) <= 64 * len(ratios)


def test_channels_default_keeps_one_width_per_model():
    """Channels stay uniform by default (a stock checkpoint holds one MLP width: adaptive widths would be padded
    back to the widest layer), so every block keeps the same number of channels."""
    from _hf_tiny import tiny_model

    result = prunekit.prune(tiny_model("llama"), Recipe(method="fasp", structure="channels", sparsity=0.3,
                                                        calibration=SMALL), _tokens(), progress=False)
    assert result.report.recipe["allocation"] == "uniform"
    assert len({r.kept_units for r in result.report.layers}) == 1
