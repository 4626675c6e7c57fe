"""LLaMA-like family: LLaMA, Mistral, Qwen2, Qwen3 (and SmolLM2, which is a LLaMA).

Block layout (``model.model.layers[i]``)::

    x -> input_layernorm -> self_attn.{q,k,v}_proj -> attention -> self_attn.o_proj -> + x
      -> post_attention_layernorm -> mlp.{gate,up}_proj -> SiLU(gate) * up -> mlp.down_proj -> + x

The coupled groups are derived from the block's computation (``prunekit.models.derived_groups``; methods.md
§3.2, §4.2, §8.4; claim C2): ``glu_channel`` (rows j of gate_proj and up_proj, column j of down_proj),
``attention_head`` / ``gqa_group`` (KV head g with its ``G`` query heads) and ``vo_channel`` (row ``g*hd + c`` of
v_proj with the o_proj columns of the ``G`` query heads that read it; surgery compacts them with
``CompactLinear``, since HF attention ties the value head size to ``head_dim``).  This module holds what the
computation cannot say: where the blocks are, and the per-module attributes and config fields to fix after
units are removed.  Counts are read from the current module shapes, so the adapter describes pruned models too
(each layer keeps its own head and channel counts).
"""

from __future__ import annotations

from torch import nn

from ..adapters import FamilyAdapter, register_family

_ATTN = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")
_O = "self_attn.o_proj"
_GLU = ("mlp.gate_proj", "mlp.up_proj")
_DOWN = "mlp.down_proj"


def _head_dim(attn: nn.Module, config) -> int:
    hd = getattr(attn, "head_dim", None) or getattr(config, "head_dim", None)
    return int(hd or config.hidden_size // config.num_attention_heads)


@register_family
class LlamaAdapter(FamilyAdapter):
    """Adapter for decoder-only models with LLaMA's module names (``q/k/v/o_proj``, ``gate/up/down_proj``)."""

    name = "llama"
    model_types = ("llama", "mistral", "qwen2", "qwen3")

    # ------------------------------------------------------------------ layout
    def decoder(self, model: nn.Module) -> nn.Module:
        return model.model if hasattr(model, "model") else model

    def blocks(self, model: nn.Module) -> nn.ModuleList:
        return self.decoder(model).layers

    def block_prefix(self, model: nn.Module, index: int) -> str:
        return f"model.layers.{index}" if hasattr(model, "model") else f"layers.{index}"

    def stages(self, block: nn.Module) -> list[list[str]]:
        return [list(_ATTN), [_O], list(_GLU), [_DOWN]]

    # ------------------------------------------------------------------ counts
    def attention_counts(self, model: nn.Module, index: int) -> tuple[int, int, int]:
        """``(num_heads, num_kv_heads, head_dim)`` of block ``index``, from the module shapes."""
        attn = self.blocks(model)[index].self_attn
        hd = _head_dim(attn, model.config)
        return attn.q_proj.out_features // hd, attn.k_proj.out_features // hd, hd

    def intermediate_size(self, model: nn.Module, index: int) -> int:
        return self.blocks(model)[index].mlp.down_proj.in_features

    # ------------------------------------------------------------------ config
    def fix_block(self, model: nn.Module, index: int) -> None:
        """Per-module attributes of block ``index`` from its current shapes."""
        attn = self.blocks(model)[index].self_attn
        nq, nkv, hd = self.attention_counts(model, index)
        attn.head_dim = hd
        attn.num_key_value_groups = nq // nkv if nkv else 1
        for attr, value in (("num_heads", nq), ("num_attention_heads", nq), ("num_key_value_heads", nkv)):
            if hasattr(attn, attr):
                setattr(attn, attr, value)
        mlp = self.blocks(model)[index].mlp
        if hasattr(mlp, "intermediate_size"):
            mlp.intermediate_size = self.intermediate_size(model, index)

    def per_layer_widths(self, model: nn.Module) -> list[dict[str, int]]:
        out = []
        for i in range(len(self.blocks(model))):
            nq, nkv, hd = self.attention_counts(model, i)
            out.append({"num_attention_heads": nq, "num_key_value_heads": nkv, "head_dim": hd,
                        "intermediate_size": self.intermediate_size(model, i)})
        return out

    def fix_config(self, model: nn.Module) -> None:
        """Per-module attributes, then ``config``: uniform widths are written as they are; heterogeneous ones as
        the per-layer maximum (``prunekit.models.saving`` stores the exact per-layer shapes)."""
        for i in range(len(self.blocks(model))):
            self.fix_block(model, i)
        widths = self.per_layer_widths(model)
        config = model.config
        for key in ("num_attention_heads", "num_key_value_heads", "head_dim", "intermediate_size"):
            values = {w[key] for w in widths}
            value = max(values) if values else getattr(config, key, None)
            if value is not None:
                setattr(config, key, int(value))
