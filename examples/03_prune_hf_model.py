"""Prune a Hugging Face causal LM through the prunekit API (offline, < 1 minute on CPU).

A tiny random LLaMA is built from a config; calibration and evaluation text is sampled from the model itself
(the offline "self" source), so nothing is downloaded.  Two recipes run through the same entry points:

* FASP structured channel pruning (methods.md §4): 30% of the MLP channels of every block are removed
  physically (gate/up rows + down columns) after a least-squares restoration of down_proj;
* SparseGPT 2:4 semi-structured pruning (methods.md §8.3): exactly 2 of every 4 consecutive input weights are
  zero in every linear layer of the blocks.

The FASP model is saved, reloaded and evaluated again.  For a real model use the CLI, e.g.
``prunekit prune --model smollm2-135m --method fasp --structure channels --sparsity 0.3 --eval --out OUT``.
"""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, LlamaConfig

import prunekit
from prunekit.data import calibration_windows, sample_from_model
from prunekit.evaluate import perplexity
from prunekit.models.recipe import CalibrationSettings, Recipe
from prunekit.models.saving import load_pruned, save_pruned

SEQLEN = 64


def tiny_llama() -> torch.nn.Module:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         bos_token_id=0, eos_token_id=1, tie_word_embeddings=False)
    return AutoModelForCausalLM.from_config(config).eval()


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def main() -> None:
    dense = tiny_llama()
    # Calibration: 8 windows of 64 tokens sampled from the model (seed 0); evaluation: another sample.
    calib = calibration_windows(None, "self", nsamples=8, seqlen=SEQLEN, seed=0, model=dense)
    eval_tokens = sample_from_model(dense, nsamples=4, seqlen=2 * SEQLEN, seed=1).flatten()
    base = perplexity(dense, eval_tokens, SEQLEN)
    print(f"dense: {n_params(dense):,} parameters, ppl {base['ppl']:.2f} "
          f"(seqlen {base['seqlen']}, {base['windows']} windows)")

    # 1) FASP: plan (the model is untouched), inspect, then apply.
    fasp = Recipe(method="fasp", structure="channels", sparsity=0.3,
                  calibration=CalibrationSettings(source="self", nsamples=8, seqlen=SEQLEN))
    model = copy.deepcopy(dense)
    plan = prunekit.plan(model, fasp, calib, progress=False)
    for row in plan.records:  # one typed LayerRecord per coupled group (here: the MLP channels of a block)
        print(f"  {row.group}: kept {row.kept_units}/{row.num_units} channels, "
              f"relative error {row.relative_error:.4f}")
    prunekit.apply_(model, plan)
    after = perplexity(model, eval_tokens, SEQLEN)
    print(f"fasp channels 0.3: {n_params(model):,} parameters, ppl {after['ppl']:.2f}")

    with tempfile.TemporaryDirectory() as tmp:
        out = save_pruned(model, None, Path(tmp) / "fasp", plan=plan)
        reloaded, _ = load_pruned(out)
        again = perplexity(reloaded, eval_tokens, SEQLEN)
        print(f"  reloaded from {out.name}/: {n_params(reloaded):,} parameters, ppl {again['ppl']:.2f}")
        assert abs(again["ppl"] - after["ppl"]) < 1e-3 * after["ppl"]

    # 2) SparseGPT 2:4 in one call: prune() prunes the model in place, block by block (2:4 fixes sparsity 0.5).
    sgpt = Recipe(method="sparsegpt", structure="2:4",
                  calibration=CalibrationSettings(source="self", nsamples=8, seqlen=SEQLEN))
    model = copy.deepcopy(dense)
    result = prunekit.prune(model, sgpt, calib, progress=False)
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and ".layers." in name:
            zeros = (module.weight.reshape(module.weight.shape[0], -1, 4) == 0).sum(-1)
            assert bool((zeros >= 2).all()), f"{name} is not 2:4"
    ppl = perplexity(model, eval_tokens, SEQLEN)["ppl"]
    report = result.report  # a typed RunReport (report.to_dict() is the JSON the CLI writes)
    print(f"sparsegpt 2:4: nonzero {report.nonzero_params_before:,} -> {report.nonzero_params_after:,}, "
          f"ppl {ppl:.2f}, worst layer relative error {max(r.relative_error for r in report.layers):.4f}")


if __name__ == "__main__":
    main()
