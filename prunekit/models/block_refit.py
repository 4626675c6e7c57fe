"""Block reconstruction after the layer solves: the kept weights of a whole decoder block fitted jointly [derived].

The layer formulations fit each linear module on its own (``||W_hat X - W X||^2`` per module, methods.md §2).  The
block's output also depends on how the errors of its modules combine through attention, the GLU product and the
norms, which no layer problem sees.  With the masks the solvers chose held fixed, this step minimises the block's
own reconstruction error over the kept weights of its pruned modules::

    min_{W_hat_m : W_hat_m = 0 off supp_m}  sum_i || f(W_hat; X_i) - f(W; X_i) ||_F^2      (1)

where ``f(W; X_i)`` is the dense block on calibration window ``i`` (``X_i`` (1, L, d): the block's inputs in the
run's calibration mode -- the pruned model's in ``propagated`` / ``sequential`` mode, the dense model's in the
``dense`` modes), ``supp_m`` is the support the solver kept for module ``m`` (its nonzero pattern: unstructured
and N:M masks stay exactly as solved) and, for channel plans, the upstream rows of the removed units stay out of
the sum (their downstream columns are zero, so their gradient is zero and they never change).  Adam with step size
``lr`` over ``epochs`` passes of the windows in a seeded random order, one window per step, starting from the
solvers' weights; only the weights of modules the plan prunes are trained (a module the recipe leaves alone stays
as it was), biases and norms are left as solved.

**Certificate.**  The relative error ``e = sum_i ||f(W_hat; X_i) - f(W; X_i)||^2 / sum_i ||f(W; X_i)||^2`` is
measured on the same windows before and after; the refitted weights are kept only when ``e`` decreased and
stayed finite, else the solvers' weights stand and the record says why (:class:`RefitRecord`).  It is an error
on the calibration windows, not a held-out guarantee.

Source: [derived] -- prunekit's option, not a rule of a paper in methods.md.  The idea of fitting a sparse block to
the dense block's outputs with the masks fixed is EBFT's (Guo et al., "EBFT: Effective and Block-Wise Fine-Tuning
for Sparse LLMs", 2024), whose settings (data, targets, schedule) differ; the defaults here (2 epochs, ``lr`` 1e-3,
the block's own dense outputs as targets) were measured on smollm2-135m (benchmarks/RESULTS.md, "block refit").
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass, replace
from typing import Any, Mapping, Optional

import torch
from torch import nn

from ..errors import FormulationError
from .calibration import BlockInputs, _call
from .linear_layers import weight_of
from .plan import ModuleEdit, PruningPlan
from .surgery import write_module_edit_


@dataclass(frozen=True)
class BlockRefit:
    """Settings of the block reconstruction (module docstring, problem (1)).

    epochs : passes over the calibration windows (one Adam step per window).
    lr : Adam's step size.
    seed : seed of the window order (block ``b`` uses ``seed + b``).
    """

    epochs: int = 2
    lr: float = 1e-3
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.epochs, bool) or not isinstance(self.epochs, int) or self.epochs < 1:
            raise FormulationError(f"block_refit.epochs must be an int >= 1, got {self.epochs!r}. Fix: e.g. epochs: 2.")
        if isinstance(self.lr, bool) or not isinstance(self.lr, (int, float)) or not (0 < self.lr < 1) \
                or not math.isfinite(self.lr):
            raise FormulationError(f"block_refit.lr must be a step size in (0, 1), got {self.lr!r}. Fix: e.g. "
                                   f"lr: 1.0e-3.")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise FormulationError(f"block_refit.seed must be an int, got {self.seed!r}.")
        object.__setattr__(self, "lr", float(self.lr))

    @classmethod
    def coerce(cls, value: Any) -> Optional["BlockRefit"]:
        """None / False -> None (off); True -> the defaults; a mapping -> those fields; a BlockRefit as is."""
        if value is None or value is False:
            return None
        if value is True:
            return cls()
        if isinstance(value, cls):
            return value
        if isinstance(value, Mapping):
            unknown = sorted(set(value) - {"epochs", "lr", "seed"})
            if unknown:
                raise FormulationError(f"block_refit has no field(s) {unknown}. Fix: use epochs, lr, seed.")
            return cls(**dict(value))
        raise FormulationError(f"block_refit must be 'auto', true/false or a mapping of epochs / lr / seed, got "
                               f"{value!r}. Fix: e.g. block_refit: {{epochs: 2, lr: 1.0e-3}}.")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class RefitRecord:
    """What the block reconstruction did for one block.

    error_before / error_after : the relative block error ``e`` of the solvers' and the refitted weights.
    kept : whether the refitted weights replaced the solvers' (``e`` decreased and stayed finite).
    modules : the modules trained; steps : Adam steps; time_s : seconds.
    """

    block: int
    error_before: float
    error_after: float
    kept: bool
    modules: tuple[str, ...]
    steps: int
    time_s: float
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["modules"] = list(self.modules)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "RefitRecord":
        return cls(**{**data, "modules": tuple(data.get("modules", ()))})


def _relative_error(block: nn.Module, inputs: BlockInputs, targets: list[torch.Tensor], device, dtype) -> float:
    num = den = 0.0
    with torch.no_grad():
        for i, y in enumerate(targets):
            out = _call(block, inputs, [i], device, dtype)
            y = y.to(device=device, dtype=out.dtype)
            num += float((out - y).double().square().sum())
            den += float(y.double().square().sum())
    return num / den if den > 0 else float("inf")


def trained_modules(plan: PruningPlan, groups: Mapping[str, Any]) -> list[str]:
    """The modules of a block plan whose weights problem (1) fits: every module with an edit, and the upstream
    modules of every group edit (``groups``: group name -> CoupledGroup)."""
    names = [e.module or k for k, e in plan.module_edits.items() if e.weight is not None]
    for key, edit in plan.group_edits.items():
        group = groups.get(edit.group or key)
        if group is not None:
            names += [u for u in group.upstream if u not in names]
    return names


def refit_block(dense: nn.Module, prefix: str, index: int, plan: PruningPlan, inputs: BlockInputs,
                targets: list[torch.Tensor], settings: BlockRefit, groups: Mapping[str, Any], *,
                adapter, device, dtype) -> tuple[PruningPlan, RefitRecord]:
    """Problem (1) for one block: returns the block plan with refitted module edits (or the plan unchanged when
    the error did not decrease) and the record.

    dense : the dense block (compute copy on ``device``, not changed); prefix : its qualified name.
    plan : the block's plan from the layer solves (module edits: full-shape weights, zeros where pruned).
    inputs : the block's calibration inputs; targets : ``f(W; X_i)`` per window, (1, L, d) each.
    groups : the block's coupled groups by name (for the upstream modules of a channel plan).
    adapter : the model's adapter (reads and writes weights in (out, in) layout).
    """
    start = time.perf_counter()
    rel = (lambda name: name[len(prefix) + 1:])
    names = trained_modules(plan, groups)
    if not names or not targets:
        return plan, RefitRecord(index, float("nan"), float("nan"), False, (), 0, 0.0, "nothing to refit")
    train_dtype = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
    twin = copy.deepcopy(dense).to(dtype=train_dtype)
    for p in twin.parameters():
        p.requires_grad_(False)
    for key, edit in plan.module_edits.items():  # as surgery writes them: a bias the solver added is created
        write_module_edit_(twin, adapter, rel(edit.module or key), edit.weight, edit.bias)
    before = _relative_error(twin, inputs, targets, device, train_dtype)
    params, masks = [], []
    for name in names:
        weight = twin.get_submodule(rel(name)).weight
        weight.requires_grad_(True)
        params.append(weight)
        masks.append((weight != 0).to(weight.dtype))
    optimizer = torch.optim.Adam(params, lr=settings.lr)
    order = torch.Generator().manual_seed(settings.seed + index)
    steps = 0
    for _ in range(settings.epochs):
        for i in torch.randperm(len(targets), generator=order).tolist():
            out = _call(twin, inputs, [i], device, train_dtype)
            y = targets[i].to(device=device, dtype=out.dtype)
            real = inputs.real_tokens(i)
            diff = out - y if real is None else (out - y)[:, real.to(out.device)]
            loss = diff.square().mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            steps += 1
            with torch.no_grad():
                for p, m in zip(params, masks):
                    p.mul_(m)
    for p in params:
        p.requires_grad_(False)
    after = _relative_error(twin, inputs, targets, device, train_dtype)
    kept = math.isfinite(after) and after < before
    note = "" if kept else (f"refit not kept: block error {after:.4g} >= {before:.4g} (the solvers' weights stand)"
                            if math.isfinite(after) else "refit not kept: non-finite block error")
    record = RefitRecord(index, before, after, kept, tuple(names), steps, time.perf_counter() - start, note)
    if not kept:
        return plan, record
    edits = dict(plan.module_edits)
    for name in names:
        key = next((k for k, e in edits.items() if (e.module or k) == name), name)
        old = edits.get(key)
        wdtype = old.weight.dtype if old is not None and old.weight is not None else dense.get_submodule(
            rel(name)).weight.dtype
        weight = weight_of(twin.get_submodule(rel(name))).detach().to("cpu", wdtype).clone()
        if old is not None:
            edits[key] = replace(old, weight=weight, note=(old.note + " + block refit").strip())
        else:
            edits[key] = ModuleEdit(module=name, weight=weight, bias=None, sparsity_kind="dense", note="block refit")
    return replace(plan, module_edits=edits), record


def resolve_block_refit(recipe):
    """``recipe`` with ``block_refit="auto"`` replaced by the method's default (``Method.block_refit_default``:
    :class:`BlockRefit` () when True, else None); any other recipe is returned unchanged."""
    if not (isinstance(recipe.block_refit, str) and recipe.block_refit == "auto"):
        return recipe
    return replace(recipe, block_refit=BlockRefit() if recipe.method.block_refit_default else None)


__all__ = ["BlockRefit", "RefitRecord", "refit_block", "resolve_block_refit", "trained_modules"]
