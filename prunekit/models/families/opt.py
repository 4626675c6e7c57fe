"""OPT family.  Block layout (``model.model.decoder.layers[i]``)::

    x -> self_attn_layer_norm -> self_attn.{q,k,v}_proj (+bias) -> attention -> self_attn.out_proj (+bias) -> + x
      -> final_layer_norm -> fc1 (+b1) -> ReLU -> fc2 (+b2) -> + x

Coupled groups (methods.md §3.2, §4.2; claim C2):

* ``ffn_channel`` -- channel j: row j and bias entry j of fc1, column j of fc2 (b2 is kept);
* ``attention_head`` -- q/k/v rows and bias entries of head h, the ``head_dim`` out_proj columns of head h;
* ``vo_channel`` (FASP) -- row c (and bias entry) of v_proj with column c of out_proj; HF's OPT attention ties the
  value head size to ``head_dim``, so surgery compacts them (``CompactLinear``).

OPT computes ``head_dim = hidden_size / num_attention_heads``: after head removal the stock config cannot
describe the model, and ``prunekit.load_pruned`` rebuilds it from the stored shapes.
"""

from __future__ import annotations

from torch import nn

from ..adapters import FamilyAdapter, register_family
from ..groups import CoupledGroup

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

    def coupled_groups(self, model: nn.Module, index: int) -> list[CoupledGroup]:
        p = self.block_prefix(model, index)
        block = self.blocks(model)[index]
        f = block.fc2.in_features
        units = tuple((j,) for j in range(f))
        groups = [CoupledGroup(name=f"{p}.mlp:ffn_channel", kind="ffn_channel", block=index,
                               downstream=f"{p}.fc2", units=units, upstream={f"{p}.fc1": units})]
        n, _, hd = self.attention_counts(model, index)
        heads = tuple(tuple(range(h * hd, (h + 1) * hd)) for h in range(n))
        groups.append(CoupledGroup(name=f"{p}.self_attn:attention_head", kind="attention_head", block=index,
                                   downstream=f"{p}.self_attn.out_proj", units=heads,
                                   upstream={f"{p}.{m}": heads for m in _QKV}))
        chans = tuple((c,) for c in range(n * hd))
        groups.append(CoupledGroup(name=f"{p}.self_attn:vo_channel", kind="vo_channel", block=index,
                                   downstream=f"{p}.self_attn.out_proj", units=chans,
                                   upstream={f"{p}.self_attn.v_proj": chans}))
        return groups

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
