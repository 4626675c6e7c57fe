"""Dependency graph and coupled groups of every supported family (tiny random models, no network)."""

from __future__ import annotations

import networkx as nx
import pytest

from _tiny_models import FAMILY_TYPES, tiny_model

pytestmark = pytest.mark.hf

from prunekit.errors import ModelError  # noqa: E402
from prunekit.models.adapters import adapter_for, supported_model_types  # noqa: E402

EXPECTED_KINDS = {
    "llama": {"glu_channel", "gqa_group", "vo_channel"},
    "llama_mha": {"glu_channel", "attention_head", "vo_channel"},
    "mistral": {"glu_channel", "gqa_group", "vo_channel"},
    "qwen2": {"glu_channel", "gqa_group", "vo_channel"},
    "qwen3": {"glu_channel", "gqa_group", "vo_channel"},
    "gemma": {"glu_channel", "gqa_group", "vo_channel"},
    "gemma2": {"glu_channel", "gqa_group", "vo_channel"},
    "gemma3_text": {"glu_channel", "gqa_group", "vo_channel"},
    "opt": {"ffn_channel", "attention_head", "vo_channel"},
    "gpt2": {"ffn_channel", "attention_head", "vo_channel"},
}


@pytest.fixture(scope="module", params=FAMILY_TYPES)
def model(request):
    return request.param, tiny_model(request.param)


def test_nodes_are_the_linear_modules_with_their_shapes(model):
    from prunekit.models.graph import build_graph, linear_nodes

    kind, m = model
    g = build_graph(m)
    adapter = adapter_for(m)
    modules = dict(m.named_modules())
    nodes = linear_nodes(g)
    assert len(nodes) == sum(len(adapter.linear_names(b)) for b in adapter.blocks(m))
    for rec in nodes:
        out_f, in_f = adapter.get_weight(modules[rec.name]).shape
        assert (rec.out_features, rec.in_features) == (out_f, in_f), rec
        assert rec.name.startswith(adapter.block_prefix(m, rec.block) + ".")
    with pytest.raises(Exception):  # records are frozen
        nodes[0].role = "x"
    assert nx.is_directed_acyclic_graph(g)


def test_edges_follow_the_block_data_flow(model):
    from prunekit.models.graph import build_graph

    kind, m = model
    g = build_graph(m)
    adapter = adapter_for(m)
    for i, block in enumerate(adapter.blocks(m)):
        p = adapter.block_prefix(m, i)
        stages = [[f"{p}.{n}" for n in s] for s in adapter.stages(block)]
        assert g.has_edge(f"{p}:in", f"{p}:out") and g.edges[f"{p}:in", f"{p}:out"]["record"].kind == "skip"
        for first in stages[0]:
            assert g.has_edge(f"{p}:in", first)
        for a, b in zip(stages, stages[1:]):
            for u in a:
                assert set(g.successors(u)) == set(b), (u, list(g.successors(u)))
        assert all(g.has_edge(u, f"{p}:out") for u in stages[-1])
        # every path from the block input to its output runs through the stages in order
        assert nx.shortest_path_length(g, f"{p}:in", stages[-1][0]) == len(stages)


def test_groups_per_family_cover_consistent_indices(model):
    from prunekit.models.graph import build_graph, coupled_groups

    kind, m = model
    g = build_graph(m)
    groups = coupled_groups(g)
    modules = dict(m.named_modules())
    adapter = adapter_for(m)
    assert {x.kind for x in groups} == EXPECTED_KINDS[kind]
    assert len({x.name for x in groups}) == len(groups)
    for grp in groups:
        down = adapter.get_weight(modules[grp.downstream])
        cols = [c for u in grp.units for c in u]
        assert len(cols) == len(set(cols)), f"{grp.name}: units overlap"
        assert set(cols) <= set(range(down.shape[1]))
        if grp.kind != "vo_channel":  # structural groups partition the downstream inputs
            assert sorted(cols) == list(range(down.shape[1])), grp.name
        for name, rows in grp.upstream.items():
            w = adapter.get_weight(modules[name])
            flat = [r for u in rows for r in u]
            assert len(rows) == grp.num_units and len(flat) == len(set(flat))
            assert max(flat) < w.shape[0], (grp.name, name)
    assert coupled_groups(g, kinds="vo_channel") == [x for x in groups if x.kind == "vo_channel"]
    assert all(x.block == 1 for x in coupled_groups(m, blocks=[1]))


