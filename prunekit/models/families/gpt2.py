"""GPT-2 family.  Block layout (``model.transformer.h[i]``)::

    x -> ln_1 -> attn.c_attn (fused q|k|v, Conv1D) -> attention -> attn.c_proj (Conv1D) -> + x
      -> ln_2 -> mlp.c_fc (Conv1D) -> GELU -> mlp.c_proj (Conv1D) -> + x

``Conv1D`` stores its weight as (in, out): :meth:`GPT2Adapter.get_weight` / :meth:`set_weight` transpose, so the
rest of prunekit sees the PyTorch (out, in) layout.  Coupled groups, derived from the block's computation
(``prunekit.models.derived_groups``): ``ffn_channel`` (row j of c_fc, column j of mlp.c_proj), ``attention_head``
(rows ``h*hd + c`` of each of the q, k and v thirds of the fused c_attn, the ``hd`` columns of attn.c_proj) and
``vo_channel`` (one row of the v third, one column of attn.c_proj; compacted by surgery).
"""

from __future__ import annotations

from torch import nn

from ..adapters import FamilyAdapter, register_family


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
