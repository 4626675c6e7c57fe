"""Channels inside mixture-of-experts experts (Mixtral, Qwen2-MoE ...): the rules that keep a channel-pruned MoE
block storable in the stock layout (used by the generic adapter).

**The groups.**  Expert ``e`` of a block (a :class:`~prunekit.models.families.experts.LinearExperts` after
``unfuse_experts_``, or a ModuleList of expert MLPs) is an MLP of its own: its unit ``j`` is row ``j`` of its gate
and up projections (rows ``j`` and ``j + I`` of a fused ``gate_up_proj``) and column ``j`` of its ``down_proj``.
A shared expert (Qwen2-MoE ``shared_expert``) is one more MLP with its own groups.  Routers and gates (the router,
Qwen2-MoE's ``shared_expert_gate`` of one output) are never grouped nor pruned (``generic.find_routers``).

They are *derived* by the dependency probe (``prunekit.models.coupling``) on the whole block, which is sound
through the router: the router reads the MoE block's input, which no expert row reaches, so perturbing an
expert's rows leaves the routing of the sample window unchanged and the probe sees exactly that expert's
computation (``gate``/``up`` rows reach only their own ``down`` column; clamping ``down``'s input cuts every
path).  One expert the sample window reaches is probed; its siblings of the same shapes follow it
(``coupling._followers``): they run the same code (``LinearExperts.forward`` calls each expert's two linear
layers with one shared ``act_fn``), so an expert no token reached gets its groups too.

**Rules** (:func:`check_block_widths`, called by ``GenericAdapter.fix_block`` on each pruned block):

1. *one width per expert set*: every expert of a block keeps the same number of channels -- a fused 3-D
   parameter holds one ``I`` per module and the stock config one ``intermediate_size`` /
   ``moe_intermediate_size``.  Uniform ratios guarantee it (same unit count, same ratio, same rounding); a
   non-uniform allocation that breaks it is refused with one ModelError (why, and the fix: uniform allocation);
   :func:`check_expert_ratios` says the same *before* any work for a ``ratios`` mapping.
2. *one width per block*: blocks of one layout with experts end up with the same widths (experts and shared
   expert), since the stock config has one field per width and prunekit's rebuild format re-creates fused
   experts at the unpruned width; a block that would differ from the first pruned one is refused the same way
   (``export`` refuses again, clearly, if an output still got there, e.g. after a resume).
3. *experts no calibration token reached* have no statistics.  The ``unrouted`` policy's default (leave it
   dense) would break rule 1, so for channels both policies prune such an expert by **weight-norm channel
   scores** to the same unit count as its siblings (:func:`unrouted_channels_solution`: unit score = sum over
   its columns of ``||W_down[:, c]||_2^2``, the ``frobenius`` column score; only the downstream weight is
   available to the runner's fallback), and its LayerRecord says so (``status``, ``statistics="none"``).
4. widths are zero-padded to a multiple of ``experts.EXPERT_WIDTH_MULTIPLE`` when the experts are fused back
   (exact; transformers' ``grouped_mm`` kernel needs 16-byte rows) -- see ``prunekit.models.families.experts``.
"""

from __future__ import annotations

import math
from typing import Mapping, Optional, Sequence

import torch
from torch import nn

from ...errors import ModelError
from ..linear_layers import weight_of

UNROUTED_CHANNELS_FORMULATION = "WeightNormChannels"
"""``LayerRecord.formulation`` of an expert pruned by :func:`unrouted_channels_solution`."""
_FIX = ("Fix: prune every expert at one ratio (allocation='uniform' and no per-group ratios for expert groups), or "
        "prune this model with structure 'unstructured' or an N:M pattern such as '2:4'.")


def expert_pattern(name: str) -> tuple[str, Optional[int]]:
    """``("mlp.experts.*.down_proj", 3)`` for ``mlp.experts.3.down_proj`` (the last numeric component is the
    expert index); ``(name, None)`` for a module outside a numbered container (a shared expert)."""
    parts = name.split(".")
    last = max((i for i, p in enumerate(parts) if p.isdigit()), default=-1)
    if last < 0:
        return name, None
    return ".".join(parts[:last] + ["*"] + parts[last + 1:]), int(parts[last])


