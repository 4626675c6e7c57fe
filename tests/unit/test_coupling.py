"""Coupled groups derived from the block computation (prunekit.models.coupling): equal to couplings derived by hand
for the family adapters (which serve the derivation) and for models with no family adapter (fused projections, parallel blocks,
MoE experts), removal equals masking on random units (claim C2), and one clear error for heads tied together."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch

from _tiny_models import FAMILY_TYPES, tiny_model, tokens

pytestmark = pytest.mark.hf

from prunekit.errors import ModelError  # noqa: E402
from prunekit.models.adapters import adapter_for  # noqa: E402
from prunekit.models.coupling import derive_coupling, derive_groups  # noqa: E402
from prunekit.models.linear_layers import weight_of  # noqa: E402

GENERIC = ("phi3", "gpt_neox", "falcon", "falcon_mqa", "mixtral", "qwen2_moe")


@pytest.fixture(autouse=True, scope="module")
def modeling_imported(one_thread_module):
    """One torch thread for the module (conftest); the transformers modeling import (seconds) is paid here, once,
    not by the first test."""
    import transformers.models.llama.modeling_llama  # noqa: F401


def generic_config(kind: str):
    import transformers as tf

    common = dict(vocab_size=96, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                  max_position_embeddings=64)
    ids = dict(pad_token_id=0, eos_token_id=0, bos_token_id=0)
    if kind == "phi3":
        return tf.Phi3Config(**common, **ids, intermediate_size=64, num_key_value_heads=2)
    if kind == "mixtral":
        return tf.MixtralConfig(**common, intermediate_size=48, num_key_value_heads=2, num_local_experts=4,
                                num_experts_per_tok=2)
    if kind == "qwen2_moe":
        return tf.Qwen2MoeConfig(**common, intermediate_size=64, moe_intermediate_size=16, num_key_value_heads=2,
                                 shared_expert_intermediate_size=48, num_experts=4, num_experts_per_tok=2)
    if kind == "gpt_neox":
        return tf.GPTNeoXConfig(**common, **ids, intermediate_size=64, use_parallel_residual=True)
    if kind in ("falcon", "falcon_mqa"):
        return tf.FalconConfig(vocab_size=96, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                               parallel_attn=True, new_decoder_architecture=False, multi_query=kind == "falcon_mqa")
    if kind == "olmo2":  # q_norm / k_norm over the whole projection: every head depends on every q and k row
        return tf.Olmo2Config(**common, **ids, intermediate_size=64, num_key_value_heads=4)
    raise ValueError(kind)


def generic_model(kind: str):
    """A tiny random float64 model with no family adapter (fused MoE experts unfused into linear layers)."""
    from transformers import AutoModelForCausalLM

    from prunekit.models.families.experts import unfuse_experts_

    torch.manual_seed(0)
    config = generic_config(kind)
    config._attn_implementation = "eager"
    model = AutoModelForCausalLM.from_config(config).eval()
    unfuse_experts_(model)  # in float32: transformers' grouped_mm has no float64 kernel
    model = model.double()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model


def any_model(kind: str):
    return generic_model(kind) if kind in GENERIC + ("olmo2",) else tiny_model(kind)


def normalised(groups) -> set:
    """Groups compared by content: kind, downstream, units and upstream rows (names and order may differ)."""
    return {(g.kind, g.downstream, tuple(g.units), tuple(sorted(g.upstream.items()))) for g in groups}


def group(kind, downstream, units, upstream) -> tuple:
    return kind, downstream, tuple(tuple(u) for u in units), tuple(sorted(
        (m, tuple(tuple(r) for r in rows)) for m, rows in upstream.items()))


def span(start: int, size: int) -> tuple[int, ...]:
    return tuple(range(start, start + size))


# ---------------------------------------------------------------------------------------------- (a) families
@pytest.mark.parametrize("kind", FAMILY_TYPES)
def test_family_adapters_serve_the_hand_derived_couplings(kind):
    """The family adapters hold no group tables: what they serve is the derivation, equal to the couplings
    written out by hand from each family's forward (``family_expected``)."""
    model = tiny_model(kind)
    adapter = adapter_for(model)
    assert adapter.name != "generic"
    for index in range(len(adapter.blocks(model))):
        p = adapter.block_prefix(model, index)
        coupling = derive_coupling(model, adapter, index)
        assert normalised(coupling.groups) == family_expected(kind, p, model.config)
        assert normalised(adapter.coupled_groups(model, index)) == family_expected(kind, p, model.config)
        assert len({g.name for g in coupling.groups}) == len(coupling.groups)
        assert coupling.ties == {}
        # a few forwards, not one per row: fewer probes than rows of the modules feeding a group
        rows = sum(len(weight_of(model.get_submodule(u))) for u in coupling.owners)
        assert coupling.forwards < rows and coupling.backwards <= 24, (coupling.forwards, rows)


