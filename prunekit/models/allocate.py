"""Non-uniform sparsity across layers: a dense pre-pass of importance scores fed to ``LayerAllocation``.

With ``Recipe.allocation`` = ``"softmax"`` or ``"global_threshold"`` (methods.md §7.3, [derived]):

1. one pass over the **dense** model (independent blocks on dense inputs) accumulates each target's Gram matrix
   and computes importance scores: for a coupled group, the unit score is the method's column score summed
   over the unit's columns (FASP/Wanda ``||W_{:,j}||_1 ||X_j||_2``; FLAP's WIFV for flap); for a linear module
   (unstructured), the Wanda scores ``|W_ij| ||X_j||_2``, summarized by evenly spaced order statistics whose
   counts are proportional to the true weight counts (at most ``TOTAL_POINTS`` in all: memory stays small);
2. each target's energy E_l is its mean score divided by the mean over targets (so ``temperature`` ~ 1 is a
   moderate setting);
3. ``prunekit.solve(LayerAllocation(...))`` turns the global budget ``mean_sparsity * sum_l n_l`` into per-target
   sparsities s_l (softmax at temperature T, or one global threshold on scores normalized per layer).

Returns ``{target key: s_l}`` for :func:`prunekit.models.runner.plan`.  N:M patterns have a fixed ratio and
cannot be allocated.

Per-target ratios given by hand (``ratios=`` of ``prunekit.plan`` / ``prunekit.prune`` / ``runner.run``) go
through :func:`check_ratios` first: every key must name a target of the model under the recipe
(:func:`target_keys`: module names, or coupled-group names for channels) and every value lie in [0, 1) --
nothing is clamped or ignored silently.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Optional

import torch

from ..errors import SparsityError
from .calibration import capture_block_inputs, collect_grams, forward_block
from .recipe import Recipe

MAX_POINTS = 65536     # score summary kept per module during the pre-pass
TOTAL_POINTS = 2_000_000  # total points handed to LayerAllocation for module targets


def _unit_scores(layer, target, method) -> torch.Tensor:
    from ..formulations import scores

    if target.group is not None:
        fn = scores.COLUMN_SCORES[method.column_score]
        col = fn(layer).double().cpu()
        return torch.stack([col[list(u)].sum() for u in target.group.units])
    return _quantiles(scores.wanda(layer).double().flatten().cpu(), MAX_POINTS)


def _quantiles(values: torch.Tensor, k: int) -> torch.Tensor:
    """``k`` evenly spaced order statistics of ``values`` (all of them when k >= numel)."""
    ordered = torch.sort(values).values
    if k >= ordered.numel():
        return ordered
    return ordered[torch.linspace(0, ordered.numel() - 1, max(int(k), 1)).round().long()]


def _proportional(vectors: list[torch.Tensor], numels: list[int]) -> list[torch.Tensor]:
    """Resample per-module score summaries so that their lengths are proportional to the true weight counts."""
    stride = max(1.0, sum(numels) / TOTAL_POINTS)
    return [_quantiles(v, max(1, round(n / stride))) for v, n in zip(vectors, numels)]


def importance_prepass(store, recipe: Recipe, tokens: torch.Tensor, *, device="cpu",
                       progress: bool = True) -> tuple[list[str], list[torch.Tensor]]:
    """Target keys and their unit-score vectors from one pass over the dense blocks of ``store``
    (``prunekit.models.stores``: a model in memory or a checkpoint streamed block by block).

    Distributed (``prunekit.distributed``): each rank runs its own windows, each target's statistics are summed
    onto the rank that scores it, and the score vectors are broadcast -- every rank returns the same result.
    """
    from ..distributed import current
    from .runner import DTYPES, block_targets, solve_cost
    from .sinks import as_compute

    ctx = current()
    model, adapter = store.model, store.adapter
    dtype = DTYPES[recipe.dtype]
    device = torch.device(device)

    def first_inputs():
        local = ctx.local_windows(tokens)
        store.prepare()
        return capture_block_inputs(model, adapter, local, device=device, dtype=dtype)

    inputs = ctx.checked(first_inputs)
    keys, vectors, numels = [], [], []
    iterator = range(len(store))
    if progress and ctx.is_main:
        from tqdm.auto import tqdm

        iterator = tqdm(iterator, desc="prunekit allocation pre-pass", unit="block")
    for index in iterator:
        dense = ctx.checked(lambda: as_compute(store.load(index), device, dtype))
        targets = block_targets(model, adapter, index, dense, recipe)
        accs = ctx.checked(collect_grams, dense, inputs, [t.rel for t in targets], device=device)
        owners = ctx.owners([solve_cost(dense.get_submodule(t.rel), adapter) for t in targets])
        for t, owner in zip(targets, owners):
            ctx.reduce_statistics_(accs[t.rel], dst=owner)

        mine = ctx.checked(_score_own_targets, ctx.rank, targets, owners, accs, dense, adapter, recipe)
        for t, owner in zip(targets, owners):
            vector, numel = ctx.broadcast(mine.get(t.rel), src=owner)
            keys.append(t.key)
            vectors.append(vector.to("cpu"))
            numels.append(int(numel))
        inputs = ctx.checked(_propagate_and_release, store, index, dense, inputs, device, last=index + 1 == len(store))
        del dense
    if recipe.structure.kind != "channels":
        vectors = _proportional(vectors, numels)
    return keys, vectors


def _score_own_targets(rank: int, targets, owners, accs, dense, adapter, recipe: Recipe) -> dict:
    """``{rel: (unit-score vector, weight count)}`` of the targets this rank owns (all of them when single)."""
    mine = {}
    for t, owner in zip(targets, owners):
        acc = accs.pop(t.rel)
        if owner != rank:
            continue
        module = dense.get_submodule(t.rel)
        layer = acc.layer_data(adapter.get_weight(module).detach(), damping=recipe.damping)
        vector = _unit_scores(layer, t, recipe.method)
        mine[t.rel] = (vector, vector.numel() if t.group is not None else layer.weight.numel())
    return mine


def _propagate_and_release(store, index: int, dense, inputs, device, *, last: bool):
    if not last:
        inputs = forward_block(dense, inputs, device=device)
    store.release(index)
    return inputs


def allocate(store, recipe: Recipe, tokens: torch.Tensor, *, device="cpu", progress: bool = True,
             prepass: Optional[tuple[list[str], list[torch.Tensor]]] = None) -> dict[str, float]:
    """Per-target sparsities ``{key: s_l}`` meeting the recipe's mean sparsity under its allocation rule
    (``store``: a ``prunekit.models.stores`` block store, or a model object)."""
    from .. import solve
    from ..formulations import LayerAllocation

    if recipe.allocation == "uniform":
        return {}
    store = _as_store(store)
    keys, vectors = prepass or importance_prepass(store, recipe, tokens, device=device, progress=progress)
    sizes = torch.tensor([v.numel() for v in vectors], dtype=torch.float64)
    means = torch.stack([v.mean() for v in vectors])
    energies = means / means.mean().clamp_min(1e-300)
    problem = LayerAllocation(
        sizes=sizes, mean_sparsity=float(recipe.sparsity), energies=energies, rule=recipe.allocation,
        temperature=float(recipe.temperature), s_max=float(recipe.max_sparsity),
        scores=tuple(vectors) if recipe.allocation == "global_threshold" else None,
    )
    sparsities = solve(problem).weights.double().cpu()
    return {k: float(s) for k, s in zip(keys, sparsities.tolist())}


def _as_store(store):
    if hasattr(store, "prepare"):
        return store
    from .stores import ModelBlocks

    return ModelBlocks(store)


def target_keys(store, recipe: Recipe) -> list[str]:
    """The allocation keys of every layer problem of ``store`` (a block store or a model) under ``recipe``, in
    execution order: module names (unstructured) or coupled-group names (channels).  Reads no weights."""
    from .runner import block_targets

    store = _as_store(store)
    model, adapter = store.model, store.adapter
    blocks = adapter.blocks(model)
    return [t.key for i in range(len(store)) for t in block_targets(model, adapter, i, blocks[i], recipe)]


def check_ratios(ratios: Mapping[str, Any], store, recipe: Recipe) -> dict[str, float]:
    """``ratios`` checked against the model and recipe, as ``{key: float}``.

    Raises
    ------
    SparsityError
        ``ratios`` is not a mapping; the recipe's structure is N:M (its ratio is fixed); a key names no target of
        the model (the message lists valid keys); a value is not a number in [0, 1) (1.5 and -0.5 are refused,
        never clamped).
    """
    if not isinstance(ratios, Mapping):
        raise SparsityError(f"ratios must be a mapping {{target key: sparsity}}, got {type(ratios).__name__}. "
                            f"Fix: e.g. {{'model.layers.0.mlp.down_proj': 0.4}}, keys from allocate.target_keys.")
    if ratios and recipe.structure.kind == "nm":
        raise SparsityError(f"ratios cannot change the ratio of structure {str(recipe.structure)!r} (N:M prunes "
                            f"exactly {recipe.structure.fixed_ratio:g}). Fix: drop ratios, or use 'unstructured'.")
    out: dict[str, float] = {}
    for key, value in ratios.items():
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        if not ok or not 0 <= value < 1:
            raise SparsityError(f"ratios[{key!r}] = {value!r} is not a sparsity in [0, 1). Fix: give each target "
                                f"the fraction of its weights (or units) to prune, e.g. 0.5.")
        out[key] = float(value)
    if out:
        valid = target_keys(store, recipe)
        unknown = sorted(set(out) - set(valid), key=str)
        if unknown:
            shown = valid if len(valid) <= 12 else valid[:12] + [f"... ({len(valid)} in all)"]
            raise SparsityError(f"ratios has key(s) {unknown[:5]}{' ...' if len(unknown) > 5 else ''} that name no "
                                f"{'coupled group' if recipe.structure.kind == 'channels' else 'linear module'} of "
                                f"this model under the recipe; valid keys: {shown}. Fix: use these keys "
                                f"(prunekit.models.allocate.target_keys(model, recipe)).")
    return out


__all__ = ["allocate", "check_ratios", "importance_prepass", "target_keys"]
