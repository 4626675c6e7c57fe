"""Model-level entry points: ``plan``, ``apply_`` and ``prune`` (design.md principle 14).

.. code-block:: python

    recipe = prunekit.Recipe(method="fasp", structure="channels", sparsity=0.3)   # or method=MyFormulation
    windows = prunekit.data.calibration_windows(tokenizer, "wikitext2", 128, 2048)
    result = prunekit.prune(model, recipe, windows)        # mutates model in place
    result.report.params_after, result.plan.records[0].relative_error

``recipe`` is a :class:`~prunekit.models.recipe.Recipe`, a dict of its fields or a recipe file path.  ``plan``
leaves the model alone and returns a replayable :class:`~prunekit.models.plan.PruningPlan`; ``apply_`` mutates
the model (``prunekit.models.surgery``); ``prune`` prunes block by block into the model and reports.  Whole
checkpoints larger than memory are pruned from disk to disk by :func:`prunekit.models.pipeline.prune_checkpoint`
(what ``prunekit prune`` runs).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Union

from torch import nn

from .models.plan import PruningPlan
from .models.recipe import Recipe
from .models.records import RunReport

RecipeLike = Union[Recipe, Mapping[str, Any], str]


@dataclass
class PruneResult:
    """The plan that was applied (kept units, records, provenance) and the typed run report."""

    plan: PruningPlan
    report: RunReport


def calibration_tokens(recipe: Recipe, calibration, *, tokenizer=None, data_dir=None, model=None):
    """The calibration windows of ``calibration`` as a :class:`~prunekit.calibration_set.CalibrationSet`.

    ``calibration`` is anything :func:`prunekit.calibration_sources.calibration_set` reads -- a LongTensor
    (n, L) as given, a tokenized ``BatchEncoding`` / dict (padding masked out of the statistics), a list of
    strings, a ``datasets.Dataset`` / ``IterableDataset``, a ``DataLoader``, a list of records, or a source
    string ("wikitext2", "c4", "hf:NAME[:CONFIG][:SPLIT]", a file path, "self") -- sampled with
    ``recipe.calibration`` (nsamples, seqlen, seed, text_column).  Text needs ``tokenizer``.

    Returns the LongTensor (n, L) itself when no window is padded (what every runner version takes), else the
    CalibrationSet with its mask (``runner.run`` coerces either with ``CalibrationSet.coerce``).
    """
    from .calibration_sources import calibration_set

    calib = calibration_set(calibration, tokenizer, recipe.calibration, model=model, data_dir=data_dir)
    return calib if calib.padded else calib.input_ids


def _run(model: nn.Module, recipe: RecipeLike, calibration, sink, *, device, progress, tokenizer, data_dir,
         ratios) -> tuple[Recipe, PruningPlan]:
    from .models.allocate import allocate
    from .models.allocation_default import resolve_allocation
    from .models.block_refit import resolve_block_refit
    from .models.runner import run
    from .models.stores import ModelBlocks

    from .solvers.options import parse_device

    recipe = Recipe.coerce(recipe)
    device = parse_device(device)
    store = ModelBlocks(model)
    recipe = resolve_block_refit(resolve_allocation(recipe))  # "auto" -> the setting's rules (recorded)
    tokens = calibration_tokens(recipe, calibration, tokenizer=tokenizer, data_dir=data_dir, model=model)
    if ratios is None and recipe.allocation != "uniform":
        ratios = allocate(store, recipe, tokens, device=device, progress=progress)
    return recipe, run(store, recipe, tokens, sink, device=device, progress=progress, ratios=ratios)


def plan(model: nn.Module, recipe: RecipeLike, calibration, *, device="cpu", progress: bool = True,
         tokenizer=None, data_dir=None, ratios: Optional[dict[str, float]] = None) -> PruningPlan:
    """A pruning plan for ``model`` (left unchanged); the plan holds the new weights in memory for ``apply_``.

    Parameters
    ----------
    calibration : LongTensor (nsamples, seqlen), or a source name ("wikitext2", a text file, "self") that is
        turned into windows with ``recipe.calibration`` settings (needs ``tokenizer``).
    device : device on which one block at a time is processed.
    ratios : optional per-target sparsity overriding the recipe's allocation.
    """
    from .models.sinks import PlanSink

    return _run(model, recipe, calibration, PlanSink(), device=device, progress=progress, tokenizer=tokenizer,
                data_dir=data_dir, ratios=ratios)[1]


def apply_(model: nn.Module, plan: PruningPlan) -> nn.Module:
    """Apply ``plan`` to ``model`` **in place** (weights written, pruned units removed, config fixed)."""
    from .models.surgery import apply_ as surgery_apply

    return surgery_apply(model, plan)


def count_nonzero(model: nn.Module) -> int:
    seen, total = set(), 0
    for p in model.parameters():
        if id(p) not in seen and p.device.type != "meta":
            seen.add(id(p))
            total += int((p != 0).sum())
    return total


def prune(model: nn.Module, recipe: RecipeLike, calibration, *, device="cpu", progress: bool = True,
          tokenizer=None, data_dir=None, ratios: Optional[dict[str, float]] = None) -> PruneResult:
    """Prune ``model`` **in place** with ``recipe``, block by block.

    The model is mutated (each block replaced by its pruned copy: weights rewritten, pruned channels/heads
    removed, config fixed).  To inspect first, call :func:`plan`, then :func:`apply_`.  Returns the plan (kept
    units, per-layer records, provenance -- not a second copy of the weights) and a :class:`RunReport`.
    """
    from .models.sinks import ModelSink
    from .models.surgery import count_parameters, fix_config_
    from .models.adapters import adapter_for

    start = time.perf_counter()
    params_before, nonzero_before = count_parameters(model), count_nonzero(model)
    recipe, the_plan = _run(model, recipe, calibration, ModelSink(), device=device, progress=progress,
                            tokenizer=tokenizer, data_dir=data_dir, ratios=ratios)
    fix_config_(model, adapter_for(model))
    prov = the_plan.provenance
    report = RunReport(
        recipe=recipe.to_dict(), family=prov.get("family", ""), mode=prov.get("mode", ""), device=str(device),
        calibration_shape=tuple(prov.get("calibration_shape", (0, 0))), params_before=params_before,
        params_after=count_parameters(model), nonzero_params_before=nonzero_before,
        nonzero_params_after=count_nonzero(model), time_prune_s=time.perf_counter() - start,
        time_total_s=time.perf_counter() - start, layers=list(the_plan.records), refits=list(the_plan.refits), versions=prov.get("versions", {}))
    return PruneResult(the_plan, report)


__all__ = ["PruneResult", "apply_", "calibration_tokens", "plan", "prune"]
