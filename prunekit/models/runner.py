"""The block-streaming runner: from blocks, a recipe and calibration windows to pruned blocks handed to a sink.

For each decoder block l (methods.md §2, §5.4):

1. ``store.load(l)`` gives the block's weights (a model in memory, or read from the checkpoint's shards);
2. a copy on the device in the compute dtype streams the calibration inputs X_l through hooks on its linear
   modules and accumulates each target's statistics (G = X X^T; in the sequential modes G* and X X*^T stage by
   stage, X* being the inputs through the already pruned operators of the same block);
3. one formulation per target -- a linear module (unstructured / N:M) or a coupled group stated on its
   downstream module (channels) -- built from ``recipe.method`` and solved with ``prunekit.solve``;
4. the block's edits become a pruned copy in the block's own dtype (``surgery.pruned_block``), which the sink
   commits (``prunekit.models.sinks``);
5. propagate: X_{l+1} = committed_block(X_l) (``propagated``/``sequential``) or dense_block(X_l^dense)
   (``dense``/``dense_sequential``, FISTAPruner); then ``store.release(l)``.

A sink that already holds blocks 0..k-1 (``resume_from = k``) gets them back through ``sink.committed`` and the
runner only propagates through them, so a resumed run continues with the very inputs an uninterrupted one had.
Memory: O(one block) of weights on host and device, plus the calibration activations (on ``storage``).

Many processes (``prunekit.distributed``, e.g. ``torchrun --nproc_per_node N -m prunekit prune``): rank r captures and
propagates the windows r, r + N, ...; in step 2 each target's statistics are summed (float64) onto the rank that owns
it (targets of a stage go to ranks by :func:`solve_cost`), step 3 runs on the owners in parallel, and each
solution's weight, bias, kept units and record are broadcast from its owner, so steps 4-5 build the same pruned block
on every rank (the sink writes on rank 0 only).  Every rank's own work runs inside ``Context.checked``: an error on
any rank is raised on all of them.  With one process every helper is a plain call.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional

import torch
from torch import nn

from ..distributed import SINGLE, current
from ..errors import ModelError
from .block_refit import dense_stream, refit_run_block, run_settings
from .calibration import BlockInputs, CalibrationSet, NoStatistics, capture_block_inputs, collect_grams, forward_block
from .families.experts import experts_unfused, fuse_experts_, unfuse_experts_
from .families.generic import unrouted_solution
from .linear_layers import linear_kind
from .methods import group_spec, kept_units_from_solution
from .plan import GroupEdit, ModuleEdit, PruningPlan
from .recipe import Recipe
from .records import LayerRecord, versions
from .memory import long_lived_frozen, release_memory
from .sinks import as_compute
from .surgery import pruned_block

log = logging.getLogger("prunekit.runner")

MLP_KINDS = ("glu_channel", "ffn_channel")
ATTENTION_KINDS = {"none": (), "heads": ("attention_head", "gqa_group"), "vo_channels": ("vo_channel",)}
DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class Target:
    """One layer problem of a block: a module (group=None) or a coupled group stated on its downstream module."""

    rel: str            # module name relative to the block
    name: str           # qualified module name
    group: Any = None   # CoupledGroup or None

    @property
    def key(self) -> str:
        return self.group.name if self.group is not None else self.name


def block_targets(model: nn.Module, adapter, index: int, block: nn.Module, recipe: Recipe) -> list[Target]:
    """The layer problems of block ``index`` under ``recipe`` (in execution order)."""
    prefix = adapter.block_prefix(model, index)
    order = {n: k for k, n in enumerate(adapter.linear_names(block))}
    chosen = recipe.target_filter

    def selected(rel: str) -> bool:
        return chosen.selects(f"{prefix}.{rel}", linear_kind(block.get_submodule(rel)) or "Linear")

    if recipe.structure.kind != "channels":
        return [Target(rel, f"{prefix}.{rel}") for rel in adapter.linear_names(block) if selected(rel)]
    kinds = MLP_KINDS + ATTENTION_KINDS[recipe.attention]
    groups = [g for g in adapter.coupled_groups(model, index) if g.kind in kinds]
    if recipe.attention != "none" and not any(g.kind in ATTENTION_KINDS[recipe.attention] for g in groups):
        raise ModelError(f"attention={recipe.attention!r} is not available for block {index} of this family "
                         f"({adapter.name}). Fix: use attention='none' or another option.")
    targets = [Target(g.downstream[len(prefix) + 1:], g.downstream, g) for g in groups]
    targets = [t for t in targets if selected(t.rel)]
    return sorted(targets, key=lambda t: order.get(t.rel, len(order)))


def _solve_target(target: Target, dense: nn.Module, acc, adapter, recipe: Recipe, ratio: float, index: int):
    """Build and solve one target's formulation; returns (solution or None when nothing is pruned, record)."""
    from .. import solve

    module = dense.get_submodule(target.rel)
    weight = adapter.get_weight(module).detach().clone()
    base = dict(block=index, module=target.name, group=target.group.name if target.group else None,
                shape=tuple(weight.shape), target_sparsity=float(ratio))
    if target.group is not None:
        spec = group_spec(target.group.units, ratio, recipe.round_to)
    else:
        spec = recipe.method.sparsity_for(recipe.structure, ratio)
    if spec is None:
        return None, LayerRecord(**base)
    if getattr(acc, "num_tokens", 1) == 0:  # no calibration token reached it (an MoE expert never routed to)
        return unrouted_solution(weight, spec, recipe.unrouted, base)
    bias = module.bias.detach().clone() if getattr(module, "bias", None) is not None else None
    # G = X X^T was accumulated here, so it is PSD by construction: skip LayerData's O(n^3) PSD check (the solvers'
    # damped Cholesky still escalates damping on an indefinite G from rounding).
    layer = acc.layer_data(weight, bias=bias, damping=recipe.damping, check_psd=False)
    formulation = recipe.method.formulation_for(layer, spec, recipe.options)
    solution = solve(formulation, backend=recipe.backend, **recipe.solver_options)
    record = LayerRecord(
        **base, formulation=type(formulation).__name__, backend=solution.provenance.get("backend"),
        status=solution.status, sparsity=float(solution.sparsity), objective=float(solution.objective),
        relative_error=float(solution.residuals.get("relative_error", float("nan"))),
        mask_violations=float(solution.residuals.get("mask_violations", 0.0)),
        time_s=float(solution.stats.get("time_s", 0.0)), statistics=recipe.method.statistics_basis,
        kept_units=None if target.group is None else len(kept_units_from_solution(solution, target.group.units)),
        num_units=None if target.group is None else target.group.num_units,
    )
    return solution, record


