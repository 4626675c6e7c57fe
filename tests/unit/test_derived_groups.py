"""prunekit.models.derived_groups: every adapter serves derived groups, probed once per block layout; a pruned block
is a new layout (its groups describe its shapes); a kept sample probes new layouts without the model's forward."""

from __future__ import annotations

import copy

import pytest
import torch

from _tiny_models import tiny_model, tokens

pytestmark = pytest.mark.hf

from prunekit.models import derived_groups  # noqa: E402
from prunekit.models.adapters import adapter_for  # noqa: E402
from prunekit.models.coupling import derive_coupling  # noqa: E402


@pytest.fixture(autouse=True, scope="module")
def modeling_imported(one_thread_module):
    import transformers.models.llama.modeling_llama  # noqa: F401


@pytest.fixture
def probes(monkeypatch):
    """Counts the dependency probes ``block_coupling`` runs (block index per probe)."""
    calls: list[int] = []

    def counted(model, adapter, index, *args, **kwargs):
        calls.append(index)
        return derive_coupling(model, adapter, index, *args, **kwargs)

    monkeypatch.setattr(derived_groups, "derive_coupling", counted)
    return calls


def as_set(groups):
    return {(g.name, g.kind, g.block, g.downstream, g.units, tuple(sorted(g.upstream.items()))) for g in groups}


@pytest.mark.parametrize("kind", ["llama", "opt", "gpt2"])
def test_one_probe_per_layout_and_each_block_gets_its_own_names(kind, probes):
    model = tiny_model(kind)
    adapter = adapter_for(model)
    served = [adapter.coupled_groups(model, i) for i in range(2)]
    assert probes == [0]  # two blocks, one layout: block 1 reuses block 0's probe
    assert as_set(served[1]) == as_set(derive_coupling(model, adapter, 1).groups)  # renamed, not block 0's names
    assert all(g.block == 1 and g.name.startswith(adapter.block_prefix(model, 1)) for g in served[1])
    adapter.coupled_groups(model, 0)
    assert probes == [0]  # cached
    other = tiny_model(kind, seed=1)  # another model object: its own probe (shapes alone do not identify heads)
    adapter.coupled_groups(other, 1)
    assert probes == [0, 1]


def test_a_pruned_block_is_a_new_layout_and_its_groups_describe_the_kept_shapes(probes):
    from prunekit.models.plan import GroupEdit, PruningPlan
    from prunekit.models.surgery import apply_

    model = tiny_model("llama")
    adapter = adapter_for(model)
    (glu,) = [g for g in adapter.coupled_groups(model, 1) if g.kind == "glu_channel"]
    (heads,) = [g for g in adapter.coupled_groups(model, 1) if g.kind == "gqa_group"]
    apply_(model, PruningPlan(group_edits={
        glu.name: GroupEdit(glu.name, glu.kind, tuple(range(0, 64, 2)), glu.num_units),
        heads.name: GroupEdit(heads.name, heads.kind, (1,), heads.num_units)}))
    assert probes == [1]  # the first block asked for is probed
    now = {g.kind: g for g in adapter.coupled_groups(model, 1)}
    assert probes == [1, 1]  # block 1's new shapes: probed again
    assert now["glu_channel"].num_units == 32 and now["gqa_group"].num_units == 1  # one KV head, two q heads
    assert now["gqa_group"].unit_size == 16
    assert {g.kind: g.num_units for g in adapter.coupled_groups(model, 0)} == {
        "glu_channel": 64, "gqa_group": 2, "vo_channel": 16}  # block 0: the dense layout's groups, renamed
    assert probes == [1, 1]


def test_a_kept_sample_probes_a_new_layout_without_the_models_forward(probes):
    from prunekit.models.calibration import capture_block_inputs
    from prunekit.models.plan import GroupEdit, PruningPlan
    from prunekit.models.surgery import apply_

    model = tiny_model("qwen3")
    adapter = adapter_for(model)
    inputs = capture_block_inputs(model, adapter, tokens(n=1, t=12))
    adapter.derive_groups_(model, 0, inputs)  # as the runner does, with the block's calibration inputs
    (glu,) = [g for g in adapter.coupled_groups(model, 1) if g.kind == "glu_channel"]
    apply_(model, PruningPlan(group_edits={glu.name: GroupEdit(glu.name, glu.kind, (3, 5, 7), glu.num_units)}))

    class Unreachable(torch.nn.Module):
        def forward(self, *args, **kwargs):
            raise AssertionError("the model's forward ran")

    reference = copy.deepcopy(model)
    model.model.embed_tokens = Unreachable()  # as a lazily loaded model whose embeddings are elsewhere
    groups = {g.kind: g for g in adapter.coupled_groups(model, 1)}
    assert probes == [0, 1] and groups["glu_channel"].num_units == 3
    expected = derive_coupling(reference, adapter_for(reference), 1).groups  # probed through the full forward
    assert as_set(groups.values()) == as_set(expected)