# ---------------------------------------------------------------------------------------------- (b) by hand
def gqa(p, q, k, v, o, nq=4, nkv=2, hd=8) -> set:
    """Heads and V/O channels of a GQA attention with separate q/k/v projections (LLaMA layout)."""
    g = nq // nkv
    heads = group("gqa_group" if g > 1 else "attention_head", f"{p}.{o}",
                  [span(u * g * hd, g * hd) for u in range(nkv)],
                  {f"{p}.{q}": [span(u * g * hd, g * hd) for u in range(nkv)],
                   f"{p}.{k}": [span(u * hd, hd) for u in range(nkv)],
                   f"{p}.{v}": [span(u * hd, hd) for u in range(nkv)]})
    vo = group("vo_channel", f"{p}.{o}",
               [[(u * g + r) * hd + c for r in range(g)] for u in range(nkv) for c in range(hd)],
               {f"{p}.{v}": [[u * hd + c] for u in range(nkv) for c in range(hd)]})
    return {heads, vo}


def glu(p, down, width, gate=None, up=None, fused=None) -> tuple:
    """GLU channels: column j of ``down`` with row j of gate and up (or rows j and width + j of a fused gate_up)."""
    upstream = ({f"{p}.{fused}": [[j, width + j] for j in range(width)]} if fused
                else {f"{p}.{gate}": [[j] for j in range(width)], f"{p}.{up}": [[j] for j in range(width)]})
    return group("glu_channel", f"{p}.{down}", [[j] for j in range(width)], upstream)


def interleaved_heads(p, qkv, o, nh=4, hd=8) -> set:
    """GPT-NeoX / Falcon fused qkv, per head [q | k | v] (``view(B, T, heads, 3, head_dim)``)."""
    return {group("attention_head", f"{p}.{o}", [span(h * hd, hd) for h in range(nh)],
                  {f"{p}.{qkv}": [span(h * 3 * hd, 3 * hd) for h in range(nh)]}),
            group("vo_channel", f"{p}.{o}", [[h * hd + c] for h in range(nh) for c in range(hd)],
                  {f"{p}.{qkv}": [[h * 3 * hd + 2 * hd + c] for h in range(nh) for c in range(hd)]})}


def ffn(p, fc1, fc2, width) -> tuple:
    return group("ffn_channel", f"{p}.{fc2}", [[j] for j in range(width)], {f"{p}.{fc1}": [[j] for j in range(width)]})


def expected(kind: str, p: str) -> set:
    """Couplings derived by hand from each model's forward (written out, not computed by prunekit)."""
    attn = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj")
    if kind == "phi3":  # qkv_proj rows: q 0-31 (4 heads x 8), k 32-47, v 48-63 (2 KV heads x 8)
        qkv, o = f"{p}.self_attn.qkv_proj", f"{p}.self_attn.o_proj"
        return {group("gqa_group", o, [span(16 * g, 16) for g in range(2)],
                      {qkv: [span(16 * g, 16) + span(32 + 8 * g, 8) + span(48 + 8 * g, 8) for g in range(2)]}),
                group("vo_channel", o, [[16 * g + c, 16 * g + 8 + c] for g in range(2) for c in range(8)],
                      {qkv: [[48 + 8 * g + c] for g in range(2) for c in range(8)]}),
                glu(p, "mlp.down_proj", 64, fused="mlp.gate_up_proj")}
    if kind == "gpt_neox":  # parallel residual: attention and MLP are independent groups
        return interleaved_heads(p, "attention.query_key_value", "attention.dense") | {
            ffn(p, "mlp.dense_h_to_4h", "mlp.dense_4h_to_h", 64)}
    if kind == "falcon":  # parallel attention, one LayerNorm; default MLP width 4 * hidden
        return interleaved_heads(p, "self_attention.query_key_value", "self_attention.dense") | {
            ffn(p, "mlp.dense_h_to_4h", "mlp.dense_4h_to_h", 128)}
    if kind == "falcon_mqa":  # rows: q 0-31, one K head 32-39, one V head 40-47 shared by all 4 query heads
        qkv, o = f"{p}.self_attention.query_key_value", f"{p}.self_attention.dense"
        return {group("gqa_group", o, [span(0, 32)], {qkv: [span(0, 48)]}),
                group("vo_channel", o, [[h * 8 + c for h in range(4)] for c in range(8)],
                      {qkv: [[40 + c] for c in range(8)]}),
                ffn(p, "mlp.dense_h_to_4h", "mlp.dense_4h_to_h", 128)}
    if kind == "mixtral":  # each expert's own channels; the router is not a linear module here
        return gqa(p, *attn) | {glu(p, f"mlp.experts.{e}.down_proj", 48, fused=f"mlp.experts.{e}.gate_up_proj")
                                for e in range(4)}
    if kind == "qwen2_moe":  # shared expert (its sigmoid gate left alone) + 4 experts
        return gqa(p, *attn) | {glu(p, "mlp.shared_expert.down_proj", 48, "mlp.shared_expert.gate_proj",
                                    "mlp.shared_expert.up_proj")} | {
            glu(p, f"mlp.experts.{e}.down_proj", 16, fused=f"mlp.experts.{e}.gate_up_proj") for e in range(4)}
    raise ValueError(kind)