def _write(module: nn.Module, adapter, solution) -> None:
    """Write a solution (or an :class:`Outcome`) into a work copy so that later stages of the block see the pruned
    operator."""
    adapter.set_weight(module, solution.weights.to(module.weight.device))
    if solution.bias is not None:
        with torch.no_grad():
            if getattr(module, "bias", None) is None:
                module.bias = nn.Parameter(solution.bias.detach().to(module.weight.device, module.weight.dtype).clone())
            else:
                module.bias.copy_(solution.bias.to(module.bias.device, module.bias.dtype))


@dataclass(frozen=True)
class Outcome:
    """What a block needs from one solved target: the new weight and bias (compute dtype, on the solver's device;
    None when nothing is pruned), the kept units of a coupled group, and the record."""

    weights: Optional[torch.Tensor]
    bias: Optional[torch.Tensor]
    kept_units: Optional[tuple[int, ...]]
    record: LayerRecord


def _outcome(target: Target, dense: nn.Module, acc, adapter, recipe: Recipe, ratio: float, index: int) -> Outcome:
    solution, record = _solve_target(target, dense, acc, adapter, recipe, ratio, index)
    if solution is None:
        return Outcome(None, None, None, record)
    kept = None if target.group is None else kept_units_from_solution(solution, target.group.units)
    return Outcome(solution.weights, solution.bias, kept, record)


def _stage_outcomes(ctx, stage_targets: list[Target], accs: dict, solve,
                    costs: list[int]) -> Iterator[tuple[Target, Outcome]]:
    """(target, outcome) for each target of a stage, in order.

    Single process: solved one after the other.  Distributed: each target's statistics are summed onto its owner
    (:meth:`~prunekit.distributed.Context.owners`, by ``costs``), every rank solves its own targets, then each
    outcome is broadcast from its owner, so every rank gets the same tensors.
    """
    if not ctx.active:
        for target in stage_targets:
            yield target, solve(target, accs.pop(target.rel))
        return
    owners = ctx.owners(costs)
    for target, owner in zip(stage_targets, owners):
        ctx.reduce_statistics_(accs[target.rel], dst=owner)

    def solve_mine() -> dict[str, Outcome]:
        mine = {}
        for target, owner in zip(stage_targets, owners):
            acc = accs.pop(target.rel)
            if owner == ctx.rank:
                mine[target.rel] = solve(target, acc)
        return mine

    mine = ctx.checked(solve_mine)
    for target, owner in zip(stage_targets, owners):
        outcome = mine.pop(target.rel, None)
        sent = None if outcome is None else (outcome.weights, outcome.bias, outcome.kept_units, outcome.record)
        weights, bias, kept, record = ctx.broadcast(sent, src=owner)
        yield target, Outcome(weights, bias, kept, record)


