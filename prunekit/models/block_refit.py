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
the sum (their downstream columns are zero, so their gradient is zero and they never change).  Adam over ``epochs``
passes of the windows in a seeded random order, one window per step, starting from the solvers' weights, with the
step size ``lr`` held (``schedule="constant"``) or decayed along a half cosine to zero over the steps
(``schedule="cosine"``, the default: ``lr_t = lr (1 + cos(pi t / T)) / 2``, so the last steps refine instead of
jittering at the full step).  ``scope="pruned"`` (default) trains the weights of the modules the plan prunes (and
the upstream modules of its groups); ``scope="block"`` trains every linear module of the block, so a module the
recipe leaves alone (attention in an MLP channel plan) may compensate the pruned ones; biases and norms stay as
solved either way.

**Targets.**  ``targets="block"`` is (1) as written: the dense block on the same inputs the pruned block sees, so
each block is fitted to undo its own error only.  ``targets="dense_model"`` (the default) replaces ``f(W; X_i)`` by
``f(W; X_i^dense)``, the dense *model's* own block output (``X^dense``: the dense model's inputs of this block,
carried beside the run's stream, :class:`DenseStream`), so a block is also fitted to undo what the blocks before it
got wrong::

    min  sum_i || f(W_hat; X_i) - f(W; X_i^dense) ||_F^2                                     (2)

The certificate then measures (2).  In the ``dense`` calibration modes ``X_i = X_i^dense`` and the two coincide.
In the pruned-input modes it costs one more dense forward per block and a second copy of the calibration
activations (on ``storage``; for a 7B model at 128 x 2048 tokens, 4 GiB in float32).

**Certificate.**  The relative error ``e = sum_i ||f(W_hat; X_i) - f(W; X_i)||^2 / sum_i ||f(W; X_i)||^2`` is
measured on the same windows before and after; the refitted weights are kept only when ``e`` decreased and
stayed finite.  When it did not, the fit is tried again from the solvers' weights with a quarter of the step size,
up to ``retries`` times (a step too large for a block whose layer solves are already good overshoots; measured in
benchmarks/RESULTS.md, "Block refit"); when no attempt lowers ``e`` the solvers' weights stand and the record
says why (:class:`RefitRecord`).  It is an error on the calibration windows, not a held-out guarantee.