def test_gqa_group_ties_query_heads_to_their_kv_head():
    from prunekit.models.graph import coupled_groups

    m = tiny_model("llama")  # 4 query heads, 2 KV heads, head_dim 8
    (grp,) = coupled_groups(m, kinds="gqa_group", blocks=[0])
    assert grp.num_units == 2 and grp.unit_size == 16
    assert grp.upstream["model.layers.0.self_attn.q_proj"][1] == tuple(range(16, 32))
    assert grp.upstream["model.layers.0.self_attn.k_proj"][1] == tuple(range(8, 16))
    assert grp.upstream["model.layers.0.self_attn.v_proj"][0] == tuple(range(0, 8))
    (vo,) = coupled_groups(m, kinds="vo_channel", blocks=[0])
    # channel 3 of KV head 1 feeds o_proj columns of query heads 2 and 3 at offset 3
    assert vo.units[8 + 3] == (2 * 8 + 3, 3 * 8 + 3)
    assert vo.upstream["model.layers.0.self_attn.v_proj"][8 + 3] == (11,)


def test_gpt2_conv1d_is_seen_in_out_in_layout():
    m = tiny_model("gpt2")
    adapter = adapter_for(m)
    conv = m.transformer.h[0].mlp.c_fc
    assert tuple(conv.weight.shape) == (32, 64)  # Conv1D stores (in, out)
    assert tuple(adapter.get_weight(conv).shape) == (64, 32)
    import torch

    new = torch.arange(64 * 32, dtype=conv.weight.dtype).reshape(64, 32)
    adapter.set_weight(conv, new)
    assert torch.equal(conv.weight, new.t())


def test_unsupported_architecture_lists_supported_types():
    from transformers import BertConfig, BertModel

    model = BertModel(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                                 vocab_size=50))
    with pytest.raises(ModelError) as info:
        from prunekit.models.graph import build_graph

        build_graph(model)
    msg = str(info.value)
    assert "'bert'" in msg
    for t in ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "opt", "gpt2"):
        assert t in msg and t in supported_model_types()


def test_parallel_blocks_get_two_independent_branches_from_the_probe():
    """GPT-NeoX with parallel residual (no family adapter): attention and MLP read the block input and write its
    output side by side -- the edges come from the block's computation, not from a stage order."""
    import transformers as tf
    from transformers import AutoModelForCausalLM

    from prunekit.models.graph import build_graph

    import torch

    torch.manual_seed(0)
    config = tf.GPTNeoXConfig(vocab_size=96, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                              intermediate_size=64, max_position_embeddings=64, use_parallel_residual=True)
    m = AutoModelForCausalLM.from_config(config).eval()
    g = build_graph(m)
    p = "gpt_neox.layers.1"
    qkv, dense = f"{p}.attention.query_key_value", f"{p}.attention.dense"
    fc1, fc2 = f"{p}.mlp.dense_h_to_4h", f"{p}.mlp.dense_4h_to_h"
    assert g.edges[qkv, dense]["record"].kind == "data" and g.edges[fc1, fc2]["record"].kind == "data"
    for first, last in ((qkv, dense), (fc1, fc2)):
        assert g.has_edge(f"{p}:in", first) and g.has_edge(last, f"{p}:out")
    assert not nx.has_path(g, qkv, fc1) and not nx.has_path(g, fc1, qkv)
    assert {x.kind for x in g.graph["groups"] if x.block == 1} == {"attention_head", "vo_channel", "ffn_channel"}