def block_widths(block: nn.Module, downstream: Sequence[str]) -> dict[str, dict[int, int]]:
    """``{pattern: {expert index (-1 outside experts): channels}}`` of a block: the input width of each channel
    group's downstream module (names relative to the block)."""
    out: dict[str, dict[int, int]] = {}
    for rel in downstream:
        pattern, expert = expert_pattern(rel)
        out.setdefault(pattern, {})[-1 if expert is None else expert] = int(weight_of(block.get_submodule(rel)).shape[1])
    return out


def check_block_widths(block: nn.Module, downstream: Sequence[str], index: int,
                       first: Optional[tuple[int, Mapping[str, int]]] = None) -> dict[str, int]:
    """Rules 1 and 2 of the module docstring for a pruned block holding experts; returns its widths
    ``{pattern: channels}`` (the ``first`` of a later call).

    Parameters
    ----------
    block : the pruned block (experts still unfused).
    downstream : the block-relative downstream modules of its channel groups.
    index : the block's index (for the message).
    first : ``(index, widths)`` of the first pruned block of the same layout, or None.

    Raises
    ------
    ModelError
        The experts of one set have different widths, or the widths differ from ``first``'s.
    """
    widths = block_widths(block, downstream)
    for pattern, per in widths.items():
        if len(set(per.values())) > 1:
            shown = ", ".join(f"expert {e}: {w}" for e, w in sorted(per.items()))
            raise ModelError(f"channels in block {index}: the experts {pattern} would keep different numbers of "
                             f"channels ({shown}), but every expert of an MoE block must keep the same width: the "
                             f"fused expert parameters hold one width and the stock config one intermediate size. "
                             f"{_FIX}")
    mine = {p: next(iter(per.values())) for p, per in widths.items()}
    if first is not None and first[1] != mine:
        diff = sorted(p for p in set(mine) | set(first[1]) if mine.get(p) != first[1].get(p))
        raise ModelError(f"channels in block {index}: {diff[0]} keeps {mine.get(diff[0])} channels, block "
                         f"{first[0]} keeps {first[1].get(diff[0])}; blocks with experts must end up with equal "
                         f"widths, since the stock config has one width per expert kind and prunekit's rebuild "
                         f"format re-creates fused experts at their unpruned width. {_FIX}")
    return mine


def _split(name: str) -> tuple[str, str]:
    """``("model.layers.0", "mlp.experts.3.down_proj")``: a qualified name split after its first numeric
    component (the block index)."""
    parts = name.split(".")
    first = next((i for i, p in enumerate(parts) if p.isdigit()), None)
    if first is None:
        return "", name
    return ".".join(parts[:first + 1]), ".".join(parts[first + 1:])


def check_expert_ratios(groups, ratios: Mapping[str, float], sparsity: float, round_to=1) -> None:
    """Refuse, before any work, per-group ``ratios`` that break rule 1 or 2 of the module docstring: the experts
    of one expert set, or blocks holding experts, would get different kept widths.  ``groups``: the channel
    groups of every block (qualified names, ``GenericAdapter.coupled_groups``); ``sparsity``: the ratio of the
    groups ``ratios`` omits; ``round_to``: the recipe's.

    Raises ModelError naming the first widths that differ."""
    from ..methods import units_pruned

    kept: dict[str, dict[str, dict[str, int]]] = {}  # block -> in-block pattern -> {group: kept units}
    for g in groups:
        block, rel = _split(g.downstream)
        ratio = float(ratios.get(g.name, sparsity))
        kept.setdefault(block, {}).setdefault(expert_pattern(rel)[0], {})[g.name] = \
            g.num_units - units_pruned(g.num_units, ratio, round_to)
    moe = {b: per for b, per in kept.items() if any("*" in p for p in per)}  # blocks holding experts
    for block, per in moe.items():
        for pattern, values in per.items():
            if len(set(values.values())) > 1:
                shown = ", ".join(f"{n}: {k}" for n, k in list(values.items())[:4])
                raise ModelError(f"ratios give the experts {block}.{pattern} different kept widths ({shown}"
                                 f"{' ...' if len(values) > 4 else ''}), but every expert of an MoE block must keep "
                                 f"the same number of channels (one width per fused 3-D parameter and per stock "
                                 f"config). {_FIX}")
    across: dict[str, dict[int, str]] = {}
    for block, per in moe.items():
        for pattern, values in per.items():
            across.setdefault(pattern, {}).setdefault(next(iter(values.values())), block)
    for pattern, seen in across.items():
        if len(seen) > 1:
            shown = ", ".join(f"{b}: {w}" for w, b in seen.items())
            raise ModelError(f"ratios give {pattern} different kept widths across blocks ({shown}); blocks with "
                             f"experts must end up with equal widths (one stock config field each). {_FIX}")


