"""The generic adapter: decoder blocks, traced stages, routers, fused experts and unrouted experts of causal LMs
no family adapter knows (tiny random Phi-3, Mixtral, Qwen2-MoE, GPT-NeoX, Falcon; LLaMA and GPT-2 as controls)."""

from __future__ import annotations

import types

import pytest
import torch
from torch import nn

pytestmark = pytest.mark.hf

from prunekit.errors import ModelError  # noqa: E402
from prunekit.models.adapters import adapter_for  # noqa: E402
from prunekit.models.families.generic import (  # noqa: E402
    GenericAdapter, LinearExperts, find_blocks, find_routers, fuse_experts_, generic_adapter, linear_modules,
    trace_stages, unfuse_experts_, unrouted_solution,
)
from prunekit.models.targets import TargetFilter  # noqa: E402

KINDS = ("llama", "phi3", "mixtral", "qwen2_moe", "gpt_neox", "falcon", "gpt2")
BLOCKS = {"llama": "model.layers", "phi3": "model.layers", "mixtral": "model.layers", "qwen2_moe": "model.layers",
          "gpt_neox": "gpt_neox.layers", "falcon": "transformer.h", "gpt2": "transformer.h"}
QKV, O, GLU, DOWN = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"], ["self_attn.o_proj"], \
    ["mlp.gate_proj", "mlp.up_proj"], ["mlp.down_proj"]
STAGES = {  # written by hand from each block's forward
    "llama": [QKV, O, GLU, DOWN],
    "phi3": [["self_attn.qkv_proj"], O, ["mlp.gate_up_proj"], DOWN],
    "mixtral": [QKV, O],  # the experts are one fused 3-D parameter pair, the router is not a linear module
    "qwen2_moe": [QKV, O, ["mlp.shared_expert.gate_proj", "mlp.shared_expert.up_proj"], ["mlp.shared_expert.down_proj"]],
    # parallel residual with two LayerNorms: the MLP's input is NOT the attention's input
    "gpt_neox": [["attention.query_key_value"], ["attention.dense"], ["mlp.dense_h_to_4h"], ["mlp.dense_4h_to_h"]],
    # parallel attention with one LayerNorm: dense_h_to_4h gets the very tensor query_key_value gets
    "falcon": [["self_attention.query_key_value", "mlp.dense_h_to_4h"], ["self_attention.dense"], ["mlp.dense_4h_to_h"]],
    "gpt2": [["attn.c_attn"], ["attn.c_proj"], ["mlp.c_fc"], ["mlp.c_proj"]],
}


def tiny_config(kind: str):
    import transformers as tf

    common = dict(vocab_size=96, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                  max_position_embeddings=64)
    if kind == "llama":
        return tf.LlamaConfig(**common, intermediate_size=64, num_key_value_heads=2)
    if kind == "phi3":
        return tf.Phi3Config(**common, intermediate_size=64, num_key_value_heads=2, pad_token_id=0, eos_token_id=0,
                             bos_token_id=0)
    if kind == "mixtral":
        return tf.MixtralConfig(**common, intermediate_size=48, num_key_value_heads=2, num_local_experts=4,
                                num_experts_per_tok=2)
    if kind == "qwen2_moe":
        return tf.Qwen2MoeConfig(**common, intermediate_size=64, moe_intermediate_size=16, num_key_value_heads=2,
                                 shared_expert_intermediate_size=48, num_experts=4, num_experts_per_tok=2)
    if kind == "gpt_neox":
        return tf.GPTNeoXConfig(**common, intermediate_size=64, use_parallel_residual=True)
    if kind == "falcon":
        return tf.FalconConfig(vocab_size=96, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                               parallel_attn=True, new_decoder_architecture=False)
    if kind == "gpt2":
        return tf.GPT2Config(vocab_size=96, n_embd=32, n_inner=64, n_layer=2, n_head=4, n_positions=64)
    raise ValueError(kind)


def tiny_model(kind: str):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    config = tiny_config(kind)
    config._attn_implementation = "eager"
    return AutoModelForCausalLM.from_config(config).eval()


