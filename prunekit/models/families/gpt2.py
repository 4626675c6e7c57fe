"""GPT-2 family.  Block layout (``model.transformer.h[i]``)::

    x -> ln_1 -> attn.c_attn (fused q|k|v, Conv1D) -> attention -> attn.c_proj (Conv1D) -> + x
      -> ln_2 -> mlp.c_fc (Conv1D) -> GELU -> mlp.c_proj (Conv1D) -> + x

``Conv1D`` stores its weight as (in, out): :meth:`GPT2Adapter.get_weight` / :meth:`set_weight` transpose, so the
rest of prunekit sees the PyTorch (out, in) layout.  Coupled groups:

* ``ffn_channel`` -- row j (and bias entry) of c_fc in (out, in) layout, column j of mlp.c_proj;
* ``attention_head`` -- rows ``h*hd + c`` of each of the q, k and v thirds of c_attn and the ``hd`` columns of
  attn.c_proj;
* ``vo_channel`` -- one row of the v third of c_attn and one column of attn.c_proj (compacted by surgery:
  HF attention ties the value head size to ``head_dim``).
"""

from __future__ import annotations

from torch import nn

from ..adapters import FamilyAdapter, register_family
from ..groups import CoupledGroup


@register_family
class GPT2Adapter(FamilyAdapter):
    name = "gpt2"
    model_types = ("gpt2",)

    def blocks(self, model: nn.Module) -> nn.ModuleList:
        return model.transformer.h

    def block_prefix(self, model: nn.Module, index: int) -> str:
        return f"transformer.h.{index}"

    def stages(self, block: nn.Module) -> list[list[str]]:
        return [["attn.c_attn"], ["attn.c_proj"], ["mlp.c_fc"], ["mlp.c_proj"]]

    def attention_counts(self, model: nn.Module, index: int) -> tuple[int, int, int]:
        attn = self.blocks(model)[index].attn
        hd = int(attn.head_dim)
        c_attn = attn.c_attn  # fused q|k|v: Conv1D weight (in, 3E), or a CompactLinear of full width 3E
        width = c_attn.full_out if hasattr(c_attn, "full_out") else self.get_weight(c_attn).shape[0]
        n = width // 3 // hd
        return n, n, hd

    def coupled_groups(self, model: nn.Module, index: int) -> list[CoupledGroup]:
        p = self.block_prefix(model, index)
        block = self.blocks(model)[index]
        f = block.mlp.c_proj.weight.shape[0]
        units = tuple((j,) for j in range(f))
        groups = [CoupledGroup(name=f"{p}.mlp:ffn_channel", kind="ffn_channel", block=index,
                               downstream=f"{p}.mlp.c_proj", units=units, upstream={f"{p}.mlp.c_fc": units})]
        n, _, hd = self.attention_counts(model, index)
        e = n * hd
        heads = tuple(tuple(range(h * hd, (h + 1) * hd)) for h in range(n))
        qkv_rows = tuple(tuple(s * e + r for s in range(3) for r in head) for head in heads)
        groups.append(CoupledGroup(name=f"{p}.attn:attention_head", kind="attention_head", block=index,
                                   downstream=f"{p}.attn.c_proj", units=heads,
                                   upstream={f"{p}.attn.c_attn": qkv_rows}))
        groups.append(CoupledGroup(name=f"{p}.attn:vo_channel", kind="vo_channel", block=index,
                                   downstream=f"{p}.attn.c_proj", units=tuple((c,) for c in range(e)),
                                   upstream={f"{p}.attn.c_attn": tuple((2 * e + c,) for c in range(e))}))
        return groups

    def fix_block(self, model: nn.Module, index: int) -> None:
        block = self.blocks(model)[index]
        n, _, hd = self.attention_counts(model, index)
        block.attn.num_heads = n
        block.attn.split_size = n * hd

    def fix_config(self, model: nn.Module) -> None:
        heads, inner = set(), set()
        for i, block in enumerate(self.blocks(model)):
            self.fix_block(model, i)
            heads.add(self.attention_counts(model, i)[0])
            inner.add(block.mlp.c_proj.weight.shape[0])
        if heads:
            model.config.n_head = max(heads)
            model.config.n_inner = max(inner)