def family_expected(kind: str, p: str, config) -> set:
    """The family couplings written out by hand from each forward (LLaMA-like GQA + GLU, OPT, GPT-2's fused
    c_attn thirds) for the tiny configs of ``_tiny_models``: 4 query heads, MLP width 64."""
    if kind == "opt":
        attn = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj")
        return gqa(p, *attn, nq=4, nkv=4, hd=8) | {ffn(p, "fc1", "fc2", 64)}
    if kind == "gpt2":  # c_attn rows (out, in layout): q 0-31, k 32-63, v 64-95
        qkv, o = f"{p}.attn.c_attn", f"{p}.attn.c_proj"
        return {group("attention_head", o, [span(8 * h, 8) for h in range(4)],
                      {qkv: [span(8 * h, 8) + span(32 + 8 * h, 8) + span(64 + 8 * h, 8) for h in range(4)]}),
                group("vo_channel", o, [[c] for c in range(32)], {qkv: [[64 + c] for c in range(32)]}),
                ffn(p, "mlp.c_fc", "mlp.c_proj", 64)}
    attn = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj")
    hd = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return gqa(p, *attn, nq=config.num_attention_heads, nkv=config.num_key_value_heads, hd=hd) | {
        glu(p, "mlp.down_proj", 64, "mlp.gate_proj", "mlp.up_proj")}


@pytest.mark.parametrize("kind", GENERIC)
def test_models_without_family_adapter_get_the_hand_derived_couplings(kind):
    model = generic_model(kind)
    adapter = adapter_for(model)
    assert adapter.name == "generic"
    coupling = derive_coupling(model, adapter, 1)
    assert normalised(coupling.groups) == expected(kind, adapter.block_prefix(model, 1))
    assert all(g.block == 1 for g in coupling.groups)
    owners = {u.rsplit(".", 1)[-1] for u in coupling.owners}
    assert not owners & {"o_proj", "down_proj", "dense", "dense_4h_to_h", "c_proj"}  # residual writers: no owner
    if kind in ("mixtral", "qwen2_moe"):  # one expert is probed, its siblings follow it: same cost as one MLP
        assert sum("experts." in u for u in coupling.owners) == 1
    assert coupling.forwards < 120


def test_sample_inputs_may_be_tokens_block_inputs_or_nothing_and_the_model_is_unchanged():
    from prunekit.models.calibration import capture_block_inputs

    model = tiny_model("qwen3")
    adapter = adapter_for(model)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    ids = tokens(n=1, t=12, seed=3)
    results = [derive_groups(model, adapter, 0, s)
               for s in (None, ids, capture_block_inputs(model, adapter, ids))]
    assert normalised(results[0]) == normalised(results[1]) == normalised(results[2])
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert {g.kind for g in derive_groups(model, adapter, 0, kinds=("glu_channel", "vo_channel"))} == {
        "glu_channel", "vo_channel"}
    with pytest.raises(ModelError, match="Fix:"):
        derive_groups(model, adapter, 0, sample_inputs="not inputs")


# ---------------------------------------------------------------------------------------------- (c) claim C2
def compact(old, rows=None, cols=None):
    """``old`` with output rows / input columns *deleted* (smaller weight; deleted rows read as zero)."""
    from prunekit.models.surgery import CompactLinear

    w = weight_of(old).detach()
    rows = list(range(w.shape[0])) if rows is None else rows
    cols = list(range(w.shape[1])) if cols is None else cols
    with warnings.catch_warnings():  # a single-unit group deletes every row: a zero-size weight
        warnings.simplefilter("ignore", UserWarning)
        new = CompactLinear(len(cols), len(rows), bias=old.bias is not None, full_in=w.shape[1],
                            full_out=w.shape[0], dtype=w.dtype)
    with torch.no_grad():
        new.weight.copy_(w[rows][:, cols])
        if old.bias is not None:
            new.bias.copy_(old.bias.detach()[rows])
    new.in_index, new.out_index = torch.tensor(cols, dtype=torch.long), torch.tensor(rows, dtype=torch.long)
    return new


