"""Any causal LM prunes unstructured or N:M: Mixtral (MoE) and Phi-3 (fused projections) have no family adapter.

The generic adapter finds the decoder blocks and their linear layers, leaves the MoE router dense, prunes every
expert (transformers' fused 3-D expert weights are split into one linear pair per expert for the solve and fused
back), and ``targets`` / ``ignore`` patterns choose the modules (llm-compressor style: a dotted-name suffix,
``re:<regex>``, or a type ``Linear`` / ``Conv1D``).  The output folder loads with stock ``from_pretrained``.
Run:  python examples/07_any_architecture.py
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, MixtralConfig, Phi3Config

from prunekit.models.pipeline import prune_checkpoint


def tiny(config):
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config).eval()


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="prunekit-example-07-"))
    common = dict(vocab_size=128, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                  max_position_embeddings=128)
    models = {"mixtral": tiny(MixtralConfig(**common, intermediate_size=96, num_local_experts=4,
                                            num_experts_per_tok=2)),
              "phi3": tiny(Phi3Config(**common, intermediate_size=128, pad_token_id=0, eos_token_id=0,
                                      bos_token_id=0))}
    tokens = torch.randint(0, 128, (1, 32), generator=torch.Generator().manual_seed(0))
    for name, model in models.items():
        model.save_pretrained(work / name)
        recipe = {"method": "sparsegpt", "structure": "2:4",
                  # keep attention dense in this run: only MLP / expert weights are pruned
                  "ignore": ["lm_head", "re:.*router.*", "gate", "re:.*self_attn.*"],
                  # no tokenizer in these folders: calibration text is sampled from the model itself
                  "calibration": {"source": "self", "nsamples": 8, "seqlen": 32}}
        report = prune_checkpoint(work / name, recipe, work / f"{name}-2of4", progress=False, echo=None)
        pruned = AutoModelForCausalLM.from_pretrained(work / f"{name}-2of4").eval()  # stock loader
        modules = sorted({r.module.split(".", 3)[-1] for r in report.layers})
        with torch.no_grad():
            logits = pruned(input_ids=tokens).logits
        print(f"{name}: {len(report.layers)} layer problems ({', '.join(modules[:4])}, ...), "
              f"nonzero weights {report.nonzero_params_before:,} -> {report.nonzero_params_after:,}, "
              f"finite logits: {bool(torch.isfinite(logits).all())}")
        assert torch.isfinite(logits).all() and report.nonzero_params_after < report.nonzero_params_before
        assert not any("self_attn" in r.module for r in report.layers)


if __name__ == "__main__":
    main()
