"""C10: the FISTAPruner lasso separates over rows: per-row FISTA equals the joint solve, and the objective is a sum."""

from __future__ import annotations

import numpy as np

from . import register_claim


def row_formulation(f, i: int):
    """The lasso of row i alone (same G, G* and row i of C)."""
    from dataclasses import replace

    from ...formulations.layer import LayerData

    lay = f.layer
    row = LayerData(weight=lay.weight[i:i + 1], gram=lay.gram, num_tokens=lay.num_tokens, gram_star=lay.gram_star,
                    cross=None if lay.cross is None else lay.cross[i:i + 1], damping=lay.damping)
    return replace(f, layer=row)


def check_instance(f) -> float:
    """C10's error on the pure-lasso problem ``f``: per-row FISTA stacked vs the joint solve (weights and the
    summed objective, relative)."""
    import torch

    from ...solvers import solve

    joint = solve(f, backend="torch", dtype="float64")
    rows = [solve(row_formulation(f, i), backend="torch", dtype="float64") for i in range(f.layer.out_features)]
    stacked = torch.cat([r.weights.double() for r in rows], dim=0)
    scale = max(float(joint.weights.abs().max()), 1e-300)
    w_err = float((stacked - joint.weights.double()).abs().max()) / scale
    obj_err = abs(sum(r.objective for r in rows) - joint.objective) / max(abs(joint.objective), 1e-300)
    return max(w_err, obj_err)


@register_claim("C10", "The FISTAPruner objective separates over rows: solving the rows one by one with FISTA "
                "equals the joint solve.", tolerance=1e-12, source="methods.md §5.1, §11 C10")
def check(rng: np.random.Generator) -> float:
    from dataclasses import replace

    from .c08_fista_lasso_convergence import draw_lasso

    f = draw_lasso(rng, iterations=int(rng.integers(20, 200)))
    return check_instance(replace(f, eps=float((0.0, 1e-8, 1e-4)[int(rng.integers(0, 3))])))
