"""Dependency graph, coupled groups, recipes and replayable plans on a tiny GQA model (offline, CPU).

1. ``build_graph`` maps a LLaMA-style model (GQA: 4 query heads, 2 key/value heads) to a networkx graph of its
   linear modules; ``coupled_groups`` lists what must be removed together (GLU channels, GQA groups, V/O
   channel pairs).
2. A ``Recipe`` (FLAP with global adaptive allocation AL-AM over MLP channels *and* attention heads) is written
   to JSON and read back.
3. ``prunekit.plan`` leaves the model untouched and returns a ``PruningPlan`` (kept units, new weights in memory,
   one typed ``LayerRecord`` per coupled group); the plan is saved to a folder with its weights
   (``include_weights=True``: plan.json + plan.safetensors), loaded again and replayed with ``prunekit.apply_`` --
   the replayed model equals the directly pruned one.
4. The result has different widths per layer; ``save_pruned`` / ``load_pruned`` round-trip it exactly.

Run:  python examples/05_graph_recipe_plan.py
"""

from __future__ import annotations

import copy
import sys
import tempfile
from collections import Counter
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, LlamaConfig

import prunekit
from prunekit.data import calibration_windows
from prunekit.models.graph import build_graph, coupled_groups
from prunekit.models.plan import PruningPlan
from prunekit.models.recipe import CalibrationSettings, Recipe
from prunekit.models.saving import load_pruned, save_pruned


def tiny_gqa_llama() -> torch.nn.Module:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                         bos_token_id=0, eos_token_id=1)
    return AutoModelForCausalLM.from_config(config).eval()


def main() -> int:
    model = tiny_gqa_llama()
    graph = build_graph(model)
    groups = coupled_groups(graph)
    print(f"graph: {graph.number_of_nodes()} nodes, {graph.number_of_edges()} edges")
    print("coupled groups per kind:", dict(Counter(g.kind for g in groups)))
    first = coupled_groups(graph, kinds="gqa_group", blocks=[0])[0]
    print(f"  {first.name}: {first.num_units} units, downstream {first.downstream}, "
          f"upstream {sorted(first.upstream)}")

    recipe = Recipe(method="flap", structure="channels", sparsity=0.25, allocation="global_threshold",
                    attention="heads", calibration=CalibrationSettings(source="self", nsamples=8, seqlen=32))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        recipe.save(tmp / "recipe.json")
        recipe = Recipe.load(tmp / "recipe.json")
        print("recipe round-trips through JSON:", recipe.method.name, recipe.structure, recipe.allocation)

        calib = calibration_windows(None, "self", nsamples=8, seqlen=32, seed=0, model=model)
        plan = prunekit.plan(model, recipe, calib, progress=False)
        worst = max(plan.records, key=lambda r: r.relative_error)
        print(f"{len(plan.records)} layer problems; worst: {worst.group} kept {worst.kept_units}/{worst.num_units} "
              f"units, relative error {worst.relative_error:.4f}")
        plan.save(tmp / "plan", include_weights=True)  # plan.json alone (the default) holds no weights to replay
        replayed = prunekit.apply_(copy.deepcopy(model), PruningPlan.load(tmp / "plan"))
        direct = prunekit.apply_(copy.deepcopy(model), plan)
        widths = [blk.mlp.down_proj.in_features for blk in direct.model.layers]
        heads = [blk.self_attn.o_proj.in_features // 16 for blk in direct.model.layers]
        print(f"kept MLP channels per layer {widths} (of 96); kept heads per layer {heads} (of 4)")

        ids = torch.randint(0, 128, (1, 16))
        with torch.no_grad():
            same_replay = torch.allclose(direct(ids).logits, replayed(ids).logits)
            out = save_pruned(direct, None, tmp / "model", plan=plan)
            reloaded, _ = load_pruned(out)
            same_reload = torch.allclose(direct(ids).logits, reloaded(ids).logits, atol=1e-6)
        print(f"replayed plan == direct apply: {same_replay}; saved and reloaded == pruned: {same_reload}")
    return 0 if same_replay and same_reload else 1


if __name__ == "__main__":
    sys.exit(main())