# ---------------------------------------------------------------------------------------------- unreached experts
def unrouted_channels_solution(weight: torch.Tensor, spec, base: dict):
    """``(Solution, LayerRecord)`` pruning ``spec.count`` units of a channel group whose downstream module no
    calibration token reached (rule 3): the units of least weight norm ``sum_{c in unit} ||W[:, c]||_2^2`` are
    pruned (ties: the later unit), no weight is updated.  ``base`` holds the record's ``block``, ``module``,
    ``group``, ``shape`` and ``target_sparsity``, as in the runner.

    The solution's ``kept_columns`` hold the kept units' columns, so the runner's kept units come from it."""
    from ...solvers.solution import Solution
    from ..records import LayerRecord

    w = weight.detach()
    n = w.shape[1]
    units = [tuple(u) for u in spec.groups] if spec.groups is not None else \
        [tuple(range(s, min(n, s + spec.group_size))) for s in range(0, n, spec.group_size)]
    count = int(spec.count) if spec.count is not None else int(math.floor(spec.ratio * len(units) + 1e-9))
    column = (w.double() ** 2).sum(dim=0)
    scores = torch.stack([column[list(u)].sum() for u in units])
    order = sorted(range(len(units)), key=lambda u: (float(scores[u]), -u))  # weakest first; ties: later unit
    pruned = set(order[:count])
    mask = torch.ones_like(w, dtype=torch.bool)
    for u in pruned:
        mask[:, list(units[u])] = False
    kept_columns = torch.tensor(sorted(c for u in range(len(units)) if u not in pruned for c in units[u]),
                                dtype=torch.long)
    new = w * mask
    objective = 0.5 * float(((new - w).double() ** 2).sum())
    solution = Solution(weights=new, mask=mask, objective=objective, status="heuristic", kept_columns=kept_columns,
                        provenance={"backend": "torch", "formulation": UNROUTED_CHANNELS_FORMULATION})
    record = LayerRecord(**base, formulation=UNROUTED_CHANNELS_FORMULATION, backend="torch",
                         status="heuristic (weight-norm channel fallback: no calibration token reached this module, "
                                "so it has no statistics; an MoE expert keeps the width of its siblings, so channels "
                                "never leave it dense)",
                         sparsity=float((~mask).sum()) / max(mask.numel(), 1), objective=objective,
                         kept_units=len(units) - len(pruned), num_units=len(units), statistics="none")
    return solution, record


# ---------------------------------------------------------------------------------------------- fused back
def downstream_width(model: nn.Module, name: str) -> tuple[int, bool]:
    """``(input width, fused)`` of a channel group's downstream module ``name`` (qualified): its weight's input
    width, or -- once its experts are fused back (``model.layers.0.mlp.experts.3.down_proj`` no longer a module)
    -- the width of expert 3's slice of the fused ``down_proj`` parameter (``fused`` True)."""
    try:
        return int(weight_of(model.get_submodule(name)).shape[1]), False
    except AttributeError:
        pass
    parts = name.split(".")
    digits = [i for i, p in enumerate(parts) if p.isdigit()]
    if not digits or digits[-1] == len(parts) - 1:
        raise ModelError(f"{name} is neither a module nor an expert slice of a fused parameter. Fix: pass the "
                         f"model whose coupled groups were derived (prunekit derives them during the run).")
    i = digits[-1]
    container = model.get_submodule(".".join(parts[:i]))
    param = getattr(container, ".".join(parts[i + 1:]), None)
    if not isinstance(param, torch.Tensor) or param.dim() < 3:
        raise ModelError(f"{name}: {'.'.join(parts[:i])} holds no fused expert parameter "
                         f"{'.'.join(parts[i + 1:])!r}. Fix: pass the model whose coupled groups were derived.")
    return int(param.shape[-1]), True


__all__ = ["UNROUTED_CHANNELS_FORMULATION", "block_widths", "check_block_widths", "check_expert_ratios",
           "downstream_width", "expert_pattern", "unrouted_channels_solution"]
