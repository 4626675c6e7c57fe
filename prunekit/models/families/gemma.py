"""Gemma family: Gemma, Gemma 2, Gemma 3 (text).  The LLaMA block layout with Gemma's differences:

* ``head_dim`` is an explicit config entry (256 for Gemma 7B, not ``hidden_size / num_heads``); the adapter
  reads it from the attention module, so head removal never changes it;
* the RMSNorms scale by ``1 + weight`` and Gemma 2/3 add ``pre/post_feedforward_layernorm`` and, for Gemma 3,
  ``q_norm``/``k_norm`` over ``head_dim``: all act on the residual width or on one head, never on a removed unit,
  so they need no surgery;
* the MLP is a GeGLU (``gate_proj``, ``up_proj``, ``down_proj``), the same GLU channel coupling;
* embeddings are tied and scaled by ``sqrt(hidden_size)``; the residual width is never pruned.
"""

from __future__ import annotations

from ..adapters import register_family
from .llama import LlamaAdapter


@register_family
class GemmaAdapter(LlamaAdapter):
    """LLaMA logic with Gemma's explicit ``head_dim`` (kept in the config after surgery)."""

    name = "gemma"
    model_types = ("gemma", "gemma2", "gemma3_text")
