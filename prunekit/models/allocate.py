"""Non-uniform sparsity across layers: one dense pre-pass of importance statistics, then an allocation rule.

With ``Recipe.allocation`` other than ``"uniform"`` (rules and their math: :mod:`prunekit.models.allocation_rules`):

1. one pass over the **dense** model (independent blocks on dense inputs, as OWL's and FLAP's own code do)
   accumulates each target's diagonal statistics (diag G = ||X_j||^2 and the input mean) and summarizes it as a
   :class:`~prunekit.models.allocation_rules.TargetStats`: its :class:`~prunekit.models.allocation_rules.Grid`
   (units it can prune and their weights), its mean importance score, and what its rule needs -- unit scores for a
   coupled group (the method's column score summed over each unit; standardized per target for ``adaptive``), a
   score summary of the Wanda scores ``|W_ij| ||X_j||_2`` of a module for ``global_threshold`` (evenly spaced order
   statistics in counts proportional to the weight counts, at most ``TOTAL_POINTS`` in all), and for ``owl`` the
   number of Wanda scores above ``owl_m`` x the mean score of the target's block (all targeted modules together);
2. :func:`~prunekit.models.allocation_rules.allocate_targets` turns them into per-target sparsities meeting the
   global budget round(sparsity x weights) to within one grid step.

Returns ``{target key: s_l}`` for :func:`prunekit.models.runner.plan`.  N:M patterns have a fixed ratio and
cannot be allocated.

Per-target ratios given by hand (``ratios=`` of ``prunekit.plan`` / ``prunekit.prune`` / ``runner.run``) go
through :func:`check_ratios` first: every key must name a target of the model under the recipe
(:func:`target_keys`: module names, or coupled-group names for channels) and every value lie in [0, 1) --
nothing is clamped or ignored silently.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, Optional

import torch

from ..errors import ModelError, SparsityError
from .allocation_default import resolve_allocation
from .allocation_rules import Allocation, Grid, TargetStats, allocate_targets, standardized_unit_scores
from .calibration import capture_block_inputs, collect_grams, forward_block
from .recipe import Recipe

MAX_POINTS = 65536     # score summary kept per module during the pre-pass (global_threshold)
TOTAL_POINTS = 2_000_000  # total points handed to LayerAllocation for module targets (global_threshold)
ATTENTION_GROUPS = ("attention_head", "gqa_group", "vo_channel")


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
                       progress: bool = True) -> list[TargetStats]:
    """One :class:`TargetStats` per target of ``store`` (``prunekit.models.stores``: a model in memory or a
    checkpoint streamed block by block), in execution order, from one pass over its dense blocks.

    Distributed (``prunekit.distributed``): each rank runs its own windows, each target's statistics are summed
    onto the rank that scores it, and the summaries are broadcast -- every rank returns the same result.
    ``allocation="auto"`` is resolved first: what a unit scores depends on the rule (``adaptive`` standardizes).
    """
    from ..distributed import current
    from .runner import DTYPES, block_targets, solve_cost
    from .sinks import as_compute

    recipe = resolve_allocation(recipe)
    ctx = current()
    model, adapter = store.model, store.adapter
    dtype = DTYPES[recipe.dtype]
    device = torch.device(device)

    def first_inputs():
        local = ctx.local_windows(tokens)
        store.prepare()
        return capture_block_inputs(model, adapter, local, device=device, dtype=dtype)

    inputs = ctx.checked(first_inputs)
    stats: list[TargetStats] = []
    iterator = range(len(store))
    if progress and ctx.is_main:
        from tqdm.auto import tqdm

        iterator = tqdm(iterator, desc="prunekit allocation pre-pass", unit="block")
    for index in iterator:
        dense = ctx.checked(lambda: as_compute(store.load(index), device, dtype))
        ctx.checked(_derive_groups, model, adapter, index, dense, inputs, recipe, device)
        targets = block_targets(model, adapter, index, dense, recipe)
        accs = ctx.checked(collect_grams, dense, inputs, [t.rel for t in targets], device=device, diagonal=True)
        owners = ctx.owners([solve_cost(dense.get_submodule(t.rel), adapter) for t in targets])
        for t, owner in zip(targets, owners):
            ctx.reduce_statistics_(accs[t.rel], dst=owner)
        mine = ctx.checked(_score_own_targets, ctx.rank, index, targets, owners, accs, dense, adapter, recipe)
        block = [ctx.broadcast(mine[t.rel][0] if t.rel in mine else None, src=owner)
                 for t, owner in zip(targets, owners)]
        if recipe.allocation == "owl":
            threshold = recipe.owl_m * sum(s.score_sum for s in block) / max(1, sum(s.num_scores for s in block))
            counts = ctx.checked(_outlier_counts, mine, threshold)
            block = [dataclasses.replace(s, outliers=int(ctx.broadcast(counts.get(t.rel), src=owner)))
                     for s, t, owner in zip(block, targets, owners)]
        del mine
        stats.extend(block)
        inputs = ctx.checked(_propagate_and_release, store, index, dense, inputs, device, last=index + 1 == len(store))
        del dense
    if recipe.allocation == "global_threshold" and recipe.structure.kind != "channels":
        vectors = _proportional([s.scores for s in stats], [s.num_scores for s in stats])
        stats = [dataclasses.replace(s, scores=v) for s, v in zip(stats, vectors)]
    return stats


def _derive_groups(model, adapter, index: int, dense, inputs, recipe: Recipe, device) -> None:
    """A model pruned through the generic adapter has no channel groups until they are derived from its blocks'
    computation (``GenericAdapter.derive_groups_``, which the runner calls again when it prunes the block): derive
    them here, on the dense block, so that the allocation sees the same targets the run will prune.

    Raises
    ------
    ModelError
        The block holds fused MoE experts: every expert set keeps one width, which a non-uniform channel
        allocation would break.
    """
    from .runner import derives_groups, trace_and_derive_

    if not derives_groups(adapter, recipe):
        return
    fused = sorted(n for n, p in adapter.blocks(model)[index].named_parameters() if p.dim() >= 3)
    if fused:
        raise ModelError(f"allocation={recipe.allocation!r} with structure 'channels' cannot prune block {index}: "
                         f"its mixture-of-experts weights ({fused[0]}, ...) must keep one width per expert set, "
                         f"which a per-group allocation would break. Fix: use allocation='uniform' for channels "
                         f"on this model, or structure 'unstructured' with any allocation.")
    trace_and_derive_(model, adapter, index, dense, inputs, recipe, device)


def _score_own_targets(rank: int, index: int, targets, owners, accs, dense, adapter, recipe: Recipe) -> dict:
    """``{rel: (TargetStats, (weight, input norms))}`` of the targets this rank owns (all of them when single)."""
    from ..formulations import scores

    mine = {}
    for t, owner in zip(targets, owners):
        acc = accs.pop(t.rel)
        if owner != rank:
            continue
        weight = adapter.get_weight(dense.get_submodule(t.rel)).detach()
        layer = acc.layer_data(weight, damping=recipe.damping, check_psd=False)
        norms = layer.input_norms().to(weight.device)
        if t.group is not None:
            col = scores.COLUMN_SCORES[recipe.method.column_score](layer).double().cpu()
            sums = torch.stack([col[list(u)].sum() for u in t.group.units])
            unit = (standardized_unit_scores(col, t.group.units, square=t.group.kind in ATTENTION_GROUPS)
                    if recipe.allocation == "adaptive" else sums)
            stat = TargetStats(key=t.key, block=index, grid=_group_grid(dense, adapter, t, weight, recipe.round_to),
                               score_mean=float(sums.mean()), scores=unit, score_sum=float(sums.sum()),
                               num_scores=sums.numel())
        else:
            m, n = weight.shape
            row = recipe.method.formulation.unstructured_scope == "row"
            total = float((weight.abs().double().sum(dim=0) * norms).sum())
            summary = (_quantiles(scores.wanda(layer).double().flatten().cpu(), MAX_POINTS)
                       if recipe.allocation == "global_threshold" else None)
            stat = TargetStats(key=t.key, block=index, grid=Grid(n, m) if row else Grid(m * n, 1),
                               score_mean=total / weight.numel(), scores=summary, score_sum=total,
                               num_scores=weight.numel())
        mine[t.rel] = (stat, (weight, norms))
    return mine


def _group_grid(dense, adapter, target, weight: torch.Tensor, round_to) -> Grid:
    """A coupled group's grid: its units, each weighing the weights it spans (downstream columns + upstream rows),
    and the pruned counts whose kept widths are multiples of ``round_to`` (``methods.units_pruned``)."""
    from .methods import resolve_round_to, units_pruned

    group = target.group
    prefix = target.name[: len(target.name) - len(target.rel)]
    per_unit = weight.shape[0] * len(group.units[0])
    for name, rows in group.upstream.items():
        upstream = adapter.get_weight(dense.get_submodule(name[len(prefix):]))
        per_unit += len(rows[0]) * upstream.shape[1]
    n = group.num_units
    counts = None if resolve_round_to(round_to, n) == 1 else \
        tuple(sorted({units_pruned(n, c / n, round_to) for c in range(n + 1)}))
    return Grid(n, per_unit, counts)


def _outlier_counts(mine: dict, threshold: float) -> dict[str, int]:
    """``{rel: #{(i, j): |W_ij| ||X_j|| > threshold}}`` of this rank's targets, 4096 rows at a time (float64)."""
    return {rel: sum(int((rows.abs().double() * norms > threshold).sum()) for rows in weight.split(4096))
            for rel, (_, (weight, norms)) in mine.items()}


def _propagate_and_release(store, index: int, dense, inputs, device, *, last: bool):
    if not last:
        inputs = forward_block(dense, inputs, device=device)
    store.release(index)
    return inputs


def _runner_ratio(grid: Grid, count: int) -> float:
    """count / units, nudged up by ulps where float rounding would make the runner's floor(r n + 1e-9) miss it."""
    ratio = count / grid.num_units
    while math.floor(ratio * grid.num_units + 1e-9) < count:
        ratio = math.nextafter(ratio, 1.0)
    return ratio


def allocation(store, recipe: Recipe, tokens: torch.Tensor, *, device="cpu", progress: bool = True,
               prepass: Optional[list[TargetStats]] = None) -> Allocation:
    """The recipe's :class:`~prunekit.models.allocation_rules.Allocation` (continuous and realized per-target
    sparsities, budget and pruned weights) for ``store`` (a block store or a model object)."""
    store = _as_store(store)
    recipe = resolve_allocation(recipe)
    stats = prepass or importance_prepass(store, recipe, tokens, device=device, progress=progress)
    return allocate_targets(stats, recipe.allocation, float(recipe.sparsity), temperature=float(recipe.temperature),
                            max_sparsity=float(recipe.max_sparsity), owl_lambda=float(recipe.owl_lambda),
                            ratio_of=lambda i, c: _runner_ratio(stats[i].grid, c))


def allocate(store, recipe: Recipe, tokens: torch.Tensor, *, device="cpu", progress: bool = True,
             prepass: Optional[list[TargetStats]] = None) -> dict[str, float]:
    """Per-target sparsities ``{key: s_l}`` meeting the recipe's global budget under its allocation rule
    (``{}`` for ``uniform``); ``store``: a ``prunekit.models.stores`` block store, or a model object."""
    recipe = resolve_allocation(recipe)
    if recipe.allocation == "uniform":
        return {}
    return allocation(store, recipe, tokens, device=device, progress=progress, prepass=prepass).ratios


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


def check_block_ratios(ratios: Mapping[str, float], prefix: str, keys: list[str]) -> None:
    """The keys of ``ratios`` that belong to the block at ``prefix`` (``"model.layers.3."``) name its targets
    ``keys`` (the groups just derived for it); raises SparsityError naming them otherwise."""
    unknown = sorted(k for k in ratios if k.startswith(prefix) and k not in keys)
    if unknown:
        raise SparsityError(f"ratios has key(s) {unknown[:5]} that name no coupled group of block {prefix[:-1]!r} "
                            f"under the recipe; its groups: {keys}. Fix: use these keys.")


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
    store = _as_store(store)
    from .runner import derives_groups

    if out and derives_groups(store.adapter, recipe):
        # generic adapter: the channel groups exist only once derived from each dense block during the run, so
        # here only the block each key names is checked; the runner checks the rest when it derives the block
        prefixes = [store.adapter.block_prefix(store.model, i) + "." for i in range(len(store))]
        stray = sorted(k for k in out if not any(k.startswith(p) for p in prefixes))
        if stray:
            raise SparsityError(f"ratios has key(s) {stray[:5]} that name no decoder block of this model (keys of a "
                                f"channel run are coupled-group names such as {prefixes[0]}mlp:glu_channel). "
                                f"Fix: use the group names of prunekit.plan(...).group_edits or of a run's plan.json.")
        return out
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


__all__ = ["allocate", "allocation", "check_block_ratios", "check_ratios", "importance_prepass", "target_keys"]