def solve_cost(module: nn.Module, adapter) -> int:
    """Rough cost of one layer problem on an m x n weight: n^2 (m + n) (a factorization of G and a pass over
    the rows), used to balance targets across ranks."""
    m, n = adapter.get_weight(module).shape
    return int(n) * int(n) * (int(m) + int(n))


def _statistics(recipe: Recipe, dense: nn.Module, work: Optional[nn.Module], inputs, targets: list[Target], adapter,
                device, outputs: Optional[list] = None) -> dict:
    """The statistics the method declares for each target of a stage (``Method.statistics_basis``): the full Gram
    (with G* and X X*^T in the sequential modes), its diagonal alone, or none at all (no forward pass)."""
    names = [t.rel for t in targets]
    basis = recipe.method.statistics_basis
    if basis == "none":
        return {n: NoStatistics(adapter.get_weight(dense.get_submodule(n)).shape[1]) for n in names}
    return collect_grams(dense, inputs, names, device=device, star_block=work, diagonal=basis == "diagonal",
                         gram_dtype=recipe.method.statistics_dtype, allow_unreached=adapter.name == "generic",
                         outputs=outputs)


def derives_groups(adapter, recipe: Recipe) -> bool:
    """True when the recipe's targets are coupled groups (structure 'channels'): every adapter derives them from
    the dense block's computation (``prunekit.models.derived_groups``), on the block's calibration inputs."""
    return recipe.structure.kind == "channels"


def trace_and_derive_(model: nn.Module, adapter, index: int, dense: nn.Module, inputs, recipe: Recipe,
                      device) -> None:
    """Before block ``index`` is scored or solved: trace the stages of ``dense`` (its compute copy) once per block
    layout (generic adapter), and derive the block's coupled groups from the dependency probe when
    :func:`derives_groups` (every adapter; a layout already probed is not probed again)."""
    if inputs is not None and hasattr(adapter, "trace") and adapter.traced(dense) is None:
        adapter.trace(dense, inputs, device=device)  # stages by shared input, traced once
    if derives_groups(adapter, recipe):
        adapter.derive_groups_(model, index, inputs)


def _derive_committed_groups(store, index: int, inputs, recipe: Recipe, device, dtype) -> None:
    """On resume, a committed block is rebuilt from its kept units, which name its coupled groups: they are derived
    from the dense block (as :func:`prune_block` does), so derive them here on the same inputs.  No-op unless
    :func:`derives_groups`."""
    if not derives_groups(store.adapter, recipe):
        return
    if not store.adapter.groups_per_block:  # groups derived on demand: keep the sample, read no block
        from .derived_groups import keep_sample

        keep_sample(store.model, inputs)
        return
    block = store.load(index)
    with experts_unfused(block):  # each expert's channels are groups of their own, as in the run
        trace_and_derive_(store.model, store.adapter, index, as_compute(block, device, dtype), inputs, recipe, device)


