"""A formulation of your own prunes a whole model: from Python (``Recipe(method=Class)``) and from the command line
(``prunekit prune --method file.py:Class``), through the same path as the built-in methods.

``ColumnEnergyDrop`` is written exactly like ``examples/02_custom_formulation.py``: a ``Formulation`` subclass with a
``sparsity`` field and a registered torch solver -- nothing more.  Its ``sparsity: Channels`` field tells prunekit it
prunes channels; the pipeline states it on every coupled group (MLP channels), solves it, removes the channels and
writes a checkpoint stock ``from_pretrained`` loads.  Run:  python examples/06_user_formulation_whole_model.py
"""

from __future__ import annotations

import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch

import prunekit
from prunekit.formulations import Channels, Formulation, Guarantee
from prunekit.solvers import Solution, Solver, register_solver


@dataclass(frozen=True, eq=False)
class ColumnEnergyDrop(Formulation):
    """Drop the channel groups with the least removal energy, restore the kept columns by least squares.

    .. math::  S_j = \\tfrac12 G_{jj} \\lVert W_{:,j} \\rVert_2^2, \\quad
               \\hat W_{:,S} = W_{:,S} + W_{:,P} \\hat G_{PS} \\hat G_{SS}^{-1}, \\quad \\hat W_{:,P} = 0

    W (m, n), G (n, n), damped G_hat = G + lambda I.  Guarantee: HEURISTIC.  Paper: none (an example).
    """

    sparsity: Channels = None
    guarantee: ClassVar[Guarantee] = Guarantee.HEURISTIC

    def _form(self):
        return self._base_form(is_mixed_integer=True, row_separable=False)


@register_solver(ColumnEnergyDrop, backend="torch")
class TorchColumnEnergyDrop(Solver):
    """Scores, projection onto the channel spec, one |S| x |S| solve."""

    def run(self, f, options):
        w0 = f.layer.weight
        w = w0.detach().to(options.torch_dtype)
        g = f.layer.damped_gram(dtype=options.torch_dtype, device=w.device)
        scores = 0.5 * f.layer.gram.diagonal().to(w) * (w**2).sum(0)
        keep = f.sparsity.keep_columns_from_group_scores(f.sparsity.group_scores(scores.double()), w.shape[1])
        s, p = torch.nonzero(keep).squeeze(1), torch.nonzero(~keep).squeeze(1)
        out = torch.zeros_like(w)
        out[:, s] = w[:, s] + torch.linalg.solve(g[s][:, s], (w[:, p] @ g[p][:, s]).T).T
        return Solution(weights=out.to(w0.dtype), mask=keep.unsqueeze(0).expand_as(w).clone(), kept_columns=s)


def tiny_llama(folder: Path) -> Path:
    """A random 4-block LLaMA (hidden 64, MLP 256) with a byte-level tokenizer, saved as safetensors."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.train_from_iterator([TEXT], trainers.BpeTrainer(vocab_size=300, show_progress=False,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=256, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


TEXT = "Pruning removes weights from a network while keeping its outputs close to the dense ones. " * 40


def main() -> int:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from prunekit.cli import main as cli

    work = Path(tempfile.mkdtemp(prefix="prunekit-example-06-"))
    src = tiny_llama(work / "llama")
    calib = work / "calib.txt"
    calib.write_text(TEXT)
    recipe = prunekit.Recipe(method=ColumnEnergyDrop, structure="channels", sparsity=0.25,
                             calibration=dict(source=str(calib), nsamples=8, seqlen=32))
    print(f"method {recipe.method.name}: structures {sorted(recipe.method.structures)}, options {recipe.method.options}")

    # 1. Python: prune a model in memory.
    model = AutoModelForCausalLM.from_pretrained(src).eval()
    result = prunekit.prune(model, recipe, str(calib), tokenizer=AutoTokenizer.from_pretrained(src), progress=False)
    print(f"python: {result.report.params_before:,} -> {result.report.params_after:,} parameters, "
          f"MLP width {model.config.intermediate_size}")

    # 2. Command line: the same class by file path, disk to disk (streamed block by block).
    out = work / "pruned"
    code = cli(["prune", "--model", str(src), "--method", f"{Path(__file__).resolve()}:ColumnEnergyDrop",
                "--structure", "channels", "--sparsity", "0.25", "--calib", str(calib), "--nsamples", "8",
                "--seqlen", "32", "--out", str(out), "--no-progress"])
    reloaded = AutoModelForCausalLM.from_pretrained(out).eval()  # stock loader
    ids = torch.randint(0, 200, (1, 24))
    diff = float((reloaded(ids).logits - model(ids).logits).abs().max())
    print(f"cli: exit {code}, stock from_pretrained MLP width {reloaded.config.intermediate_size}, "
          f"max |logits(cli) - logits(python)| = {diff:.2e}")
    ok = code == 0 and reloaded.config.intermediate_size == 192 == model.config.intermediate_size and diff < 1e-4
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
