"""Surgery: the only code in prunekit that mutates ``nn.Module``s (design.md principle 12).

:func:`apply_` replays a :class:`~prunekit.models.plan.PruningPlan`:

1. every ``module_edits`` entry is written in full shape (weights in (out, in) layout through the family
   adapter, so GPT-2's transposed Conv1D is handled; a bias is added where the module had none, e.g. FLAP's
   bias compensation);
2. every ``group_edits`` entry removes the pruned units of its coupled group: the downstream module loses the
   units' input columns and each upstream module the units' output rows and bias entries (new, smaller
   ``nn.Linear`` / ``Conv1D`` modules with the same dtype and device).  ``vo_channel`` groups (FASP) are
   *compacted*: HF attention ties the value head size to the query ``head_dim``, so v_proj becomes a
   :class:`CompactLinear` that computes only the kept rows and scatters them into a zero output of full
   width, and o_proj one that gathers the kept input columns -- their weights shrink, the attention core
   still runs at full ``head_dim``;
3. the adapter's ``fix_config`` updates per-module attributes (heads, KV groups) and ``model.config``.

Each layer keeps its own counts, so heterogeneous widths across layers work.  :func:`mask_model_` builds the
*masked twin*: same module edits, pruned units' downstream columns zeroed, no shape change.  By claim C2 the
two give identical outputs, which the tests check.
"""

from __future__ import annotations

import contextlib
import copy
import math
import warnings
from typing import Optional, Sequence

import torch
from torch import nn

from ..errors import ModelError, NonFiniteError
from .adapters import FamilyAdapter, adapter_for
from .groups import CoupledGroup
from .linear_layers import new_linear_like
from .plan import GroupEdit, PruningPlan

COMPACT_KINDS = frozenset({"vo_channel"})
"""Group kinds applied by :class:`CompactLinear` (index gather/scatter) instead of plain slicing."""


