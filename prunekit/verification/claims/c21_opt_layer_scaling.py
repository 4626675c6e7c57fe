"""C21 (sanity report, not a property of prunekit): OPT per-layer parameters grow like about N^0.80.

StructPrune's O(sqrt N) memory argument needs the number of layers to grow in proportion to the parameters
per layer.  From the published OPT configurations (hidden size d, layers L, FFN 4d, vocabulary 50272,
2050 learned positions; OPT-350m projects 512-dim embeddings), the per-layer count 12 d^2 + 13 d grows like
N^0.80 across 125M..175B (N^(2/3) would follow from L ∝ d).  Registered as a *report* because it is a fact
about published configurations, not a check on a random instance.
"""

from __future__ import annotations

import numpy as np

from . import register_report

# (name, hidden size, layers) from the OPT configs (facebook/opt-*), Zhang et al. 2022, Table 1.
OPT_CONFIGS = (("opt-125m", 768, 12), ("opt-350m", 1024, 24), ("opt-1.3b", 2048, 24), ("opt-2.7b", 2560, 32),
               ("opt-6.7b", 4096, 32), ("opt-13b", 5120, 40), ("opt-30b", 7168, 48), ("opt-66b", 9216, 64),
               ("opt-175b", 12288, 96))
VOCAB, POSITIONS = 50272, 2050


def per_layer_params(d: int) -> int:
    """q,k,v,o (+biases), fc1/fc2 with 4d (+biases), two LayerNorms: 12 d^2 + 13 d."""
    return 4 * d * d + 4 * d + 8 * d * d + 4 * d + d + 4 * d


def total_params(name: str, d: int, layers: int) -> int:
    emb_dim = 512 if name == "opt-350m" else d
    extra = 2 * 512 * d if name == "opt-350m" else 2 * d  # project_in/out, or the final LayerNorm
    return layers * per_layer_params(d) + VOCAB * emb_dim + POSITIONS * d + extra


def scaling_exponent(configs=OPT_CONFIGS) -> float:
    """Least-squares slope of log(per-layer parameters) against log(N)."""
    n = np.log([total_params(*c) for c in configs])
    p = np.log([per_layer_params(c[1]) for c in configs])
    return float(np.polyfit(n, p, 1)[0])


@register_report("c21_opt_layer_scaling", "OPT per-layer parameter count vs total N (C21 sanity check, ~N^0.80)")
def run(trials: int = 1, seed: int = 0) -> dict:
    rows = [{"model": c[0], "hidden": c[1], "layers": c[2], "per_layer": per_layer_params(c[1]),
             "total": total_params(*c)} for c in OPT_CONFIGS]
    return {"exponent": scaling_exponent(), "models": rows,
            "note": "sqrt(N) would be exponent 0.5; L proportional to d would give 2/3."}
