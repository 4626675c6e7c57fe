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


def save_config_checkpoint(folder, config, seed: int = 0):
    """Save a random model of ``config`` (its vocabulary set to the tiny tokenizer's) and the tokenizer to
    ``folder`` unless it is already there; returns the folder."""
    from transformers import AutoModelForCausalLM

    if not folder.exists():
        tok = tiny_tokenizer()
        config.vocab_size = len(tok)
        torch.manual_seed(seed)
        AutoModelForCausalLM.from_config(config).save_pretrained(folder)
        tok.save_pretrained(folder)
    return folder


def cli_prune(model_folder, calib, out, *extra, nsamples: str = "4", seqlen: str = "16") -> dict:
    """``prunekit prune`` of ``model_folder`` into ``out`` from the CLI (``nsamples`` x ``seqlen`` windows of the text
    file ``calib``, no progress bars); asserts exit status 0 and returns ``report.json``."""
    import json

    from prunekit.cli import main

    args = ["prune", "--model", str(model_folder), "--calib", str(calib), "--nsamples", nsamples, "--seqlen", seqlen,
            "--out", str(out), "--no-progress", *extra]
    assert main(args) == 0
    return json.loads((out / "report.json").read_text())
