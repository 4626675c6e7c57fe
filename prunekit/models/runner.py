"""The layer-sequential runner: from a model, a recipe and calibration windows to a :class:`PruningPlan`.

For each decoder block l (methods.md §2, §5.4):

1. copy the block to the device (the model itself is never modified: ``plan`` leaves it unchanged);
2. stream the block's calibration inputs X_l through the copy with hooks on its linear modules and accumulate
   each module's Gram statistics G = X X^T (and, in the sequential modes, G* and X X*^T stage by stage, with
   X* the inputs through the already pruned operators of the same block);
3. state one formulation per target -- a linear module (unstructured / N:M) or a coupled group stated on its
   downstream module (channels) -- solve it with ``prunekit.solve`` and write the solution into the copy;
4. propagate: X_{l+1} = pruned_block(X_l) (``propagated``/``sequential``), or dense_block(X_l^dense) for
   independent blocks on dense inputs (``dense``/``dense_sequential``, FISTAPruner).

Device memory is O(one block + one window's activations); activations and the model stay on CPU.  Each target
adds a row to ``plan.layers`` (block, module, group, sparsity, objective, relative error, time, backend) and
its new weight to ``plan.module_edits``; channel methods add the kept units to ``plan.group_edits``.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import nn

from ..errors import ModelError
from .calibration import BlockInputs, capture_block_inputs, collect_grams, forward_block
from .methods import build_formulation, group_spec, kept_units_from_solution, method_spec, module_spec
from .plan import GroupEdit, ModuleEdit, PruningPlan
from .recipe import Recipe

log = logging.getLogger("prunekit.runner")

MLP_KINDS = ("glu_channel", "ffn_channel")
ATTENTION_KINDS = {"none": (), "heads": ("attention_head", "gqa_group"), "vo_channels": ("vo_channel",)}
_DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16, "float16": torch.float16}


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
    if recipe.structure_kind != "channels":
        return [Target(rel, f"{prefix}.{rel}") for rel in adapter.linear_names(block)]
    kinds = MLP_KINDS + ATTENTION_KINDS[recipe.attention]
    groups = [g for g in adapter.coupled_groups(model, index) if g.kind in kinds]
    if recipe.attention != "none" and not any(g.kind in ATTENTION_KINDS[recipe.attention] for g in groups):
        raise ModelError(f"attention={recipe.attention!r} is not available for block {index} of this family "
                         f"({adapter.name}). Fix: use attention='none' or another option.")
    targets = [Target(g.downstream[len(prefix) + 1:], g.downstream, g) for g in groups]
    return sorted(targets, key=lambda t: order.get(t.rel, len(order)))


def _solve_target(target: Target, block: nn.Module, acc, adapter, recipe: Recipe, ratio: float, index: int):
    """Build and solve one target's formulation; returns (solution, row) or (None, row) when nothing is pruned."""
    from .. import solve

    module = block.get_submodule(target.rel)
    weight = adapter.get_weight(module).detach().clone()
    bias = module.bias.detach().clone() if getattr(module, "bias", None) is not None else None
    layer = acc.layer_data(weight, bias=bias, damping=recipe.damping)
    if target.group is not None:
        spec = group_spec(target.group.units, ratio, recipe.round_to)
    else:
        spec = module_spec(recipe.method, recipe.structure_kind, ratio, recipe.nm) if ratio > 0 or recipe.nm else None
    row = {"block": index, "module": target.name, "group": target.group.name if target.group else None,
           "shape": list(weight.shape), "target_sparsity": float(ratio)}
    if spec is None:
        row.update(sparsity=0.0, objective=0.0, relative_error=0.0, time_s=0.0, backend=None, status="skipped")
        return None, row
    formulation = build_formulation(recipe.method, layer, spec, recipe.method_options)
    solution = solve(formulation, backend=recipe.backend, **recipe.solver_options)
    row.update(
        formulation=type(formulation).__name__, sparsity=solution.sparsity, objective=float(solution.objective),
        relative_error=float(solution.residuals.get("relative_error", float("nan"))),
        mask_violations=float(solution.residuals.get("mask_violations", 0.0)),
        time_s=float(solution.stats.get("time_s", 0.0)), backend=solution.provenance.get("backend"),
        status=solution.status,
    )
    return solution, row


def _write(module: nn.Module, adapter, solution) -> None:
    """Write a solution into a (copied) module so that later stages and blocks see the pruned operator."""
    adapter.set_weight(module, solution.weights)
    if solution.bias is not None:
        with torch.no_grad():
            if getattr(module, "bias", None) is None:
                module.bias = nn.Parameter(solution.bias.detach().to(module.weight.dtype).clone())
            else:
                module.bias.copy_(solution.bias.to(module.bias.dtype))


