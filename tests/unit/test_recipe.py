"""Recipes: validation, JSON/YAML round trips, versioning (prunekit.models.recipe)."""

from __future__ import annotations

import json

import pytest

from prunekit.errors import DataError, FormulationError
from prunekit.models.methods import Method, builtin_methods, resolve_method, units_pruned
from prunekit.models.recipe import VERSION, CalibrationSettings, Recipe
from prunekit.models.structure import Structure


def full_recipe() -> Recipe:
    return Recipe(method="fasp", structure="channels", sparsity=0.3, allocation="softmax", temperature=0.7,
                  attention="heads", backend="torch", solver_options={"dtype": "float64"},
                  options={"score": "fasp"}, round_to=8, damping=0.02, dtype="float32",
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
    with pytest.raises(FormulationError, match="supports: channels.*Methods that support N:M"):
        Recipe(method="fasp", structure="2:4")
    with pytest.raises(FormulationError, match="does not support structure 'channels'"):
        Recipe(method="sparsegpt", structure="channels")
    with pytest.raises(FormulationError, match="built-in methods"):
        Recipe(method="obc")
    with pytest.raises(FormulationError, match="N:M"):
        Recipe(structure="4:2")
    with pytest.raises(FormulationError, match="attention"):
        Recipe(method="wanda", structure="unstructured", attention="heads")
    with pytest.raises(FormulationError, match="sparsity"):
        Recipe(sparsity=1.0)


def test_structure_is_parsed_once_into_a_typed_value():
    assert Structure.parse("2:4") == Structure("nm", 2, 4)
    assert Structure.parse("4:8").fixed_ratio == 0.5
    assert Structure.parse("channels") == Structure("channels")
    recipe = Recipe(method="sparsegpt", structure="2:4")
    assert recipe.structure == Structure("nm", 2, 4) and str(recipe.structure) == "2:4"
    assert recipe.sparsity == 0.5  # N:M fixes the ratio
    assert isinstance(recipe.method, Method) and recipe.method.name == "sparsegpt"


def test_yaml_keeps_an_unquoted_n_m_structure():
    """YAML 1.1 reads 2:4 as the base-60 integer 124; recipes must not."""
    recipe = Recipe.from_yaml("method: sparsegpt\nstructure: 2:4\n")
    assert recipe.structure == Structure("nm", 2, 4)
    assert Recipe.from_yaml("method: wanda\nstructure: unstructured\nsparsity: 0.25\n").sparsity == 0.25
    with pytest.raises(FormulationError, match="base-60"):
        Recipe.from_dict({"method": "sparsegpt", "structure": 124})


def test_contradictory_settings_are_errors():
    with pytest.raises(FormulationError, match="contradicts structure 2:4"):
        Recipe(method="sparsegpt", structure="2:4", sparsity=0.3)
    assert Recipe(method="sparsegpt", structure="2:4", sparsity=0.5).sparsity == 0.5
    with pytest.raises(FormulationError, match="cannot change an N:M ratio"):
        Recipe(method="wanda", structure="2:4", allocation="softmax")
    with pytest.raises(FormulationError, match="round_to"):
        Recipe(method="wanda", structure="unstructured", round_to=8)


def test_coerce_accepts_recipe_dict_and_file(tmp_path):
    recipe = full_recipe()
    assert Recipe.coerce(recipe) is recipe
    assert Recipe.coerce(recipe.to_dict()) == recipe
    path = recipe.save(tmp_path / "r.yaml")
    assert Recipe.coerce(str(path)) == recipe and Recipe.coerce(path) == recipe
    with pytest.raises(DataError, match="does not exist"):
        Recipe.coerce(tmp_path / "missing.yaml")


def test_every_method_supports_its_documented_structures():
    methods = builtin_methods()
    assert {m for m, s in methods.items() if s.supports(Structure("channels"))} == {
        "fasp", "fasp_refit", "spap", "spap_refit", "flap", "admm"}
    assert {m for m, s in methods.items() if s.supports(Structure("nm", 2, 4))} == {
        "magnitude", "wanda", "sparsegpt", "mrp", "fista", "fista_refit", "admm"}


def test_unknown_method_option_names_valid_fields():
    import torch

    from prunekit.formulations import LayerData, Unstructured

    method = resolve_method("wanda")
    layer = LayerData.from_inputs(torch.randn(4, 8), torch.randn(32, 8))
    with pytest.raises(FormulationError, match="its options are its fields"):
        method.formulation_for(layer, Unstructured(0.5), {"alpha": 1.0})
    with pytest.raises(FormulationError, match="unknown option"):
        Recipe(method="wanda", options={"alpha": 1.0})
    assert method.formulation_for(layer, Unstructured(0.5), {"variant": False}).sparsity == Unstructured(0.5)


def test_units_pruned_keeps_ceil_and_rounds_widths_up():
    assert units_pruned(64, 0.3) == 19            # keep ceil(64 * 0.7) = 45
    assert units_pruned(64, 0.3, round_to=8) == 16  # keep 45 -> 48
    assert units_pruned(10, 0.0) == 0
    assert units_pruned(4, 0.9, round_to=8) == 0    # rounding up to 8 keeps everything


def test_round_to_auto_rounds_wide_groups_to_64_and_leaves_small_ones():
    """The default kept-width rounding: multiples of 64 for groups of >= 1024 units (fast kernels), none below."""
    from prunekit.models.methods import resolve_round_to

    assert Recipe(method="fasp", structure="channels", sparsity=0.3).round_to == "auto"
    assert resolve_round_to("auto", 1536) == 64 and resolve_round_to("auto", 64) == 1 and resolve_round_to(8, 64) == 8
    assert 1536 - units_pruned(1536, 0.3, "auto") == 1088   # SmolLM2 MLP at 30%: 1076 -> 1088
    assert 14336 - units_pruned(14336, 0.3, "auto") == 10048  # LLaMA-3-8B MLP: ceil(10035.2) = 10036 -> 10048
    assert units_pruned(64, 0.3, "auto") == units_pruned(64, 0.3, 1) == 19
    assert Recipe(method="wanda", structure="unstructured").round_to == "auto"  # no effect without channels
    with pytest.raises(FormulationError, match="'auto' or a positive int"):
        Recipe(method="fasp", structure="channels", round_to="big")
