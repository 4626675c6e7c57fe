"""Recipes: validation, JSON/YAML round trips, versioning (prunekit.models.recipe)."""

from __future__ import annotations

import json

import pytest

from prunekit.errors import DataError, FormulationError
from prunekit.models.methods import METHODS, build_formulation, units_pruned
from prunekit.models.recipe import VERSION, CalibrationSettings, Recipe, parse_structure


def full_recipe() -> Recipe:
    return Recipe(method="fasp", structure="channels", sparsity=0.3, allocation="softmax", temperature=0.7,
                  attention="heads", backend="torch", solver_options={"dtype": "float64"},
                  method_options={"score": "fasp"}, round_to=8, damping=0.02, dtype="float32",
                  calibration=CalibrationSettings(source="wikitext2", nsamples=16, seqlen=256, seed=3, mode="dense"))


def test_json_and_yaml_round_trip(tmp_path):
    recipe = full_recipe()
    assert Recipe.from_json(recipe.to_json()) == recipe
    assert Recipe.from_yaml(recipe.to_yaml()) == recipe
    assert Recipe.from_dict(json.loads(recipe.to_json())) == recipe
    for name in ("r.json", "r.yaml", "r.yml"):
        assert Recipe.load(recipe.save(tmp_path / name)) == recipe
    assert json.loads(recipe.to_json())["version"] == VERSION
    assert isinstance(Recipe.from_json(recipe.to_json()).calibration, CalibrationSettings)


def test_version_mismatch_is_rejected():
    data = full_recipe().to_dict()
    data["version"] = VERSION + 1
    with pytest.raises(DataError, match="version"):
        Recipe.from_dict(data)


def test_unknown_keys_are_rejected_with_the_valid_ones():
    data = full_recipe().to_dict()
    data["sparsity_ratio"] = 0.5
    with pytest.raises(DataError, match=r"unknown recipe key\(s\) \['sparsity_ratio'\].*valid keys"):
        Recipe.from_dict(data)
    data = full_recipe().to_dict()
    data["calibration"]["n_samples"] = 4
    with pytest.raises(DataError, match="unknown calibration key"):
        Recipe.from_dict(data)


def test_unsupported_combinations_list_what_is_supported():
    with pytest.raises(FormulationError, match="supports: channels.*Methods that support '2:4'"):
        Recipe(method="fasp", structure="2:4")
    with pytest.raises(FormulationError, match="does not support structure 'channels'"):
        Recipe(method="sparsegpt", structure="channels")
    with pytest.raises(FormulationError, match="known methods"):
        Recipe(method="obc")
    with pytest.raises(FormulationError, match="N:M"):
        Recipe(structure="4:2")
    with pytest.raises(FormulationError, match="attention"):
        Recipe(method="wanda", structure="unstructured", attention="heads")
    with pytest.raises(FormulationError, match="sparsity"):
        Recipe(sparsity=1.0)


def test_structure_parsing():
    assert parse_structure("2:4") == ("nm", (2, 4))
    assert parse_structure("4:8") == ("nm", (4, 8))
    assert parse_structure("channels") == ("channels", None)
    assert Recipe(method="sparsegpt", structure="2:4").nm == (2, 4)


def test_every_method_supports_its_documented_structures():
    assert {m for m, s in METHODS.items() if s.supports("channels")} == {"fasp", "spap", "flap", "admm"}
    assert {m for m, s in METHODS.items() if s.supports("nm")} == {"magnitude", "wanda", "sparsegpt", "mrp",
                                                                    "fista", "admm"}


def test_unknown_method_option_names_valid_fields():
    import torch

    from prunekit.formulations import LayerData, Unstructured

    layer = LayerData.from_inputs(torch.randn(4, 8), torch.randn(32, 8))
    with pytest.raises(FormulationError, match="valid options"):
        build_formulation("wanda", layer, Unstructured(0.5), {"alpha": 1.0})
    assert build_formulation("wanda", layer, Unstructured(0.5), {"variant": False}).sparsity == Unstructured(0.5)


def test_units_pruned_keeps_ceil_and_rounds_widths_up():
    assert units_pruned(64, 0.3) == 19            # keep ceil(64 * 0.7) = 45
    assert units_pruned(64, 0.3, round_to=8) == 16  # keep 45 -> 48
    assert units_pruned(10, 0.0) == 0
    assert units_pruned(4, 0.9, round_to=8) == 0    # rounding up to 8 keeps everything