TOKENS = torch.randint(0, 96, (2, 8), generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module", params=KINDS)
def model(request):
    return request.param, tiny_model(request.param)


def block_inputs(model, adapter, tokens=TOKENS):
    from prunekit.models.calibration import capture_block_inputs

    return capture_block_inputs(model, adapter, tokens)


# ---------------------------------------------------------------------------------------------- blocks
def test_blocks_are_found_structurally(model):
    kind, m = model
    adapter = generic_adapter(m)
    assert find_blocks(m) == adapter.block_path(m) == BLOCKS[kind]
    assert len(adapter.blocks(m)) == 2 and adapter.block_prefix(m, 1) == f"{BLOCKS[kind]}.1"
    assert generic_adapter(m) is adapter  # one adapter per model: traced stages are shared by every caller
    family = adapter_for(m)
    if kind in ("llama", "gpt2"):
        assert family.name == kind  # a family adapter still wins
    else:
        assert family is adapter and family.name == "generic"


def test_stages_from_one_traced_forward_match_the_hand_written_ones(model):
    kind, m = model
    adapter = GenericAdapter(kind)  # fresh: not traced yet
    block = adapter.blocks(m)[0]
    before = adapter.stages(block)
    assert before == [[n] for n in adapter.targets(block)]  # untraced: one stage per target, module-tree order
    result = adapter.trace(block, block_inputs(m, adapter))
    assert adapter.stages(block) == STAGES[kind]
    assert adapter.stages(adapter.blocks(m)[1]) == STAGES[kind]  # same layout, same stages
    assert result.untraced == () and result.windows == 1
    if kind == "llama":
        assert STAGES["llama"] == adapter_for(m).stages(block)  # the family adapter agrees
    assert sorted(adapter.linear_names(block)) == sorted(adapter.targets(block))


def test_conv1d_weights_are_read_and_written_in_out_in_layout():
    m = tiny_model("gpt2")
    adapter = generic_adapter(m)
    conv = adapter.blocks(m)[0].mlp.c_fc  # Conv1D: weight stored (in, out) = (32, 64)
    assert tuple(adapter.get_weight(conv).shape) == (64, 32)
    new = torch.arange(64 * 32, dtype=conv.weight.dtype).reshape(64, 32)
    adapter.set_weight(conv, new)
    assert torch.equal(conv.weight, new.t())


def test_a_model_without_block_list_and_non_causal_models_are_refused():
    with pytest.raises(ModelError, match="no decoder blocks found.*Fix"):
        find_blocks(nn.Sequential(nn.Linear(4, 4)))
    from transformers import BertConfig, BertModel

    bert = BertModel(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                                vocab_size=50))
    with pytest.raises(ModelError, match="unsupported architecture 'bert'"):
        adapter_for(bert)
    with pytest.raises(ModelError, match="unsupported architecture 'phi3'"):
        adapter_for("phi3")  # a type name alone: the generic adapter needs the model


def test_channel_groups_come_from_the_dependency_probe_and_fused_moe_blocks_refuse_them():
    m = tiny_model("phi3")
    adapter = adapter_for(m)
    for kind in ("unstructured", "nm", "channels"):
        adapter.check_structure(kind)
    with pytest.raises(ModelError, match="Fix:"):
        adapter.check_structure("heads")
    assert adapter.coupled_groups(m, 0) == []  # nothing derived yet: unstructured plans need no group
    groups = adapter.derive_groups_(m, 0, TOKENS[:1])
    assert adapter.coupled_groups(m, 0) == groups
    assert {g.kind for g in groups} <= set(adapter.channel_kinds)
    glu = next(g for g in groups if g.kind == "glu_channel")
    assert glu.downstream == "model.layers.0.mlp.down_proj" and glu.num_units == 64
    assert glu.upstream["model.layers.0.mlp.gate_up_proj"][3] == (3, 67)  # fused [gate; up]: rows u and u + I
    moe = tiny_model("mixtral")
    with pytest.raises(ModelError, match="experts.*still fused.*Fix:"):  # 3-D parameters have no linear channels
        generic_adapter(moe).derive_groups_(moe, 0, TOKENS[:1])
    unfuse_experts_(moe)  # as the runner does: then each expert has its own channels (test_expert_channels.py)
    experts = [g for g in generic_adapter(moe).derive_groups_(moe, 0, TOKENS[:1]) if ".experts." in g.downstream]
    assert sorted(g.downstream for g in experts) == [f"model.layers.0.mlp.experts.{e}.down_proj" for e in range(4)]
    assert {(g.kind, g.num_units) for g in experts} == {("glu_channel", 48)}