def prune_block(store, index: int, block: nn.Module, inputs, recipe: Recipe, *, device, dtype,
                ratios: Optional[dict[str, float]], ctx=SINGLE,
                outputs: Optional[list] = None) -> tuple[PruningPlan, nn.Module]:
    """Solve every target of one block; returns the block's plan (edits in the block's dtype) and the dense copy.

    With a distributed ``ctx`` (``prunekit.distributed``) ``inputs`` are this rank's windows; the statistics are
    summed over ranks, the targets solved in parallel and their solutions broadcast, so every rank returns the
    same plan.  ``outputs`` (a list, ``dense`` mode): receives the dense block's outputs from the statistics pass,
    the next block's inputs, so no second forward is needed.
    """
    model, adapter = store.model, store.adapter
    sequential = recipe.mode.endswith("sequential")

    def setup():
        dense = as_compute(block, device, dtype)
        trace_and_derive_(model, adapter, index, dense, inputs, recipe, device)
        work = copy.deepcopy(dense) if sequential else dense  # receives the solutions (sequential X*)
        targets = block_targets(model, adapter, index, dense, recipe)
        if ratios and derives_groups(adapter, recipe):
            from .allocate import check_block_ratios  # keys of derived groups are checked once they exist

            check_block_ratios(ratios, adapter.block_prefix(model, index) + ".", [t.key for t in targets])
        stages = adapter.stages(dense) if sequential else [[t.rel for t in targets]]
        return dense, work, targets, stages

    dense, work, targets, stages = ctx.checked(setup)
    wdtype = next(block.parameters()).dtype
    out = PruningPlan()

    def solve(target: Target, acc) -> Outcome:
        ratio = recipe.sparsity if ratios is None else float(ratios.get(target.key, recipe.sparsity))
        return _outcome(target, dense, acc, adapter, recipe, ratio, index)

    for stage in stages:
        stage_targets = [t for t in targets if t.rel in stage]
        if not stage_targets:
            continue
        accs = ctx.checked(_statistics, recipe, dense, work if sequential else None, inputs, stage_targets, adapter,
                           device, outputs if len(stages) == 1 else None)
        costs = [solve_cost(dense.get_submodule(t.rel), adapter) for t in stage_targets]
        for target, outcome in _stage_outcomes(ctx, stage_targets, accs, solve, costs):
            out.records.append(outcome.record)
            if outcome.weights is None:
                continue
            if sequential:
                _write(work.get_submodule(target.rel), adapter, outcome)
            out.module_edits[target.name] = ModuleEdit(
                module=target.name, weight=outcome.weights.detach().to("cpu", wdtype),
                bias=None if outcome.bias is None else outcome.bias.detach().to("cpu", wdtype),
                sparsity_kind={"nm": "n:m"}.get(recipe.structure.kind, recipe.structure.kind),
                note=outcome.record.formulation or "")
            if target.group is not None:
                out.group_edits[target.group.name] = GroupEdit(
                    group=target.group.name, kind=target.group.kind, kept_units=outcome.kept_units,
                    num_units=target.group.num_units)
    return out, dense


