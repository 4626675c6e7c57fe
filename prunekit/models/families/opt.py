"""OPT family.  Block layout (``model.model.decoder.layers[i]``)::

    x -> self_attn_layer_norm -> self_attn.{q,k,v}_proj (+bias) -> attention -> self_attn.out_proj (+bias) -> + x
      -> final_layer_norm -> fc1 (+b1) -> ReLU -> fc2 (+b2) -> + x

Coupled groups, derived from the block's computation (``prunekit.models.derived_groups``): ``ffn_channel`` (row
and bias entry j of fc1, column j of fc2), ``attention_head`` (q/k/v rows of head h, its ``head_dim`` out_proj
columns) and ``vo_channel`` (row c of v_proj with column c of out_proj, compacted by surgery).

OPT computes ``head_dim = hidden_size / num_attention_heads``: after head removal the stock config cannot
describe the model, and ``prunekit.load_pruned`` rebuilds it from the stored shapes.
"""

from __future__ import annotations

from torch import nn

from ..adapters import FamilyAdapter, register_family

_QKV = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")


@register_family
class OPTAdapter(FamilyAdapter):
    name = "opt"
    model_types = ("opt",)

    def blocks(self, model: nn.Module) -> nn.ModuleList:
        return model.model.decoder.layers

    def block_prefix(self, model: nn.Module, index: int) -> str:
        return f"model.decoder.layers.{index}"

    def stages(self, block: nn.Module) -> list[list[str]]:
        return [list(_QKV), ["self_attn.out_proj"], ["fc1"], ["fc2"]]

    def attention_counts(self, model: nn.Module, index: int) -> tuple[int, int, int]:
        attn = self.blocks(model)[index].self_attn
        hd = int(attn.head_dim)
        n = attn.q_proj.out_features // hd
        return n, n, hd

    def fix_block(self, model: nn.Module, index: int) -> None:
        self.blocks(model)[index].self_attn.num_heads = self.attention_counts(model, index)[0]

    def fix_config(self, model: nn.Module) -> None:
        heads, ffn = set(), set()
        for i, block in enumerate(self.blocks(model)):
            self.fix_block(model, i)
            heads.add(self.attention_counts(model, i)[0])
            ffn.add(block.fc2.in_features)
        if heads:
            model.config.num_attention_heads = max(heads)
            model.config.ffn_dim = max(ffn)