# ---------------------------------------------------------------------------------------------- MoE
def test_router_and_shared_expert_gate_are_left_alone():
    m = tiny_model("qwen2_moe")
    adapter = generic_adapter(m)
    block = adapter.blocks(m)[0]
    assert set(find_routers(block)) == {"mlp.shared_expert_gate"}
    assert "mlp.shared_expert_gate" in linear_modules(block) and "mlp.shared_expert_gate" not in adapter.targets(block)
    skipped = adapter.skipped(block)
    assert set(skipped) == {"mlp.shared_expert_gate", "mlp.experts.gate_up_proj", "mlp.experts.down_proj"}
    assert "fused expert weights [4, 32, 32]" in skipped["mlp.experts.gate_up_proj"]
    prefix = adapter.block_prefix(m, 0)
    default = TargetFilter.default()  # the name patterns agree with the structural rule
    assert not default.selects(f"{prefix}.mlp.shared_expert_gate")
    assert all(default.selects(f"{prefix}.{n}") for n in adapter.targets(block))


def test_fused_experts_unfuse_into_linear_experts_and_fuse_back_exactly():
    m = tiny_model("mixtral")
    dense_logits = m(TOKENS).logits
    state = {k: v.clone() for k, v in m.state_dict().items()}
    report = unfuse_experts_(m)
    assert report == {"model.layers.0.mlp.experts": "unfused", "model.layers.1.mlp.experts": "unfused"}
    torch.testing.assert_close(m(TOKENS).logits, dense_logits, rtol=1e-5, atol=1e-6)
    adapter = generic_adapter(m)
    block = adapter.blocks(m)[0]
    assert isinstance(block.mlp.experts, LinearExperts) and adapter.skipped(block) == {}
    assert find_blocks(m) == "model.layers"  # the expert lists inside blocks are never taken for blocks
    assert "mlp.gate" not in linear_modules(block)  # Mixtral's router is not a linear module
    result = adapter.trace(block, block_inputs(m, adapter))
    stages = adapter.stages(block)
    assert stages[:2] == [QKV, O]
    expert_stages = stages[2:]
    assert sorted(expert_stages) == sorted([[f"mlp.experts.{e}.gate_up_proj"] for e in range(4)]
                                           + [[f"mlp.experts.{e}.down_proj"] for e in range(4)])
    for e in range(4):  # each expert: gate_up before down, right after it
        i = expert_stages.index([f"mlp.experts.{e}.gate_up_proj"])
        assert expert_stages[i + 1] == [f"mlp.experts.{e}.down_proj"]
    assert result.traced | set(result.untraced) == set(adapter.targets(block))
    # prune expert 1 in its linear form; fusing gives the zeros back in the 3-D parameter
    with torch.no_grad():
        block.mlp.experts[1].gate_up_proj.weight[:, ::2] = 0
    assert fuse_experts_(m) == ["model.layers.0.mlp.experts", "model.layers.1.mlp.experts"]
    assert set(m.state_dict()) == set(state)
    fused = m.model.layers[0].mlp.experts.gate_up_proj
    assert torch.all(fused[1][:, ::2] == 0) and torch.equal(fused[0], state["model.layers.0.mlp.experts.gate_up_proj"][0])
    assert torch.equal(m.model.layers[1].mlp.experts.down_proj, state["model.layers.1.mlp.experts.down_proj"])


def test_a_non_standard_fused_module_is_kept_with_its_parameters():
    class BiasedExperts(nn.Module):
        def __init__(self):
            super().__init__()
            self.gate_up_proj = nn.Parameter(torch.randn(2, 8, 4))
            self.down_proj = nn.Parameter(torch.randn(2, 4, 4))
            self.down_bias = nn.Parameter(torch.zeros(2, 4))

    holder = nn.Module()
    holder.experts = BiasedExperts()
    params = dict(holder.experts.named_parameters())
    report = unfuse_experts_(holder)
    assert report["experts"].startswith("kept fused: parameters")
    assert all(getattr(holder.experts, k) is v for k, v in params.items())

    class OddForward(nn.Module):  # standard layout, different maths (no activation on the gate)
        def __init__(self):
            super().__init__()
            self.gate_up_proj = nn.Parameter(torch.randn(2, 8, 4))
            self.down_proj = nn.Parameter(torch.randn(2, 4, 4))
            self.act_fn = nn.SiLU()

        def forward(self, x, index, weights):
            return x * 2

    holder.experts = OddForward()
    params = dict(holder.experts.named_parameters())
    assert unfuse_experts_(holder)["experts"] == ("kept fused: its forward differs from the standard experts loop "
                                                  "on a random routing")
    assert all(getattr(holder.experts, k) is v for k, v in params.items())


class ToyExpert(nn.Module):
    def __init__(self, h: int, f: int):
        super().__init__()
        self.w1, self.w3, self.w2 = nn.Linear(h, f, bias=False), nn.Linear(h, f, bias=False), nn.Linear(f, h, bias=False)

    def forward(self, x):
        return self.w2(nn.functional.silu(self.w1(x)) * self.w3(x))


