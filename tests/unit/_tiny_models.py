"""Tiny random Hugging Face causal LMs for the model tests (no network, 2 layers, hidden 32-64)."""

from __future__ import annotations

import torch

FAMILY_TYPES = ("llama", "llama_mha", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "opt", "gpt2")


def tiny_config(kind: str):
    import transformers as tf

    common = dict(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    if kind == "llama":
        return tf.LlamaConfig(**common)
    if kind == "llama_mha":
        return tf.LlamaConfig(**{**common, "num_key_value_heads": 4, "tie_word_embeddings": True})
    if kind == "mistral":
        return tf.MistralConfig(**common, sliding_window=None)
    if kind == "qwen2":
        return tf.Qwen2Config(**common)
    if kind == "qwen3":
        return tf.Qwen3Config(**common, head_dim=8)
    if kind == "gemma":
        return tf.GemmaConfig(**common, head_dim=16)
    if kind == "gemma2":  # soft-capped attention and logits, four norms per block, alternating sliding window
        return tf.Gemma2Config(**common, head_dim=16, sliding_window=8, query_pre_attn_scalar=16)
    if kind == "gemma3_text":
        return tf.Gemma3TextConfig(**common, head_dim=16, sliding_window=8, query_pre_attn_scalar=16)
    if kind == "opt":
        return tf.OPTConfig(vocab_size=96, hidden_size=32, ffn_dim=64, num_hidden_layers=2, num_attention_heads=4,
                            max_position_embeddings=64, word_embed_proj_dim=32)
    if kind == "gpt2":
        return tf.GPT2Config(vocab_size=96, n_embd=32, n_inner=64, n_layer=2, n_head=4, n_positions=64,
                             bos_token_id=0, eos_token_id=0)
    raise ValueError(kind)


def tiny_model(kind: str, seed: int = 0, dtype=torch.float64):
    """A random tiny model (eval mode, eager attention, biases randomized so they matter)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    config = tiny_config(kind)
    config._attn_implementation = "eager"
    model = AutoModelForCausalLM.from_config(config).to(dtype).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name or "ln_" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model


def tokens(vocab: int = 96, n: int = 2, t: int = 7, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (n, t), generator=g)