Source: [derived] -- prunekit's option, not a rule of a paper in methods.md.  The idea of fitting a sparse block to
the dense block's outputs with the masks fixed is EBFT's (Guo et al., "EBFT: Effective and Block-Wise Fine-Tuning
for Sparse LLMs", 2024), whose settings (data, targets, schedule) differ; the defaults here (2 epochs, ``lr`` 1e-3,
cosine decay, one retry at ``lr / 4``, the dense model's block outputs as targets) were measured on smollm2-135m
(benchmarks/RESULTS.md, "Block refit": SparseGPT 50% 51.11 -> 42.14 with them, 43.21 with the first settings --
constant step, no retry, the block's own targets).
"""

from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Mapping, Optional

import torch
from torch import nn

from ..errors import FormulationError, ModelError
from .calibration import BlockInputs, _call, forward_block
from .linear_layers import linear_kind, weight_of
from .plan import ModuleEdit, PruningPlan
from .surgery import groups_by_name, write_module_edit_

log = logging.getLogger("prunekit")

SCHEDULES = ("constant", "cosine")
SCOPES = ("pruned", "block")
TARGETS = ("dense_model", "block")
BACKOFF = 4.0  # a retry divides the step size by this


@dataclass(frozen=True)
class BlockRefit:
    """Settings of the block reconstruction (module docstring, problem (1)).

    epochs : passes over the calibration windows (one Adam step per window).
    lr : Adam's (initial) step size.
    seed : seed of the window order (block ``b`` uses ``seed + b``).
    schedule : ``"cosine"`` (decay to zero over the steps) or ``"constant"``.
    retries : further attempts, each from the solvers' weights at a quarter of the previous step size, when an
        attempt does not lower the block error (0: one attempt).
    scope : ``"pruned"`` (the modules the plan prunes and their groups' upstream modules) or ``"block"`` (every
        linear module of the block).
    targets : ``"dense_model"`` (the dense model's own block outputs, problem (2)) or ``"block"`` (the dense
        block on the run's inputs, problem (1)).
    """

    epochs: int = 2
    lr: float = 1e-3
    seed: int = 0
    schedule: str = "cosine"
    retries: int = 1
    scope: str = "pruned"
    targets: str = "dense_model"

    def __post_init__(self) -> None:
        if isinstance(self.epochs, bool) or not isinstance(self.epochs, int) or self.epochs < 1:
            raise FormulationError(f"block_refit.epochs must be an int >= 1, got {self.epochs!r}. Fix: e.g. epochs: 2.")
        if isinstance(self.lr, bool) or not isinstance(self.lr, (int, float)) or not (0 < self.lr < 1) \
                or not math.isfinite(self.lr):
            raise FormulationError(f"block_refit.lr must be a step size in (0, 1), got {self.lr!r}. Fix: e.g. "
                                   f"lr: 1.0e-3.")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise FormulationError(f"block_refit.seed must be an int, got {self.seed!r}.")
        if isinstance(self.retries, bool) or not isinstance(self.retries, int) or not 0 <= self.retries <= 8:
            raise FormulationError(f"block_refit.retries must be an int in [0, 8], got {self.retries!r}. Fix: e.g. "
                                   f"retries: 1.")
        for name, allowed, default in (("schedule", SCHEDULES, "cosine"), ("scope", SCOPES, "pruned"),
                                       ("targets", TARGETS, "dense_model")):
            if getattr(self, name) not in allowed:
                raise FormulationError(f"block_refit.{name} must be one of {list(allowed)}, got "
                                       f"{getattr(self, name)!r}. Fix: e.g. {name}: {default}.")
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
            unknown = sorted(set(value) - set(FIELDS))
            if unknown:
                raise FormulationError(f"block_refit has no field(s) {unknown}. Fix: use {', '.join(FIELDS)}.")
            return cls(**dict(value))
        raise FormulationError(f"block_refit must be 'auto', true/false or a mapping of {' / '.join(FIELDS)}, got "
                               f"{value!r}. Fix: e.g. block_refit: {{epochs: 2, lr: 1.0e-3}}.")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


FIELDS = tuple(f.name for f in fields(BlockRefit))


@dataclass(frozen=True)
class RefitRecord:
    """What the block reconstruction did for one block.

    error_before / error_after : the relative block error ``e`` of the solvers' and the refitted weights.
    kept : whether the refitted weights replaced the solvers' (``e`` decreased and stayed finite).
    modules : the modules trained; steps : Adam steps of all attempts; time_s : seconds.
    lr : the step size of the attempt reported (the kept one, else the last); attempts : how many ran.
    """

    block: int
    error_before: float
    error_after: float
    kept: bool
    modules: tuple[str, ...]
    steps: int
    time_s: float
    note: str = ""
    lr: float = float("nan")
    attempts: int = 1

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


def trained_modules(plan: PruningPlan, groups: Mapping[str, Any], block: Optional[nn.Module] = None,
                    prefix: str = "") -> list[str]:
    """The modules of a block plan whose weights problem (1) fits: every module with an edit, and the upstream
    modules of every group edit (``groups``: group name -> CoupledGroup); with ``block`` (scope ``"block"``), every
    other linear module of the block too (qualified with ``prefix``)."""
    names = [e.module or k for k, e in plan.module_edits.items() if e.weight is not None]
    for key, edit in plan.group_edits.items():
        group = groups.get(edit.group or key)
        if group is not None:
            names += [u for u in group.upstream if u not in names]
    if block is not None:
        names += [f"{prefix}.{n}" for n, m in block.named_modules() if n and linear_kind(m) is not None
                  and f"{prefix}.{n}" not in names]
    return names


def _fit(twin: nn.Module, params: list[torch.Tensor], inputs: BlockInputs, targets: list[torch.Tensor],
         settings: BlockRefit, lr: float, index: int, device, dtype) -> int:
    """Adam on problem (1) in place on ``twin``'s ``params`` (their zeros stay zero); returns the number of steps."""
    masks = [(p != 0).to(p.dtype) for p in params]
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.Adam(params, lr=lr)
    order = torch.Generator().manual_seed(settings.seed + index)
    total = settings.epochs * len(targets)
    steps = 0
    for _ in range(settings.epochs):
        for i in torch.randperm(len(targets), generator=order).tolist():
            if settings.schedule == "cosine":
                for group in optimizer.param_groups:
                    group["lr"] = lr * 0.5 * (1.0 + math.cos(math.pi * steps / total))
            out = _call(twin, inputs, [i], device, dtype)
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
    return steps


def refit_block(dense: nn.Module, prefix: str, index: int, plan: PruningPlan, inputs: BlockInputs,
                targets: list[torch.Tensor], settings: BlockRefit, groups: Mapping[str, Any], *,
                adapter, device, dtype) -> tuple[PruningPlan, RefitRecord]:
    """Problem (1) for one block: returns the block plan with refitted module edits (or the plan unchanged when
    no attempt decreased the error) and the record.

    dense : the dense block (compute copy on ``device``, not changed); prefix : its qualified name.
    plan : the block's plan from the layer solves (module edits: full-shape weights, zeros where pruned).
    inputs : the block's calibration inputs; targets : ``f(W; X_i)`` per window, (1, L, d) each.
    groups : the block's coupled groups by name (for the upstream modules of a channel plan).
    adapter : the model's adapter (reads and writes weights in (out, in) layout).
    """
    start = time.perf_counter()
    rel = (lambda name: name[len(prefix) + 1:])
    names = trained_modules(plan, groups, dense if settings.scope == "block" else None, prefix)
    if not names or not targets:
        return plan, RefitRecord(index, float("nan"), float("nan"), False, (), 0, 0.0, "nothing to refit")
    train_dtype = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
    solved = copy.deepcopy(dense).to(dtype=train_dtype)  # the block the plan builds: the solvers' weights
    for p in solved.parameters():
        p.requires_grad_(False)
    for key, edit in plan.module_edits.items():  # as surgery writes them: a bias the solver added is created
        write_module_edit_(solved, adapter, rel(edit.module or key), edit.weight, edit.bias)
    before = _relative_error(solved, inputs, targets, device, train_dtype)
    steps = 0
    for attempt in range(1 + settings.retries):  # at least one attempt: twin, after and lr are always bound
        lr = settings.lr / BACKOFF ** attempt
        twin = copy.deepcopy(solved)
        steps += _fit(twin, [twin.get_submodule(rel(n)).weight for n in names], inputs, targets, settings, lr,
                      index, device, train_dtype)
        after = _relative_error(twin, inputs, targets, device, train_dtype)
        if math.isfinite(after) and after < before:
            break
    kept = math.isfinite(after) and after < before
    tried = f" in {attempt + 1} attempts (last lr {lr:.3g})" if attempt else ""
    note = "" if kept else (f"refit not kept: block error {after:.4g} >= {before:.4g}{tried} (the solvers' weights "
                            f"stand)" if math.isfinite(after) else f"refit not kept: non-finite block error{tried}")
    record = RefitRecord(index, before, after, kept, tuple(names), steps, time.perf_counter() - start, note, lr,
                         attempt + 1)
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


def run_settings(recipe, ctx) -> Optional[BlockRefit]:
    """The run's :class:`BlockRefit` (None: off; ``"auto"`` resolved for the method; a method without calibration
    has nothing to fit).  Raises ModelError for a refit in a distributed run (its Adam steps would need every
    rank's windows)."""
    settings = resolve_block_refit(recipe).block_refit
    if not isinstance(settings, BlockRefit) or recipe.method.statistics_basis == "none":
        return None
    if ctx.active:
        raise ModelError(f"block_refit fits each block on every calibration window, and this run spreads the windows "
                         f"over {ctx.world_size} processes. Fix: run block_refit in one process, or set "
                         f"block_refit: false for the distributed run.")
    return settings


class DenseStream:
    """The dense model's own inputs of the current block, ``X^dense`` (problem (2)), carried beside the run's stream.

    ``targets`` runs the dense block on them once: its outputs are the block's targets and the next block's dense
    inputs.  ``skip`` passes a block a resumed run does not solve (its dense weights from the store)."""

    def __init__(self, inputs: BlockInputs):
        self.inputs = inputs

    def targets(self, dense: nn.Module, *, device, storage) -> list[torch.Tensor]:
        self.inputs = forward_block(dense, self.inputs, device=device, storage=storage)
        return self.inputs.hidden

    def skip(self, store, index: int, *, device, dtype, storage) -> None:
        from .sinks import as_compute

        self.inputs = forward_block(as_compute(store.load(index), device, dtype), self.inputs, device=device,
                                    storage=storage)


def dense_stream(settings: Optional[BlockRefit], recipe, inputs: Optional[BlockInputs]) -> Optional[DenseStream]:
    """A :class:`DenseStream` from the first block's inputs when problem (2) needs one: ``targets="dense_model"``
    in a mode whose inputs are the pruned model's (in the ``dense`` modes the run's own stream is the dense one)."""
    if settings is None or settings.targets != "dense_model" or recipe.mode.startswith("dense") or inputs is None:
        return None
    return DenseStream(inputs)


def refit_run_block(store, index: int, dense: nn.Module, block_plan: PruningPlan, inputs: BlockInputs, outputs,
                    settings: BlockRefit, device, dtype, storage, stream: Optional[DenseStream] = None) -> PruningPlan:
    """The runner's step for block ``index``: problem (1) with the dense block's outputs on the block's inputs as
    targets (``outputs``, from the statistics pass; one forward when the pass kept none: the sequential modes,
    whose stages are collected one by one), or problem (2) with the dense model's outputs (``stream``).  Returns
    the block plan with the record appended to its ``refits``."""
    if stream is not None:
        targets = stream.targets(dense, device=device, storage=storage)
    else:
        targets = outputs if outputs else forward_block(dense, inputs, device=device, storage=storage).hidden
    adapter = store.adapter
    groups = groups_by_name(store.model, adapter, index) if block_plan.group_edits else {}
    plan, record = refit_block(dense, adapter.block_prefix(store.model, index), index, block_plan, inputs, targets,
                               settings, groups, adapter=adapter, device=device, dtype=dtype)
    plan.refits.append(record)
    if record.kept:
        log.info("block %d: block refit error %.4g -> %.4g (%d steps, lr %.3g, %.1fs)", index, record.error_before,
                 record.error_after, record.steps, record.lr, record.time_s)
    else:
        log.info("block %d: %s", index, record.note)
    return plan


def resolve_block_refit(recipe):
    """``recipe`` with ``block_refit="auto"`` replaced by the method's default (``Method.block_refit_default``:
    None when False, :class:`BlockRefit` () when True, those fields when a mapping); any other recipe is returned
    unchanged."""
    if not (isinstance(recipe.block_refit, str) and recipe.block_refit == "auto"):
        return recipe
    return replace(recipe, block_refit=method_block_refit(recipe.method))


def method_block_refit(method) -> Optional[BlockRefit]:
    """What ``block_refit="auto"`` stands for with ``method`` (a :class:`~prunekit.models.methods.Method`): its
    ``block_refit_default`` as settings, None when off."""
    return BlockRefit.coerce(method.block_refit_default)


__all__ = ["BlockRefit", "DenseStream", "RefitRecord", "dense_stream", "refit_block", "refit_run_block",
           "method_block_refit", "resolve_block_refit", "run_settings", "trained_modules"]