class ToyMoE(nn.Module):
    """transformers 4.x Mixtral style: a linear router and one linear module set per expert; experts no token is
    routed to are still called, on an empty tensor."""

    def __init__(self, h: int, experts: int):
        super().__init__()
        self.gate = nn.Linear(h, experts)
        self.experts = nn.ModuleList(ToyExpert(h, 2 * h) for _ in range(experts))

    def forward(self, x):
        flat = x.reshape(-1, x.shape[-1])
        chosen = self.gate(flat).topk(2, dim=-1).indices
        out = torch.zeros_like(flat)
        for e, expert in enumerate(self.experts):
            rows = (chosen == e).any(-1).nonzero().flatten()
            out.index_add_(0, rows, expert(flat[rows]))
        return out.reshape(x.shape)


class ToyBlock(nn.Module):
    def __init__(self, h: int, experts: int):
        super().__init__()
        self.norm = nn.LayerNorm(h)
        self.attn = nn.ModuleDict({"q": nn.Linear(h, h), "v": nn.Linear(h, h), "o": nn.Linear(h, h)})
        self.mlp = ToyMoE(h, experts)

    def forward(self, x):
        y = self.norm(x)
        x = x + self.attn["o"](torch.sigmoid(self.attn["q"](y)) * self.attn["v"](y))
        return x + self.mlp(self.norm(x))


class ToyMoEForCausalLM(nn.Module):
    def __init__(self, h: int = 8, experts: int = 4):
        super().__init__()
        self.config = types.SimpleNamespace(model_type="toy_moe", num_hidden_layers=2, architectures=None)
        self.layers = nn.ModuleList(ToyBlock(h, experts) for _ in range(2))


def test_linear_experts_routers_and_unrouted_experts():
    torch.manual_seed(0)
    m = ToyMoEForCausalLM()
    adapter = adapter_for(m)
    assert adapter.name == "generic" and adapter.block_path(m) == "layers"  # 2 blocks, not the 4 experts
    block = m.layers[0]
    with torch.no_grad():
        block.mlp.gate.bias[2:] = -1e4  # experts 2 and 3 never receive a token
    assert find_routers(block) == {"mlp.gate": "MoE router of 4 experts of mlp; left dense"}
    assert "mlp.gate" not in adapter.targets(block)
    calls = [(torch.randn(1, 5, 8), (), {}), (torch.randn(1, 5, 8), (), {})]
    result = trace_stages(block, calls, adapter.targets(block))
    assert result.windows == 2 and result.untraced == tuple(f"mlp.experts.{e}.{w}" for e in (2, 3)
                                                             for w in ("w1", "w3", "w2"))
    expert = [lambda e: [f"mlp.experts.{e}.w1", f"mlp.experts.{e}.w3"], lambda e: [f"mlp.experts.{e}.w2"]]
    assert [list(s) for s in result.stages] == [
        ["attn.q", "attn.v"], ["attn.o"],
        *[f(e) for e in range(4) for f in expert],  # traced experts 0, 1; then 2, 3 by analogy with them
    ]
    adapter._traces.clear()
    adapter.trace(block, types.SimpleNamespace(hidden=[c[0] for c in calls], call_arguments=lambda i: ((), {})))
    assert adapter.stages(block) == [list(s) for s in result.stages]
    with torch.no_grad():  # now only experts 2 and 3 are reached: the stages are the same (expert order)
        block.mlp.gate.bias[:2], block.mlp.gate.bias[2:] = -1e4, 0.0
    other = trace_stages(block, calls, adapter.targets(block))
    assert other.untraced == tuple(f"mlp.experts.{e}.{w}" for e in (0, 1) for w in ("w1", "w3", "w2"))
    assert other.stages == result.stages


def test_unrouted_modules_stay_dense_unless_the_recipe_asks_for_magnitude():
    from prunekit.formulations import NM

    weight = torch.randn(4, 8, dtype=torch.float64)
    base = dict(block=0, module="layers.0.mlp.experts.3.w1", shape=(4, 8), target_sparsity=0.5)
    solution, record = unrouted_solution(weight, NM(2, 4), "dense", base)
    assert solution is None and record.status.startswith("dense: no calibration token") and record.sparsity == 0
    solution, record = unrouted_solution(weight, NM(2, 4), "magnitude", base)
    kept = solution.weights != 0
    assert kept.reshape(4, 2, 4).sum(-1).eq(2).all() and record.sparsity == pytest.approx(0.5)
    assert torch.equal(solution.weights[kept], weight[kept]) and "magnitude fallback" in record.status
    big = weight.abs().reshape(4, 2, 4).topk(2, dim=-1).values.min(-1).values
    assert (solution.weights.abs().reshape(4, 2, 4).max(-1).values >= big).all()
    with pytest.raises(ModelError, match="unrouted='drop'.*Fix"):
        unrouted_solution(weight, NM(2, 4), "drop", base)


