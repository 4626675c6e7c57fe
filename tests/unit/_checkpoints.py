"""Tiny on-disk checkpoints for the disk-to-disk pipeline tests (prunekit.models.pipeline)."""

from __future__ import annotations

from pathlib import Path

import torch

from _hf_tiny import TEXT, tiny_tokenizer

CUSTOM_FORMULATION = '''
"""A formulation defined outside prunekit, written like examples/02_custom_formulation.py."""
from dataclasses import dataclass
from typing import ClassVar

import torch

from prunekit.formulations import Channels, Formulation, Guarantee
from prunekit.solvers import Solution, Solver, register_solver


@dataclass(frozen=True, eq=False)
class EnergyChannelDrop(Formulation):
    """Drop the channel groups with the least removal energy 1/2 G_jj ||W_:,j||^2, restore the rest by least squares."""

    sparsity: Channels = None
    guarantee: ClassVar[Guarantee] = Guarantee.HEURISTIC

    def _form(self):
        return self._base_form(is_mixed_integer=True, row_separable=False)


@register_solver(EnergyChannelDrop, backend="torch")
class TorchEnergyChannelDrop(Solver):
    def run(self, f, options):
        w0 = f.layer.weight
        w = w0.detach().to(options.torch_dtype)
        g = f.layer.damped_gram(dtype=options.torch_dtype, device=w.device)
        scores = 0.5 * f.layer.gram.diagonal().to(w) * (w ** 2).sum(0)
        keep = f.sparsity.keep_columns_from_group_scores(f.sparsity.group_scores(scores.double()), w.shape[1])
        s, p = torch.nonzero(keep).squeeze(1), torch.nonzero(~keep).squeeze(1)
        out = torch.zeros_like(w)
        out[:, s] = w[:, s] + torch.linalg.solve(g[s][:, s], (w[:, p] @ g[p][:, s]).T).T
        return Solution(weights=out.to(w0.dtype), mask=keep.unsqueeze(0).expand_as(w).clone(), kept_columns=s)
'''


def write_checkpoint(folder: Path, *, layers: int = 2, dtype=torch.float32, seed: int = 0, hidden: int = 32,
                     intermediate: int = 64) -> Path:
    """A random LLaMA (GQA 4/2) with ``layers`` blocks saved as safetensors + tokenizer in ``folder``."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    tok = tiny_tokenizer()
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=intermediate,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=256, bos_token_id=0, eos_token_id=1, tie_word_embeddings=False)
    model = AutoModelForCausalLM.from_config(config).to(dtype).eval()
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def calibration_file(folder: Path) -> Path:
    path = folder / "calib.txt"
    path.write_text(TEXT)
    return path


def recipe_dict(calib: Path, **fields) -> dict:
    base = dict(method="wanda", structure="unstructured", sparsity=0.5,
                calibration=dict(source=str(calib), nsamples=4, seqlen=32))
    base.update(fields)
    return base


def tensors_of(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a written output folder (all shards)."""
    from safetensors.torch import load_file

    out = {}
    for shard in sorted(Path(folder).glob("*.safetensors")):
        out.update(load_file(str(shard)))
    return out