class CompactLinear(nn.Linear):
    """A linear map that stores only some input columns and output rows of a ``full_out x full_in`` map.

    ``forward(x) = scatter(out_index, W x[..., in_index] + b)`` into a zero tensor of width ``full_out``;
    ``weight`` is ``(len(out_index), len(in_index))``.  The indices are persistent buffers, so the module
    round-trips through safetensors (``prunekit.load_pruned``).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool, full_in: int, full_out: int,
                 dtype=None, device=None):
        super().__init__(in_features, out_features, bias=bias, dtype=dtype, device=device)
        self.full_in, self.full_out = int(full_in), int(full_out)
        self.register_buffer("in_index", torch.arange(in_features, device=device))
        self.register_buffer("out_index", torch.arange(out_features, device=device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.in_features != self.full_in:
            x = x.index_select(-1, self.in_index)
        y = nn.functional.linear(x, self.weight, self.bias)
        if self.out_features == self.full_out:
            return y
        out = y.new_zeros(*y.shape[:-1], self.full_out)
        return out.index_copy_(out.dim() - 1, self.out_index, y)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, full_in={self.full_in}, full_out={self.full_out}"


def round_kept_count(n_keep: int, n_total: int, multiple: Optional[int]) -> int:
    """Round a kept width up to a multiple (8, 64, 128 for fast kernels), capped at ``n_total``.

    >>> round_kept_count(1000, 1536, 64)
    1024
    """
    if n_keep < 0 or n_keep > n_total:
        raise ValueError(f"n_keep={n_keep} must lie in [0, {n_total}]")
    if not multiple or multiple <= 1 or n_keep == 0:
        return int(n_keep)
    return int(min(n_total, math.ceil(n_keep / multiple) * multiple))


# ---------------------------------------------------------------------------------------------- helpers
def _parent(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    parent_name, _, child = name.rpartition(".")
    return (model.get_submodule(parent_name) if parent_name else model), child


def _compact_(model, adapter, group: CoupledGroup, kept, present: dict[str, list[int]]) -> None:
    """Compact the pruned units of a ``vo_channel`` group; ``present[name]`` lists, for modules already sliced
    by a head group, the original indices still there (input columns for o_proj, output rows for v_proj)."""
    if not kept:
        raise ModelError(f"group {group.name}: every unit is pruned; keep at least one channel.")
    pruned = _pruned_units(group, kept)
    specs = [(group.downstream, {c for u in pruned for c in group.units[u]}, True)]
    specs += [(n, {r for u in pruned for r in rows[u]}, False) for n, rows in group.upstream.items()]
    for name, removed, is_input in specs:
        old = model.get_submodule(name)
        w = adapter.get_weight(old).detach()
        full = w.shape[1] if is_input else w.shape[0]
        here = present.get(name, range(full))
        idx = torch.tensor([p for p, orig in enumerate(here) if orig not in removed], dtype=torch.long,
                           device=w.device)
        bias = None if old.bias is None else old.bias.detach()
        out_f, in_f = (w.shape[0], len(idx)) if is_input else (len(idx), w.shape[1])
        with warnings.catch_warnings():  # a head whose kept channels were all pruned leaves 0 columns
            warnings.simplefilter("ignore", UserWarning)
            new = CompactLinear(in_f, out_f, bias is not None, w.shape[1], w.shape[0], dtype=w.dtype,
                                device=w.device)
        new.weight.copy_(w[:, idx] if is_input else w[idx])
        if bias is not None:
            new.bias.copy_(bias if is_input else bias[idx])
        (new.in_index if is_input else new.out_index).copy_(idx)
        parent, child = _parent(model, name)
        setattr(parent, child, new.train(old.training))


def _replace(model: nn.Module, adapter: FamilyAdapter, name: str, weight: torch.Tensor,
             bias: Optional[torch.Tensor]) -> None:
    old = model.get_submodule(name)
    new = new_linear_like(old, weight.shape[0], weight.shape[1], bias is not None)
    adapter.set_weight(new, weight)
    if bias is not None:
        with torch.no_grad():
            new.bias.copy_(bias)
    new.train(old.training)
    parent, child = _parent(model, name)
    setattr(parent, child, new)


def resize_module_(model: nn.Module, name: str, out_features: int, in_features: int, bias: bool,
                   full: Optional[Sequence[int]] = None) -> None:
    """Replace module ``name`` by an uninitialized one of the given shape (used by ``load_pruned``);
    ``full = (full_out, full_in)`` makes it a :class:`CompactLinear`."""
    old = model.get_submodule(name)
    if full is not None:
        w = old.weight
        new = CompactLinear(in_features, out_features, bias, full[1], full[0], dtype=w.dtype, device=w.device)
    else:
        new = new_linear_like(old, out_features, in_features, bias)
    parent, child = _parent(model, name)
    setattr(parent, child, new)


def write_module_edit_(model: nn.Module, adapter: FamilyAdapter, name: str, weight, bias) -> None:
    """Write a full-shape weight (out, in) and optional bias; adds a bias parameter where there was none."""
    module = model.get_submodule(name)
    if weight is not None:
        current = tuple(adapter.get_weight(module).shape)
        if tuple(weight.shape) != current:
            raise ModelError(f"module edit {name}: weight shape {tuple(weight.shape)} != module shape {current}. "
                             "Fix: module edits are full-shape; apply them before any group edit.")
        adapter.set_weight(module, weight)
    if bias is not None:
        w = module.weight
        if module.bias is None:
            module.bias = nn.Parameter(torch.zeros(bias.numel(), dtype=w.dtype, device=w.device))
        with torch.no_grad():
            module.bias.copy_(bias.reshape(module.bias.shape))


def groups_by_name(model: nn.Module, adapter: FamilyAdapter, block: Optional[int] = None) -> dict[str, CoupledGroup]:
    """The coupled groups of block ``block`` (every block when None) by name."""
    indices = range(len(adapter.blocks(model))) if block is None else (block,)
    return {g.name: g for i in indices for g in adapter.coupled_groups(model, i)}


def _check_edit(edit: GroupEdit, group: CoupledGroup) -> list[int]:
    if edit.num_units != group.num_units:
        raise ModelError(f"group {group.name}: the plan has {edit.num_units} units, the model {group.num_units}. "
                         "Fix: replay the plan on the model it was made for (and apply it once).")
    kept = sorted(set(int(u) for u in edit.kept_units))
    if kept and (kept[0] < 0 or kept[-1] >= group.num_units):
        raise ModelError(f"group {group.name}: kept unit index out of range [0, {group.num_units}).")
    return kept


def _pruned_units(group: CoupledGroup, kept: Sequence[int]) -> list[int]:
    keep = set(kept)
    return [u for u in range(group.num_units) if u not in keep]


def _zero_(model, adapter, group: CoupledGroup, kept) -> None:
    """Zero the downstream input columns of the pruned units (the masked twin)."""
    pruned = _pruned_units(group, kept)
    cols = sorted(c for u in pruned for c in group.units[u])
    module = model.get_submodule(group.downstream)
    w = adapter.get_weight(module).detach().clone()
    w[:, cols] = 0
    adapter.set_weight(module, w)


def _slice_(model, adapter, group: CoupledGroup, kept, present: dict[str, list[int]]) -> None:
    if not kept:
        raise ModelError(f"group {group.name}: every unit is pruned. Removing a whole block is not supported; "
                         "keep at least one unit (the recipe's ratio must be < 1).")
    cols = torch.tensor(group.columns_of(kept), dtype=torch.long)
    module = model.get_submodule(group.downstream)
    w = adapter.get_weight(module).detach()
    _replace(model, adapter, group.downstream, w[:, cols.to(w.device)].clone(),
             None if module.bias is None else module.bias.detach().clone())
    present[group.downstream] = group.columns_of(kept)
    for name in group.upstream:
        present[name] = group.rows_of(name, kept)
        rows = torch.tensor(group.rows_of(name, kept), dtype=torch.long)
        mod = model.get_submodule(name)
        w = adapter.get_weight(mod).detach()
        rows = rows.to(w.device)
        _replace(model, adapter, name, w[rows].clone(), None if mod.bias is None else mod.bias.detach()[rows].clone())


def _resolve_groups(model, adapter, plan: PruningPlan,
                    block: Optional[int] = None) -> list[tuple[GroupEdit, CoupledGroup, list[int]]]:
    groups = groups_by_name(model, adapter, block) if plan.group_edits else {}  # derived: only when needed
    resolved, seen = [], {}
    for key, edit in plan.group_edits.items():
        name = edit.group or key
        if name not in groups:
            raise ModelError(f"plan group {name!r} is not a coupled group of this model. "
                             f"Known kinds: {sorted({g.kind for g in groups.values()})}.")
        group = groups[name]
        if any(isinstance(model.get_submodule(m), CompactLinear) for m in (group.downstream, *group.upstream)):
            raise ModelError(f"group {name}: its modules hold compacted V/O channels from an earlier apply_; "
                             "plan all structures of a model at once, from the unpruned model.")
        kept = _check_edit(edit, group)
        if group.kind not in COMPACT_KINDS:
            if group.downstream in seen:
                raise ModelError(f"groups {seen[group.downstream]!r} and {name!r} both physically prune "
                                 f"{group.downstream}; a plan may remove units of one structure per module.")
            seen[group.downstream] = name
        resolved.append((edit, group, kept))
    return resolved


# ---------------------------------------------------------------------------------------------- public
def _apply_edits_(model: nn.Module, adapter: FamilyAdapter, plan: PruningPlan, block: Optional[int] = None) -> bool:
    """Module edits, then physical removal of the pruned units; True when units were removed."""
    resolved = _resolve_groups(model, adapter, plan, block)  # group indices refer to the unpruned shapes
    for name, edit in plan.module_edits.items():
        write_module_edit_(model, adapter, edit.module or name, edit.weight, edit.bias)
    present: dict[str, list[int]] = {}  # original indices still present after slicing, per module
    for _, group, kept in resolved:
        if group.kind not in COMPACT_KINDS:
            _slice_(model, adapter, group, kept, present)
    for _, group, kept in resolved:  # after the heads: only the channels of kept heads remain to compact
        if group.kind in COMPACT_KINDS:
            _compact_(model, adapter, group, kept, present)
    return bool(resolved)


@torch.no_grad()
def apply_(model: nn.Module, plan: PruningPlan) -> nn.Module:
    """Apply ``plan`` to ``model`` **in place** (module edits, then physical removal of pruned units, then the
    config fix-up) and return the model.  The plan itself is not modified.

    Raises ModelError (a plan without weights, or made for another model) or NonFiniteError (NaN/Inf in a new
    weight or bias, naming the module) before the model is touched."""
    adapter = adapter_for(model)
    _require_weights(plan)
    _require_finite(plan)
    if getattr(model, "_prunekit_base_config", None) is None:  # the architecture to rebuild from (saving.py)
        model._prunekit_base_config = model.config.to_dict()
    with _experts_as_linear(model, adapter):
        if _apply_edits_(model, adapter, plan):
            adapter.fix_config(model)
    return model


def _experts_as_linear(model: nn.Module, adapter: FamilyAdapter):
    """Generic adapter: the plan names fused MoE experts per expert (``...experts.3.down_proj``), so they are
    unfused while it is replayed and fused back after (``families.experts.experts_unfused``)."""
    if getattr(adapter, "name", "") != "generic":
        return contextlib.nullcontext()
    from .families.experts import experts_unfused

    return experts_unfused(model)


def _require_weights(plan: PruningPlan) -> None:
    """A plan without its new weights (a pruned output's plan.json, or one saved without ``include_weights``)
    records what was done; replaying it would silently skip the weight updates, so it is refused."""
    missing = [k for k, e in plan.module_edits.items() if e.weight is None and e.bias is None]
    if missing:
        raise ModelError(f"this plan holds kept units and records but not the new weights of {len(missing)} modules "
                         f"(e.g. {missing[0]}), so it cannot be replayed. Fix: replay a plan from prunekit.plan(...), "
                         f"or one saved with plan.save(folder, include_weights=True).")


def _require_finite(plan: PruningPlan) -> None:
    """Refuse a plan whose new weights or biases hold NaN/Inf *before* any module is touched (a damaged or
    hand-edited plan would otherwise silently poison the model)."""
    for key, edit in plan.module_edits.items():
        for what, tensor in (("weight", edit.weight), ("bias", edit.bias)):
            if tensor is None or not torch.is_tensor(tensor) or not tensor.is_floating_point():
                continue
            finite = torch.isfinite(tensor)
            if not bool(finite.all()):
                bad = int((~finite).sum())
                raise NonFiniteError(
                    f"the plan's new {what} for module {edit.module or key!r} holds NaN/Inf ({bad} of "
                    f"{tensor.numel()} entries); the model was not changed. Fix: recompute the plan (a solver "
                    f"never returns NaN: the plan file was damaged or edited), e.g. with prunekit.plan(...).")


@torch.no_grad()
def pruned_block(model: nn.Module, adapter: FamilyAdapter, index: int, block_plan: PruningPlan) -> nn.Module:
    """A pruned copy of block ``index`` (its edits applied, per-module attributes fixed); the model is unchanged.

    The copy is made in the block's own dtype and device; ``block_plan`` holds only this block's edits
    (:meth:`PruningPlan.block_edits`).  Its group indices refer to the unpruned block.
    """
    blocks = adapter.blocks(model)
    original = blocks[index]
    blocks[index] = copy.deepcopy(original)
    try:
        if _apply_edits_(model, adapter, block_plan, index):
            adapter.fix_block(model, index)
        return blocks[index]
    finally:
        blocks[index] = original


def replace_block_(model: nn.Module, adapter: FamilyAdapter, index: int, block: nn.Module) -> None:
    """Put ``block`` (e.g. from :func:`pruned_block`) in place of block ``index`` of ``model``."""
    adapter.blocks(model)[index] = block


@torch.no_grad()
def load_block_state_(block: nn.Module, state: dict[str, torch.Tensor]) -> nn.Module:
    """Load a pruned block's saved tensors (names relative to the block) into a block of the same shapes,
    adding the biases that pruning created (FLAP's bias compensation); every tensor must match (strict)."""
    for name, tensor in state.items():
        owner, _, leaf = name.rpartition(".")
        module = block.get_submodule(owner) if owner else block
        if leaf == "bias" and getattr(module, "bias", None) is None and hasattr(module, "weight"):
            module.bias = nn.Parameter(torch.zeros(tensor.shape, dtype=module.weight.dtype,
                                                   device=module.weight.device), requires_grad=False)
    missing, unexpected = block.load_state_dict(state, strict=False, assign=True)
    if missing or unexpected:
        raise ModelError(f"saved block tensors do not match the block (missing {missing[:4]}, unexpected "
                         f"{unexpected[:4]}). Fix: the partial output is damaged; rerun with --overwrite.")
    return block


def fix_config_(model: nn.Module, adapter: FamilyAdapter) -> None:
    """Update ``model.config`` (and per-module attributes) from the current module shapes."""
    if getattr(model, "_prunekit_base_config", None) is None:
        model._prunekit_base_config = model.config.to_dict()
    adapter.fix_config(model)


@torch.no_grad()
def mask_model_(model: nn.Module, plan: PruningPlan) -> nn.Module:
    """The masked twin of :func:`apply_`: module edits written, pruned units' downstream columns zeroed, no
    shape change (in place; returns the model)."""
    adapter = adapter_for(model)
    _require_weights(plan)
    _require_finite(plan)
    with _experts_as_linear(model, adapter):
        resolved = _resolve_groups(model, adapter, plan)
        for name, edit in plan.module_edits.items():
            write_module_edit_(model, adapter, edit.module or name, edit.weight, edit.bias)
        for _, group, kept in resolved:
            _zero_(model, adapter, group, kept)
    return model


def count_parameters(model: nn.Module) -> int:
    """Number of distinct parameters (tied weights counted once)."""
    seen, total = set(), 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return total


def removed_parameters(model: nn.Module, plan: PruningPlan) -> int:
    """Parameters that ``apply_(model, plan)`` removes (computed on the unpruned model, pure): per module, the
    removed input columns and output rows (with their bias entries), each weight entry counted once."""
    adapter = adapter_for(model)
    cols: dict[str, set] = {}
    rows: dict[str, set] = {}
    for _, group, kept in _resolve_groups(model, adapter, plan):
        pruned = _pruned_units(group, kept)
        cols.setdefault(group.downstream, set()).update(c for u in pruned for c in group.units[u])
        for name, rows_of in group.upstream.items():
            rows.setdefault(name, set()).update(r for u in pruned for r in rows_of[u])
    total = 0
    for name in set(cols) | set(rows):
        mod = model.get_submodule(name)
        out_f, in_f = adapter.get_weight(mod).shape
        rc, rr = len(cols.get(name, ())), len(rows.get(name, ()))
        total += out_f * rc + in_f * rr - rc * rr + (rr if mod.bias is not None else 0)
    return total


__all__ = ["apply_", "pruned_block", "load_block_state_", "replace_block_", "fix_config_", "mask_model_", "round_kept_count", "count_parameters", "removed_parameters",
           "new_linear_like", "resize_module_", "CompactLinear", "COMPACT_KINDS"]
