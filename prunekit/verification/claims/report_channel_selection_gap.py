"""Report ``channel_selection_gap``: how far channel-selection heuristics are from the MIP optimum.

On random toy layers (n = 10-12 inputs, k = 3-4 removed, inputs with a nonzero mean, conditionings
"well", "ill", "correlated"), every heuristic picks a kept set and is scored against the brute-force
optimum of :class:`~prunekit.formulations.mip.MaskedReconstructionMIP` (best kept set + exact C1
restoration):

* ``selection``  -- the heuristic's kept set *with the exact C1 restoration*: the pure selection gap (>= 1);
* ``own_update`` -- the heuristic with its own update rule: magnitude and Wanda none (columns zeroed), FASP
  its damped least-squares restoration, FLAP its bias compensation (bias-aware error; it can go below 1,
  since the MIP has no intercept).

Scores: magnitude ||W_:,j||_2, Wanda (FLAP's Wanda-sp) mean_i |W_ij| ||X_j||, FASP ||W_:,j||_1 ||X_j||,
FLAP WIFV Var(x_j) ||W_:,j||^2.  Returns the median, mean and worst ratio per method and measure.
"""

from __future__ import annotations

import numpy as np
import torch

from . import register_report

CONDITIONINGS = ("well", "ill", "correlated")


def _ratios(rng: np.random.Generator, conditioning: str) -> dict[str, tuple[float, float]]:
    from ...formulations import scores
    from ...formulations.coupled import CoupledStructuredRemoval
    from ...formulations.flap import FLAPRemoval
    from ...formulations.reductions_spap import exact_restore
    from ...formulations.sparsity import Channels
    from ...solvers import solve
    from ...solvers.reference.bruteforce import best_channel_set
    from ..toy import random_layer

    n, k = int(rng.integers(10, 13)), int(rng.integers(3, 5))
    layer = random_layer(rng, int(rng.integers(4, 9)), n, conditioning=conditioning, with_bias=True, mean_shift=1.0)
    spec = Channels(count=k)
    _, opt = best_channel_set(layer, spec)
    opt = max(opt, 1e-300)
    out = {}
    w = layer.weight.double()
    for name, col in (("magnitude", scores.frobenius_column(layer)), ("wanda", scores.flap_wifn(layer))):
        keep = spec.keep_columns_from_group_scores(spec.group_scores(col), n)
        sel = layer.reconstruction_error(exact_restore(layer, keep)) / opt
        own = layer.reconstruction_error(w * keep.double().unsqueeze(0)) / opt
        out[name] = (sel, own)
    for name, form in (("fasp", CoupledStructuredRemoval(layer, spec)), ("flap", FLAPRemoval(layer, spec))):
        sol = solve(form, backend="torch", dtype="float64")
        sel = layer.reconstruction_error(exact_restore(layer, sol.mask[0])) / opt
        out[name] = (sel, sol.objective / opt)
    return out


def _summary(values: list[float]) -> dict[str, float]:
    arr = np.asarray(values, dtype=np.float64)
    return {"median": float(np.median(arr)), "mean": float(arr.mean()), "worst": float(arr.max()),
            "best": float(arr.min())}


@register_report(
    "channel_selection_gap",
    "Ratio of the reconstruction error of magnitude / Wanda / FASP / FLAP channel selection to the brute-force "
    "MIP optimum on toy layers: with C1 restoration (selection gap) and with each method's own update.",
)
def run(trials: int = 30, seed: int = 0) -> dict:
    with torch.no_grad():
        rows = []
        for t in range(int(trials)):
            rng = np.random.default_rng([seed, t])
            rows.append((CONDITIONINGS[t % len(CONDITIONINGS)], _ratios(rng, CONDITIONINGS[t % len(CONDITIONINGS)])))
    methods = {}
    for name in ("magnitude", "wanda", "fasp", "flap"):
        methods[name] = {
            "selection": _summary([r[name][0] for _, r in rows]),
            "own_update": _summary([r[name][1] for _, r in rows]),
            "selection_by_conditioning": {
                c: float(np.median([r[name][0] for cc, r in rows if cc == c])) for c in CONDITIONINGS
                if any(cc == c for cc, _ in rows)
            },
        }
    return {"trials": int(trials), "seed": int(seed), "n": "10-12", "k": "3-4",
            "conditionings": list(CONDITIONINGS), "methods": methods}
