"""Model-level entry points: ``plan``, ``apply_`` and ``prune`` (design.md principle 14).

.. code-block:: python

    recipe = prunekit.Recipe(method="fasp", structure="channels", sparsity=0.3)
    windows = prunekit.data.calibration_windows(tokenizer, "wikitext2", 128, 2048)
    result = prunekit.prune(model, recipe, windows)        # mutates model in place
    result.plan.save("plan/"); result.report["params_after"]

``plan`` leaves the model alone and returns a replayable :class:`~prunekit.models.plan.PruningPlan`;
``apply_`` mutates the model (the only mutating step, delegated to ``prunekit.models.surgery``); ``prune``
composes the two and adds a report.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Optional, Union

import torch
from torch import nn

from .models.plan import PruningPlan
from .models.recipe import Recipe


@dataclass
class PruneResult:
    """The plan that was applied and a JSON-friendly report (parameters, time, per-layer rows)."""

    plan: PruningPlan
    report: dict[str, Any] = field(default_factory=dict)


def _calibration_tokens(model, recipe: Recipe, calibration, tokenizer, data_dir) -> torch.Tensor:
    if isinstance(calibration, torch.Tensor):
        return calibration
    if isinstance(calibration, str):
        from .data import calibration_windows

        if tokenizer is None and calibration != "self":
            raise ValueError("calibration given as a source name needs tokenizer=.")
        c = recipe.calibration
        return calibration_windows(tokenizer, calibration, c.nsamples, c.seqlen, c.seed, data_dir=data_dir, model=model)
    return torch.as_tensor(calibration, dtype=torch.long)


def plan(model: nn.Module, recipe: Recipe, calibration: Union[torch.Tensor, str], *, device="cpu",
         progress: bool = True, tokenizer=None, data_dir=None,
         ratios: Optional[dict[str, float]] = None) -> PruningPlan:
    """A pruning plan for ``model`` (left unchanged).

    Parameters
    ----------
    calibration : LongTensor (nsamples, seqlen), or a source name ("wikitext2", a text file, "self") that is
        turned into windows with ``recipe.calibration`` settings (needs ``tokenizer``).
    device : device on which one block at a time is processed.
    ratios : optional per-target sparsity overriding the recipe's allocation.
    """
    from .models.allocate import allocate
    from .models.runner import plan as run_plan

    tokens = _calibration_tokens(model, recipe, calibration, tokenizer, data_dir)
    if ratios is None and recipe.allocation != "uniform":
        ratios = allocate(model, recipe, tokens, device=device, progress=progress)
    return run_plan(model, recipe, tokens, device=device, progress=progress, ratios=ratios)


def apply_(model: nn.Module, plan: PruningPlan) -> nn.Module:
    """Apply ``plan`` to ``model`` **in place** (weights written, pruned units removed, config fixed)."""
    from .models.surgery import apply_ as surgery_apply

    return surgery_apply(model, plan)


def count_nonzero(model: nn.Module) -> int:
    seen, total = set(), 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += int((p != 0).sum())
    return total


def prune(model: nn.Module, recipe: Recipe, calibration: Union[torch.Tensor, str], *, device="cpu",
          progress: bool = True, tokenizer=None, data_dir=None) -> PruneResult:
    """Prune ``model`` **in place** with ``recipe``: ``apply_(model, plan(model, recipe, calibration))``.

    The model is mutated (weights rewritten, pruned channels/heads removed, config fixed).  To inspect first,
    call :func:`plan`, then :func:`apply_`.  Returns the plan and a report with parameters before/after,
    nonzero parameters, time and the per-layer rows (sparsity, objective, relative error, backend).
    """
    from .models.surgery import count_parameters

    start = time.perf_counter()
    params_before, nonzero_before = count_parameters(model), count_nonzero(model)
    the_plan = plan(model, recipe, calibration, device=device, progress=progress, tokenizer=tokenizer,
                    data_dir=data_dir)
    plan_time = time.perf_counter() - start
    apply_(model, the_plan)
    report = {
        "recipe": recipe.to_dict(),
        "params_before": params_before,
        "params_after": count_parameters(model),
        "nonzero_params_before": nonzero_before,
        "nonzero_params_after": count_nonzero(model),
        "time_plan_s": plan_time,
        "time_s": time.perf_counter() - start,
        "mode": the_plan.provenance.get("mode"),
        "device": str(device),
        "layers": the_plan.layers,
        "versions": the_plan.provenance.get("versions", {}),
    }
    return PruneResult(the_plan, report)


__all__ = ["PruneResult", "apply_", "plan", "prune"]
