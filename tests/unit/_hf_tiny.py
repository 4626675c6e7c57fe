"""Tiny offline Hugging Face fixtures for the model-level tests: a byte-level BPE tokenizer trained on a few
sentences (no hub download) and random 2-layer LLaMA / OPT / GPT-2 models (hidden 32)."""

from __future__ import annotations

import torch

TEXT = (
    "The quick brown fox jumps over the lazy dog. Pruning removes weights from a network while keeping "
    "its outputs close to the dense ones. A layer problem is a least squares problem over the kept weights. "
) * 8


def tiny_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=["<s>", "</s>"], show_progress=False)
    tok.train_from_iterator([TEXT], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>")


def tiny_model(family: str, vocab_size: int = 300, seed: int = 0):
    """A random 2-layer causal LM of ``family`` in {"llama", "opt", "gpt2"} (float32, eval mode)."""
    from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig, OPTConfig

    torch.manual_seed(seed)
    if family == "llama":
        config = LlamaConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                             bos_token_id=0, eos_token_id=1, tie_word_embeddings=False)
    elif family == "opt":
        config = OPTConfig(vocab_size=vocab_size, hidden_size=32, ffn_dim=64, num_hidden_layers=2,
                           num_attention_heads=4, max_position_embeddings=256, word_embed_proj_dim=32,
                           bos_token_id=0, eos_token_id=1, pad_token_id=1)
    elif family == "gpt2":
        config = GPT2Config(vocab_size=vocab_size, n_embd=32, n_layer=2, n_head=4, n_positions=256,
                            bos_token_id=0, eos_token_id=1)
    else:
        raise ValueError(family)
    return AutoModelForCausalLM.from_config(config).eval()


def save_tiny(tmp_path, family: str):
    """Save a tiny model + tokenizer to ``tmp_path/family`` and return the folder."""
    tok = tiny_tokenizer()
    model = tiny_model(family, vocab_size=len(tok))
    folder = tmp_path / family
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder
