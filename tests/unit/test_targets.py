"""TargetFilter: llm-compressor style target / ignore patterns over qualified module names."""

from __future__ import annotations

import pytest

from prunekit.errors import FormulationError
from prunekit.models.targets import DEFAULT_IGNORE, TargetFilter, split_patterns

NAMES = [
    "model.layers.0.self_attn.q_proj",
    "model.layers.0.self_attn.o_proj",
    "model.layers.0.mlp.gate",                      # Mixtral / Qwen-MoE router
    "model.layers.0.mlp.gate_proj",                 # a GLU projection, not a router
    "model.layers.0.mlp.experts.3.down_proj",
    "model.layers.0.mlp.shared_expert_gate",
    "model.layers.1.block_sparse_moe.router.layer",
    "lm_head",
]


def selected(f: TargetFilter, names=NAMES) -> list[str]:
    return [n for n in names if f.selects(n)]


def test_defaults_select_every_linear_but_head_and_routers():
    f = TargetFilter.default()
    assert selected(f) == ["model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.o_proj",
                           "model.layers.0.mlp.gate_proj", "model.layers.0.mlp.experts.3.down_proj"]
    assert f.is_default and f == TargetFilter.parse(None, None) == TargetFilter.coerce(None)
    assert f.describe() == "targets: Linear, Conv1D; ignore: " + ", ".join(DEFAULT_IGNORE)
    assert f.reason("model.layers.0.mlp.gate") == "ignored by 'gate'"
    assert f.reason("model.layers.1.block_sparse_moe.router.layer") == "ignored by 're:.*router.*'"
    assert f.reason("model.layers.0.mlp.gate_proj") is None


def test_plain_names_match_whole_dotted_suffixes_only():
    f = TargetFilter.parse(["down_proj", "self_attn.q_proj"], [])
    assert selected(f) == ["model.layers.0.self_attn.q_proj", "model.layers.0.mlp.experts.3.down_proj"]
    assert not TargetFilter.parse(["proj"], []).selects("model.layers.0.mlp.down_proj")   # not a component
    assert not TargetFilter.parse(["attn.q_proj"], []).selects("model.layers.0.self_attn.q_proj")
    assert TargetFilter.parse(["lm_head"], []).selects("lm_head")                          # the whole name
    assert TargetFilter.parse(["model.layers.0.mlp.gate"], []).selects("model.layers.0.mlp.gate")


def test_regex_full_matches_the_qualified_name():
    f = TargetFilter.parse(["re:.*experts\\.\\d+\\..*"], [])
    assert selected(f) == ["model.layers.0.mlp.experts.3.down_proj"]
    assert not TargetFilter.parse(["re:down_proj"], []).selects("model.layers.0.mlp.down_proj")  # full match
    layer1 = TargetFilter.parse(None, ["re:model\\.layers\\.1\\..*"])
    assert layer1.selects("model.layers.0.self_attn.q_proj") and not layer1.selects("model.layers.1.self_attn.q_proj")


def test_ignore_wins_and_explicit_ignore_replaces_the_defaults():
    f = TargetFilter.parse(None, ["o_proj"])
    assert not f.selects("model.layers.0.self_attn.o_proj")
    assert f.selects("model.layers.0.mlp.gate")                    # defaults replaced: the router is a target now
    assert f.describe() == "targets: Linear, Conv1D; ignore: o_proj"
    both = TargetFilter.parse(["q_proj"], ["q_proj"])
    assert not both.selects("model.layers.0.self_attn.q_proj")
    assert TargetFilter.parse(None, []).describe().endswith("ignore: (none)")


def test_type_patterns_match_module_kinds():
    conv = TargetFilter.parse(["Conv1D"], [])
    assert conv.selects("transformer.h.0.attn.c_attn", kind="Conv1D")
    assert not conv.selects("transformer.h.0.attn.c_attn", kind="Linear")
    assert not TargetFilter.parse(["Linear"], []).selects("x.Linear", kind="Conv1D")


@pytest.mark.parametrize("targets, ignore, words", [
    (["re:("], None, ["not a valid regular expression", "Fix"]),
    (["re:"], None, ["empty regex"]),
    ([""], None, ["not a module name"]),
    (["mlp..down"], None, ["not a module name"]),
    ([3], None, ["must be strings"]),
    ([], None, ["nothing would be pruned"]),
    (None, {"a": 1}, ["must be a list"]),
])
def test_bad_patterns_raise_one_clear_error(targets, ignore, words):
    with pytest.raises(FormulationError) as info:
        TargetFilter.parse(targets, ignore)
    for word in words:
        assert word in str(info.value)


def test_strings_round_trips_and_coercion():
    f = TargetFilter.parse("re:.*\\.(q|k)_proj,down_proj", "lm_head, re:a{1,3}")
    assert [p.text for p in f.targets] == ["re:.*\\.(q|k)_proj", "down_proj"]
    assert [p.kind for p in f.targets] == ["regex", "name"]
    assert [p.text for p in f.ignore] == ["lm_head", "re:a{1,3}"]
    assert TargetFilter.coerce(f.to_dict()) == f and hash(TargetFilter.coerce(f.to_dict())) == hash(f)
    assert TargetFilter.coerce(f) is f
    with pytest.raises(FormulationError, match="unknown target filter keys"):
        TargetFilter.coerce({"target": ["q_proj"]})
    with pytest.raises(dataclasses_frozen_error()):
        f.targets = ()


def dataclasses_frozen_error():
    import dataclasses

    return dataclasses.FrozenInstanceError


def test_split_patterns():
    assert split_patterns("a, b,,c ") == ["a", "b", "c"]
    assert split_patterns("re:x{1,2},re:(a|b),y") == ["re:x{1,2}", "re:(a|b)", "y"]
    assert split_patterns("re:a\\,b,c") == ["re:a\\,b", "c"]


def test_unmatched_reports_typos_not_defaults():
    f = TargetFilter.parse(["q_proj", "re:.*dwn_proj"], ["lm_head", "o_prj"])
    assert f.unmatched(NAMES) == ["re:.*dwn_proj", "o_prj"]
    assert TargetFilter.default().unmatched(["model.layers.0.mlp.down_proj"]) == []