def block_output(block, inputs, edits=()):
    """Block output after ``edits`` = [(relative module, rows to delete, columns to delete)] on a copy."""
    block = copy.deepcopy(block)
    for name, rows, cols in edits:
        w = weight_of(block.get_submodule(name))
        keep_rows = [r for r in range(w.shape[0]) if r not in set(rows)]
        keep_cols = [c for c in range(w.shape[1]) if c not in set(cols)]
        block.set_submodule(name, compact(block.get_submodule(name), keep_rows, keep_cols))
    args, kwargs = inputs.call_arguments(0)
    with torch.no_grad():
        out = block(inputs.hidden[0], *args, **kwargs)
    return out[0] if isinstance(out, tuple) else out


def masked(block, inputs, d, cols):
    """Block output with the downstream columns ``cols`` zeroed (same shapes)."""
    block = copy.deepcopy(block)
    with torch.no_grad():
        weight_of(block.get_submodule(d))[:, list(cols)] = 0
    return block_output(block, inputs)


@pytest.mark.parametrize("kind", FAMILY_TYPES + GENERIC)
def test_removing_a_unit_equals_zeroing_its_downstream_columns(kind):
    from prunekit.models.calibration import capture_block_inputs

    model = any_model(kind)
    adapter = adapter_for(model)
    inputs = capture_block_inputs(model, adapter, tokens(n=1, t=16, seed=1))  # another window than the probe's
    block, prefix = adapter.blocks(model)[0], adapter.block_prefix(model, 0)
    rel = (lambda name: name[len(prefix) + 1:])
    full = block_output(block, inputs)
    scale = float(full.abs().max())
    gen = torch.Generator().manual_seed(0)
    for g in derive_groups(model, adapter, 0, tokens(n=1, t=16)):
        seen = []
        hook = block.get_submodule(rel(g.downstream)).register_forward_pre_hook(lambda m, a: seen.append(a[0]))
        block_output(block, inputs)
        hook.remove()
        picks = torch.randperm(g.num_units, generator=gen)[:2].tolist()
        for u in picks:
            cols = g.units[u]
            removed = block_output(block, inputs, [(rel(g.downstream), (), cols)] + [
                (rel(m), rows[u], ()) for m, rows in g.upstream.items()])
            zeroed = masked(block, inputs, rel(g.downstream), cols)
            assert torch.allclose(removed, zeroed, rtol=0, atol=1e-10 * scale), (g.name, u)
            if seen and bool(seen[0][..., list(cols)].any()):  # the unit matters on this window (an MoE expert
                # may get no token, a ReLU channel be off), and deleting another unit's rows gives another output
                assert not torch.allclose(zeroed, full, rtol=0, atol=1e-8 * scale), (g.name, u)
                if g.num_units > 1:
                    v = (u + 1) % g.num_units
                    wrong = block_output(block, inputs, [(rel(g.downstream), (), cols)] + [
                        (rel(m), rows[v], ()) for m, rows in g.upstream.items()])
                    assert not torch.allclose(wrong, zeroed, rtol=0, atol=1e-8 * scale), (g.name, u, v)


# ---------------------------------------------------------------------------------------------- (d) errors
def test_heads_tied_by_a_norm_over_the_whole_projection_raise_one_error_naming_the_coupling():
    model = generic_model("olmo2")
    adapter = adapter_for(model)
    p = adapter.block_prefix(model, 0)
    with pytest.raises(ModelError) as info:
        derive_groups(model, adapter, 0, kinds=("attention_head", "gqa_group", "glu_channel"))
    msg = str(info.value)
    assert "every row of self_attn.q_proj" in msg and "every row of self_attn.k_proj" in msg
    assert f"{p}.self_attn.o_proj" in msg and "one unit" in msg
    assert "vo_channel on" in msg and "(32 units)" in msg and "Fix:" in msg and "'2:4'" in msg
    ok = derive_groups(model, adapter, 0, kinds=("vo_channel", "glu_channel"))  # what the error proposes works
    assert sorted((g.kind, g.num_units) for g in ok) == [("glu_channel", 64), ("vo_channel", 32)]


def test_a_multi_query_kv_head_shared_by_all_heads_names_its_rows():
    model = generic_model("falcon_mqa")
    adapter = adapter_for(model)
    assert {g.kind: g.num_units for g in derive_groups(model, adapter, 0)} == {
        "gqa_group": 1, "vo_channel": 8, "ffn_channel": 128}  # without kinds: the groups as they are
    with pytest.raises(ModelError, match=r"rows 32-39 of self_attention\.query_key_value reach all 32 input "
                                         r"columns.*vo_channel on .*\(8 units\).*Fix:"):
        derive_groups(model, adapter, 0, kinds=("gqa_group",))