def run(store, recipe: Recipe, calibration_tokens: torch.Tensor, sink, *, device="cpu", progress: bool = True,
        ratios: Optional[dict[str, float]] = None, storage="cpu",
        on_block: Optional[Callable[[int, float], None]] = None) -> PruningPlan:
    """Prune every block of ``store`` under ``recipe`` into ``sink``; returns the sink's plan with provenance.

    Parameters
    ----------
    store : ModelBlocks | CheckpointBlocks (``prunekit.models.stores``).
    calibration_tokens : LongTensor (n_s, L), calibration windows (``prunekit.data.calibration_windows``).
    sink : PlanSink | ModelSink | CheckpointSink (``prunekit.models.sinks``).
    device : where one block at a time is computed ("cpu", "cuda").
    ratios : optional per-target sparsity (module names, or group names for channels) overriding the uniform
        ``recipe.sparsity`` (``prunekit.models.allocate.allocate``).
    on_block : called as ``on_block(index, seconds)`` after each committed block.
    """
    tokens = CalibrationSet.coerce(calibration_tokens)  # LongTensor (n_s, L) or CalibrationSet
    if tokens.dim() != 2:
        raise ModelError(f"calibration tokens must be (nsamples, seqlen), got shape {tuple(tokens.shape)}.")
    ctx = current()  # prunekit.distributed: SINGLE unless a process group of several ranks is initialized
    if hasattr(store.adapter, "check_structure"):  # generic adapter: channels need a family adapter (clear error)
        store.adapter.check_structure(recipe.structure.kind)
    if ratios is not None:
        from .allocate import check_ratios

        ratios = check_ratios(ratios, store, recipe)
    dtype, device = DTYPES[recipe.dtype], torch.device(device)
    dense_inputs = recipe.mode.startswith("dense")
    refit = run_settings(recipe, ctx)
    start = time.perf_counter()

    def first_inputs():
        local = ctx.local_windows(tokens)  # this rank's windows (all of them when single)
        store.prepare()
        return capture_block_inputs(store.model, store.adapter, local, device=device, dtype=dtype, storage=storage)

    calibrated = recipe.method.statistics_basis != "none"  # magnitude: no calibration forward at all
    inputs = ctx.checked(first_inputs) if calibrated else ctx.checked(store.prepare)
    targets_stream = dense_stream(refit, recipe, inputs)  # the dense model's own stream (block refit targets)
    iterator = range(len(store))
    bar = None
    if progress and ctx.is_main:
        from tqdm.auto import tqdm

        bar = iterator = tqdm(iterator, desc=f"prunekit {recipe.method.name} {recipe.structure}", unit="block")
    with long_lived_frozen():  # each block's gc.collect walks only what the run allocates
        for index in iterator:
            t0 = time.perf_counter()
            last = index + 1 == len(store)
            if index < sink.resume_from:  # committed by an earlier (killed) run: only propagate through it
                committed = None
                if calibrated:  # the groups its committed edits name (generic adapter: derived, as when it ran)
                    ctx.checked(_derive_committed_groups, store, index, inputs, recipe, device, dtype)
                if targets_stream is not None and not last:  # dense weights first: sink.committed rebuilds in place
                    ctx.checked(targets_stream.skip, store, index, device=device, dtype=dtype, storage=storage)
                if not last and calibrated:
                    committed = ctx.checked(store.load, index) if dense_inputs else sink.committed(store, index)
                inputs = ctx.checked(_propagate_and_release, store, index, committed, inputs, device, dtype, storage)
                continue
            block = ctx.checked(store.load, index)
            if store.adapter.name == "generic":  # fused MoE experts -> one linear pair per expert (fused back below)
                unfuse_experts_(block)
            # the statistics pass runs the whole dense block; its outputs are the next inputs in dense mode (one
            # forward per block, as FLAP's reference does) and the block refit's targets (no second dense forward)
            next_dense = recipe.mode == "dense" and not last
            refit_own_targets = refit is not None and targets_stream is None  # problem (1): this block's outputs
            dense_outputs = [] if calibrated and (next_dense or refit_own_targets) else None
            block_plan, dense = prune_block(store, index, block, inputs, recipe, device=device, dtype=dtype,
                                            ratios=ratios, ctx=ctx, outputs=dense_outputs)
            if refit is not None:
                block_plan = ctx.checked(refit_run_block, store, index, dense, block_plan, inputs, dense_outputs, refit,
                                         device, dtype, storage, targets_stream)
            if next_dense and dense_outputs:
                stream = inputs.with_hidden(dense_outputs)
            else:
                stream = dense if dense_inputs else None  # None: propagate through the pruned block
            inputs = ctx.checked(_commit, store, sink, index, block_plan, stream, inputs, last, device, dtype, storage)
            fuse_experts_(block)
            del dense, block
            release_memory(device)
            elapsed = time.perf_counter() - t0
            objective = sum(r.objective for r in block_plan.records)
            if ctx.is_main:
                log.info("block %d: objective %.6g, %d problems, %.2fs", index, objective, len(block_plan.records),
                         elapsed)
            if bar is not None:
                bar.set_postfix(objective=f"{objective:.4g}", time=f"{elapsed:.1f}s")
            if on_block is not None:
                on_block(index, elapsed)
    plan = sink.plan
    plan.provenance = {
        "recipe": recipe.to_dict(), "family": store.adapter.name,
        "model_type": getattr(store.model.config, "model_type", None), "mode": recipe.mode, "device": str(device),
        "calibration_shape": list(tokens.shape), "time_s": time.perf_counter() - start, "versions": versions(),
    }
    if ctx.active:
        plan.provenance["processes"] = ctx.world_size
    return plan


def _commit(store, sink, index: int, block_plan: PruningPlan, stream, inputs, last: bool, device, dtype, storage):
    """One rank's own work after a block is solved: build the pruned block, propagate this rank's windows through
    ``stream`` (the dense copy) or the pruned block, commit it to the sink (which writes on rank 0 only when
    distributed) and release the block.  Returns the next block's inputs."""
    pruned = pruned_block(store.model, store.adapter, index, block_plan)
    fuse_experts_(pruned)  # the stock layout of fused MoE experts (a no-op for every other block)
    if isinstance(stream, BlockInputs):  # the next inputs, computed by the statistics pass (dense mode)
        inputs = stream
    elif not last and inputs is not None:
        stream = stream if stream is not None else as_compute(pruned, device, dtype)
        inputs = forward_block(stream, inputs, device=device, storage=storage)
    sink.commit(store, index, pruned, block_plan)
    store.release(index)
    return inputs


def _propagate_and_release(store, index: int, committed, inputs, device, dtype, storage):
    """Inputs of block ``index + 1`` through an already committed block (``committed`` None: the last block)."""
    if committed is not None and inputs is not None:
        inputs = forward_block(as_compute(committed, device, dtype), inputs, device=device, storage=storage)
    store.release(index)
    return inputs


__all__ = ["DTYPES", "Outcome", "Target", "block_targets", "prune_block", "run", "solve_cost"]