def test_any_causal_lm_prunes_2_4_through_the_pipeline():
    import prunekit

    m = tiny_model("gpt_neox")
    result = prunekit.prune(m, {"method": "wanda", "structure": "2:4", "calibration": {"mode": "propagated"}},
                            TOKENS)
    assert result.report.family == "generic" and len(result.report.layers) == 8
    for layer in generic_adapter(m).blocks(m):
        w = layer.mlp.dense_h_to_4h.weight
        assert w.reshape(w.shape[0], -1, 4).ne(0).sum(-1).le(2).all()
    assert torch.isfinite(m(TOKENS).logits).all()


@pytest.mark.parametrize("kind", ["phi3", "gpt_neox"])
def test_an_in_memory_channel_prune_leaves_a_config_that_describes_the_model(kind):
    """After ``prunekit.prune`` with channels on a model with no family adapter, ``model.config`` holds the kept
    MLP width (before: the original width stayed in memory, only the saved config was right): a stock model
    built from the config has exactly the pruned model's parameter shapes."""
    import prunekit
    from prunekit.models.recipe import CalibrationSettings, Recipe

    model = tiny_model(kind)
    recipe = Recipe(method="fasp", structure="channels", sparsity=0.25, allocation="uniform",
                    calibration=CalibrationSettings(nsamples=2, seqlen=8))
    prunekit.prune(model, recipe, TOKENS, progress=False)
    assert model.config.intermediate_size == 48  # 64 channels, 25% pruned
    stock = type(model)(model.config)
    assert {k: tuple(v.shape) for k, v in stock.state_dict().items()} == \
        {k: tuple(v.shape) for k, v in model.state_dict().items()}


def test_non_uniform_channel_allocation_on_a_model_without_adapter():
    """The allocation pre-pass derives the generic adapter's channel groups from each dense block (before: no
    group existed until the run, so softmax / adaptive allocation of channels failed): softmax gives the blocks
    different widths that meet the global budget; fused MoE experts are refused with the fix."""
    import prunekit
    from prunekit.models.recipe import CalibrationSettings, Recipe

    calibration = CalibrationSettings(nsamples=2, seqlen=8)
    model = tiny_model("phi3")
    recipe = Recipe(method="fasp", structure="channels", sparsity=0.4, allocation="softmax", temperature=0.05,
                    calibration=calibration)
    plan = prunekit.plan(model, recipe, TOKENS, progress=False)
    kept = [len(e.kept_units) for e in plan.group_edits.values()]
    assert len(kept) == 2 and kept[0] != kept[1]
    assert sum(64 - k for k in kept) == round(0.4 * 128)
    with pytest.raises(ModelError, match="allocation='uniform'"):
        prunekit.plan(tiny_model("mixtral"), Recipe(method="fasp", structure="channels", sparsity=0.3,
                                                    allocation="adaptive", calibration=calibration), TOKENS,
                      progress=False)


def test_hand_ratios_for_derived_channel_groups_are_applied_and_bad_keys_named():
    """Per-group ratios for a model without adapter: keys are the derived groups' names; a key of no block is
    refused before the run, a key inside a block that names none of its groups when the block's groups are
    derived (the message lists them)."""
    import prunekit
    from prunekit.errors import SparsityError
    from prunekit.models.recipe import CalibrationSettings, Recipe

    recipe = Recipe(method="fasp", structure="channels", sparsity=0.3, allocation="uniform",
                    calibration=CalibrationSettings(nsamples=2, seqlen=8))
    plan = prunekit.plan(tiny_model("phi3"), recipe, TOKENS, progress=False,
                         ratios={"model.layers.0.mlp:glu_channel": 0.5, "model.layers.1.mlp:glu_channel": 0.25})
    assert [len(e.kept_units) for e in plan.group_edits.values()] == [32, 48]
    with pytest.raises(SparsityError, match="no decoder block"):
        prunekit.plan(tiny_model("phi3"), recipe, TOKENS, progress=False, ratios={"mlp:glu_channel": 0.5})
    with pytest.raises(SparsityError, match="model.layers.1.mlp:glu_channel"):
        prunekit.plan(tiny_model("phi3"), recipe, TOKENS, progress=False, ratios={"model.layers.1.mlp.up": 0.5})