def plan(model: nn.Module, recipe: Recipe, calibration_tokens: torch.Tensor, *, device="cpu", progress: bool = True,
         ratios: Optional[dict[str, float]] = None, storage="cpu") -> PruningPlan:
    """Layer-sequential pruning plan of ``model`` under ``recipe`` (the model is left unchanged).

    Parameters
    ----------
    calibration_tokens : LongTensor (n_s, L)
        Calibration windows (``prunekit.data.calibration_windows``).
    device : where one block at a time is computed ("cpu", "cuda").
    ratios : optional per-target sparsity (keys: module names, or group names for channels) overriding the
        uniform ``recipe.sparsity`` (e.g. from :func:`prunekit.models.allocation.allocate`).
    """
    from .adapters import adapter_for

    adapter = adapter_for(model)
    method_spec(recipe.method).check_structure(recipe.structure_kind, recipe.structure)
    mode = recipe.calibration.resolved_mode(recipe.method)
    dense_inputs_mode = mode.startswith("dense")
    sequential = mode.endswith("sequential")
    dtype = _DTYPES[recipe.dtype]
    device = torch.device(device)
    blocks = adapter.blocks(model)
    tokens = torch.as_tensor(calibration_tokens, dtype=torch.long)
    if tokens.dim() != 2:
        raise ValueError(f"calibration_tokens must be (nsamples, seqlen), got shape {tuple(tokens.shape)}.")
    start = time.perf_counter()
    inputs: BlockInputs = capture_block_inputs(model, adapter, tokens, device=device, dtype=dtype, storage=storage)
    result = PruningPlan()
    iterator = range(len(blocks))
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(iterator, desc=f"prunekit {recipe.method} {recipe.structure}", unit="block")
        iterator = bar
    for index in iterator:
        t0 = time.perf_counter()
        original = blocks[index]
        dense = copy.deepcopy(original).to(device=device, dtype=dtype).eval()
        work = copy.deepcopy(dense)  # receives the solutions; ``dense`` keeps the targets W and the dense stream
        targets = block_targets(model, adapter, index, dense, recipe)
        stages = adapter.stages(dense) if sequential else [[t.rel for t in targets]]
        block_objective = 0.0
        for stage in stages:
            stage_targets = [t for t in targets if t.rel in stage]
            if not stage_targets:
                continue
            accs = collect_grams(dense, inputs, [t.rel for t in stage_targets], device=device,
                                 star_block=work if sequential else None)
            for target in stage_targets:
                ratio = recipe.sparsity if ratios is None else float(ratios.get(target.key, recipe.sparsity))
                solution, row = _solve_target(target, dense, accs[target.rel], adapter, recipe, ratio, index)
                del accs[target.rel]
                result.layers.append(row)
                if solution is None:
                    continue
                block_objective += row["objective"]
                target_module = work.get_submodule(target.rel)
                orig_module = original.get_submodule(target.rel)
                _write(target_module, adapter, solution)
                wdtype = orig_module.weight.dtype
                result.module_edits[target.name] = ModuleEdit(
                    module=target.name, weight=solution.weights.detach().to("cpu", wdtype).clone(),
                    bias=None if solution.bias is None else solution.bias.detach().to("cpu", wdtype).clone(),
                    sparsity_kind={"nm": "n:m"}.get(recipe.structure_kind, recipe.structure_kind),
                    note=row.get("formulation", ""),
                )
                if target.group is not None:
                    kept = kept_units_from_solution(solution, target.group.units)
                    result.group_edits[target.group.name] = GroupEdit(
                        group=target.group.name, kind=target.group.kind, kept_units=kept,
                        num_units=target.group.num_units)
                    row["kept_units"] = len(kept)
                    row["num_units"] = target.group.num_units
        # propagate to the next block (dense stream for independent blocks, pruned stream otherwise)
        if index + 1 < len(blocks):
            inputs = forward_block(dense if dense_inputs_mode else work, inputs, device=device, storage=storage)
        elapsed = time.perf_counter() - t0
        log.info("block %d: objective %.6g, %d targets, %.2fs", index, block_objective, len(targets), elapsed)
        if bar is not None:
            bar.set_postfix(objective=f"{block_objective:.4g}", time=f"{elapsed:.1f}s")
        del dense, work
        if device.type == "cuda":
            torch.cuda.empty_cache()
    result.provenance = _provenance(recipe, model, adapter, mode, device, tokens, time.perf_counter() - start)
    return result


def _provenance(recipe: Recipe, model, adapter, mode: str, device, tokens, elapsed: float) -> dict[str, Any]:
    import platform

    from .. import __version__

    versions = {"prunekit": __version__, "torch": torch.__version__, "python": platform.python_version()}
    try:
        import transformers

        versions["transformers"] = transformers.__version__
    except ImportError:  # pragma: no cover
        pass
    return {
        "recipe": recipe.to_dict(), "family": adapter.name, "model_type": getattr(model.config, "model_type", None),
        "mode": mode, "device": str(device), "calibration_shape": list(tokens.shape), "time_s": elapsed,
        "versions": versions,
    }


__all__ = ["Target", "block_targets", "plan"]
