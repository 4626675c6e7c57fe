"""Coupled groups derived from a decoder block's computation (the dependency graph made real, issue 11 item 2).

:func:`derive_groups` finds the :class:`~prunekit.models.groups.CoupledGroup` s of block ``index`` of *any*
causal LM from what the block computes, with no family code: GLU / FFN channels, attention heads and GQA groups,
V/O channels, fused ``qkv`` / ``gate_up`` projections (Phi-3, GPT-2, GPT-NeoX's per-head interleaving), per-head
q/k norms (Qwen3, Gemma3), parallel attention + MLP (GPT-NeoX, Falcon) and the channels of each MoE expert (unfuse
fused experts first with ``unfuse_experts_``; routers are never probed nor grouped).

**Design: a dependency probe** (:mod:`prunekit.models.coupling_probe`: a float64 copy of the block run on one
sample window with hooks on its linear modules).  Rows are output rows of linear modules, columns input columns;
``U -> D`` means rows of U reach columns of D.

1. *Edges.*  For each linear module U (one representative of repeated siblings such as ``experts.*``) perturb all
   its rows: the modules whose input changes are U's *reach*.  U is **owned** by the first module D it reaches
   when clamping D's input to its baseline makes the block output insensitive to U: every path from U's rows to
   the block output runs through D's input.  These owner edges are the dependency graph's data edges
   (q/k/v -> o, gate/up -> down, fc1 -> fc2); o_proj or down_proj, whose rows also reach the residual stream, have
   no owner and are never upstream of a group.
2. *Relation.*  For each downstream D, the exact relation "row r of an owned module reaches column c of D" and
   whether each such dependency is affine, from :func:`~prunekit.models.coupling_probe.relation` (row and column
   bit tests, then a distance-2 colouring with one +/- probe pair per colour).  Downstream modules whose owned
   rows cannot reach each other (parallel attention and MLP, MoE experts) share the probes.  A module that a
   perturbation leaves uncalled (an MoE expert whose tokens the router sends elsewhere) counts as reached, so
   rows that can re-route tokens (attention before an MoE MLP) never share probes with the experts.
3. *Units.*  The units of D are the connected components of the bipartite relation: removing a component's rows
   changes only its own columns of D, and D's input is the only way out, so the block output with the unit removed
   equals the one with its columns zeroed (methods.md claim C2).  The components over the *affine* rows alone
   (v_proj, the v third of ``c_attn``), when finer, give a second group: V/O channels.
4. *Kinds*, from the structure: units of one column with two rows (gate and up) -> ``glu_channel``, with one row
   -> ``ffn_channel``; units of several columns -> ``attention_head``, or ``gqa_group`` when one affine row reaches
   several columns (a KV head read by G query heads); the affine components -> ``vo_channel``.

Cost per block (float64, one window): at most ``1 + 2 n_modules`` edge forwards, then per probe pack
``2 log2(rows)`` row-test forwards, one VJP forward with ``2 log2(columns)`` backwards and ``2 colours`` forwards
(colours ~ the most rows reaching one column: ``2 head_dim + 1`` for attention, 2 for a GLU).  Measured (16
tokens): 56-110 forwards and 12-24 backwards per block of the tiny test models; 574 forwards and 40 backwards for
a block with ``head_dim`` 128 and 1376 MLP channels (a 7B LLaMA block: about 600 and 50) -- independent of the
number of channels and experts; non-power-of-two head sizes cost more colours (``head_dim`` 80: 1020 forwards).  Derive once per block layout (same module
shapes) and reuse; :class:`BlockCoupling` reports the counts.

Group names are ``"<parent of downstream>:<kind>"`` (the downstream's own name when that repeats).  A group whose
columns all form one unit (heads tied by a norm over the whole projection, a multi-query K/V head shared by all
heads) cannot be pruned: :func:`derive_groups` with ``kinds`` raises one ModelError naming the tying rows and the
groups that would work.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping, Optional

import torch
from torch import nn

from ..errors import ModelError
from .coupling_probe import BlockProbe, relation
from .groups import CoupledGroup
from .linear_layers import weight_of

FAMILIES = {"channels": ("glu_channel", "ffn_channel"), "heads": ("attention_head", "gqa_group"),
            "vo_channels": ("vo_channel",)}
SAMPLE_TOKENS = 16
"""Tokens of the window drawn when no sample is given (the probe cost grows with it)."""


@dataclass(frozen=True)
class BlockCoupling:
    """The probe's findings for one block (qualified module names).

    groups : the derived coupled groups; owners : ``{upstream: downstream}`` data edges (step 1); reaches :
    ``{module: modules whose input it changes}``; ties : ``{group name: why its columns form a single unit}``;
    forwards / backwards : probe cost (forward and backward passes of the block on one window).
    """

    block: int
    prefix: str
    groups: tuple[CoupledGroup, ...]
    owners: Mapping[str, str]
    reaches: Mapping[str, tuple]
    ties: Mapping[str, str]
    forwards: int
    backwards: int


# ---------------------------------------------------------------------------------------------- inputs, siblings
def _sample(model: nn.Module, adapter, sample_inputs):
    from .calibration import BlockInputs, capture_block_inputs

    if sample_inputs is None:
        config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
        g = torch.Generator().manual_seed(0)
        sample_inputs = torch.randint(0, int(config.vocab_size), (1, SAMPLE_TOKENS), generator=g)
    if isinstance(sample_inputs, torch.Tensor):
        sample_inputs = capture_block_inputs(model, adapter, sample_inputs.reshape(-1, sample_inputs.shape[-1])[:1])
    if isinstance(sample_inputs, BlockInputs):
        args, kwargs = sample_inputs.call_arguments(0)
        return sample_inputs.hidden[0], args, kwargs
    if isinstance(sample_inputs, tuple) and len(sample_inputs) == 3:
        return sample_inputs
    raise ModelError(f"sample_inputs of type {type(sample_inputs).__name__} cannot drive a block. Fix: pass token ids "
                     f"(LongTensor (1, L)), a calibration.BlockInputs, a (hidden, args, kwargs) triple, or None.")


def _instance(rel: str) -> Optional[tuple[str, str, str]]:
    """``("mlp.experts.*", "mlp.experts.3", "down_proj")`` for a module inside a numbered container, else None."""
    parts = rel.split(".")
    last = max((i for i, p in enumerate(parts) if p.isdigit()), default=-1)
    if last < 0 or last == len(parts) - 1:
        return None
    pattern = ".".join("*" if p.isdigit() else p for p in parts[:last + 1])
    return pattern, ".".join(parts[:last + 1]), ".".join(parts[last + 1:])


def _followers(block: nn.Module, names: list[str], called: list[str]) -> dict[str, str]:
    """``{instance: representative instance}`` for repeated siblings (MoE experts, ``"mlp.experts.3"``): an
    instance follows the first fully called instance of its pattern with the same module shapes, and is not
    probed (an expert no token reached gets its groups too)."""
    patterns: dict[str, dict[str, list[str]]] = {}
    for n in names:
        parsed = _instance(n)
        if parsed:
            patterns.setdefault(parsed[0], {}).setdefault(parsed[1], []).append(parsed[2])
    follow: dict[str, str] = {}
    for instances in patterns.values():
        def signature(inst):
            return tuple((r, tuple(weight_of(block.get_submodule(f"{inst}.{r}")).shape)) for r in instances[inst])
        reps: dict[tuple, str] = {}
        ordered = sorted(instances, key=lambda i: [int(p) if p.isdigit() else 0 for p in i.split(".")])
        for inst in ordered:
            if all(f"{inst}.{r}" in called for r in instances[inst]):
                reps.setdefault(signature(inst), inst)
        follow.update({inst: reps[signature(inst)] for inst in ordered
                       if reps.get(signature(inst), inst) != inst})
    return follow


# ---------------------------------------------------------------------------------------------- units, kinds
def _components(rel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Connected-component labels (rows, columns) of the bipartite relation ``rel`` (R, C)."""
    n_rows = rel.shape[0]
    r, c = rel.nonzero(as_tuple=True)
    a, b = r, c + n_rows
    labels = torch.arange(n_rows + rel.shape[1])
    while True:
        low = torch.minimum(labels[a], labels[b])
        new = labels.clone().scatter_reduce_(0, a, low, "amin").scatter_reduce_(0, b, low, "amin")
        new = new[new]
        if torch.equal(new, labels):
            return labels[:n_rows], labels[n_rows:]
        labels = new


def _units(rel: torch.Tensor, offsets: list[int], ups: list[str]):
    """(units, {u: rows per unit}) of ``rel`` ordered by first column; modules without rows are left out."""
    row_lab, col_lab = _components(rel)
    keys = sorted(set(col_lab.tolist()), key=lambda k: int((col_lab == k).nonzero()[0]))
    units = tuple(tuple((col_lab == k).nonzero().flatten().tolist()) for k in keys)
    upstream = {}
    for i, u in enumerate(ups):
        lab = row_lab[offsets[i]:offsets[i + 1]]
        live = rel[offsets[i]:offsets[i + 1]].any(1)
        rows = tuple(tuple(((lab == k) & live).nonzero().flatten().tolist()) for k in keys)
        if any(rows):
            upstream[u] = rows
    return units, upstream


def _ranges(rows: list[int]) -> str:
    spans, start = [], None
    for i, r in enumerate(rows):
        if start is None:
            start = r
        if i + 1 == len(rows) or rows[i + 1] != r + 1:
            spans.append(f"{start}" if start == r else f"{start}-{r}")
            start = None
    return ", ".join(spans)


def _tie(d: str, rel: torch.Tensor, offsets: list[int], ups: list[str]) -> str:
    """Why all columns of ``d`` form one unit: the rows that reach every column, else the modules chaining them."""
    parts = []
    for i, u in enumerate(ups):
        full = rel[offsets[i]:offsets[i + 1]].all(1).nonzero().flatten().tolist()
        if full:
            n = offsets[i + 1] - offsets[i]
            parts.append(f"every row of {u}" if len(full) == n else f"rows {_ranges(full)} of {u}")
    if parts:
        verb = "reaches" if len(parts) == 1 and parts[0].startswith("every") else "reach"
        return (f"{' and '.join(parts)} {verb} all {rel.shape[1]} input columns of {d} (e.g. a norm or rotary over "
                f"the whole projection, or one K/V head shared by all heads)")
    return f"the rows of {', '.join(ups)} chain all {rel.shape[1]} input columns of {d} together"


def _groups_of(d: str, ups: list[str], widths: Mapping[str, int], rel: torch.Tensor, lin: torch.Tensor) -> list:
    """``[(kind, d, units, upstream, tie or None)]`` of one downstream module (relative names)."""
    offsets = [0]
    for u in ups:
        offsets.append(offsets[-1] + widths[u])
    units, upstream = _units(rel, offsets, ups)
    affine_rows = rel.any(1) & (lin | ~rel).all(1)
    sub = rel & affine_rows[:, None]
    vo = _units(sub, offsets, ups) if bool(sub.any(0).all()) else None
    vo = vo if vo is not None and len(vo[0]) > len(units) else None
    if all(len(u) == 1 for u in units):
        kind = "glu_channel" if any(sum(len(rows[i]) for rows in upstream.values()) >= 2 for i in range(len(units))) \
            else "ffn_channel"
    else:
        kind = "gqa_group" if vo is not None and max(len(u) for u in vo[0]) > 1 else "attention_head"
    tie = _tie(d, rel, offsets, ups) if len(units) == 1 and rel.shape[1] > 1 else None
    out = [(kind, d, units, upstream, tie)]
    if vo is not None:
        out.append(("vo_channel", d, vo[0], vo[1], None))
    return out


# ---------------------------------------------------------------------------------------------- public API
def derive_coupling(model: nn.Module, adapter, index: int, sample_inputs=None, *, device=None,
                    seed: int = 0) -> BlockCoupling:
    """Probe block ``index`` of ``model`` (blocks and names from ``adapter``) and derive its coupled groups (see
    the module docstring).  ``sample_inputs``: token ids (1, L), a ``calibration.BlockInputs`` (window 0 is used;
    block 0's inputs serve every block: only the structure matters), a ``(hidden, args, kwargs)`` triple, or None
    (a random window of ``SAMPLE_TOKENS`` tokens).  The model is not changed."""
    from .families.generic import find_routers, linear_modules

    block = adapter.blocks(model)[index]
    prefix = adapter.block_prefix(model, index)
    routers = find_routers(block)
    names = [n for n in linear_modules(block) if n not in routers]
    probe = BlockProbe(block, *_sample(model, adapter, sample_inputs), names, device=device, seed=seed)
    called = probe.called
    follow = _followers(block, names, called)
    probed = [n for n in called if not any(n.startswith(f"{inst}.") for inst in follow)]
    reach, owner = {}, {}
    for u in probed:
        rows = (torch.arange(probe.out_width[u]), 1.0)
        run = probe.run({u: rows})
        reach[u] = [d for d in called if d != u and bool(probe.affected(run, d).any())]
        if reach[u] and reach[u][0] in probed and not probe.output_changed(probe.run({u: rows}, clamp=reach[u][0])):
            owner[u] = reach[u][0]
    clusters = [(d, [u for u in probed if owner.get(u) == d]) for d in probed]
    packs: list[list] = []
    for d, ups in (c for c in clusters if c[1]):
        pack = next((p for p in packs if all(d2 not in reach[u] and d not in reach[u2] for d2, u2s in p
                                              for u in ups for u2 in u2s)), None)
        (pack.append((d, ups)) if pack is not None else packs.append([(d, ups)]))
    specs = []
    for pack in packs:
        for d, (rel, lin) in relation(probe, pack).items():
            specs += _groups_of(d, dict(pack)[d], probe.out_width, rel, lin)
    for kind, d, units, upstream, tie in list(specs):  # followers get their representative's groups
        for inst, rep in follow.items():
            if d.startswith(f"{rep}."):
                swap = (lambda n, i=inst, r=rep: f"{i}{n[len(r):]}" if n.startswith(f"{r}.") else n)
                specs.append((kind, swap(d), units, {swap(u): rows for u, rows in upstream.items()}, tie))
    groups, ties, taken = [], {}, set()
    for kind, d, units, upstream, tie in specs:
        parent = d.rsplit(".", 1)[0] if "." in d else ""
        name = f"{prefix}.{parent}:{kind}" if parent else f"{prefix}:{kind}"
        name = f"{prefix}.{d}:{kind}" if name in taken else name
        taken.add(name)
        groups.append(CoupledGroup(name=name, kind=kind, block=index, downstream=f"{prefix}.{d}", units=units,
                                   upstream={f"{prefix}.{u}": rows for u, rows in upstream.items()}))
        if tie:
            ties[name] = tie
    q = (lambda n: f"{prefix}.{n}")
    return BlockCoupling(index, prefix, tuple(groups), {q(u): q(d) for u, d in owner.items()},
                         {q(u): tuple(q(d) for d in ds) for u, ds in reach.items()}, ties, probe.forwards,
                         probe.backwards)


def derive_groups(model: nn.Module, adapter, index: int, sample_inputs=None, *,
                  kinds: Optional[Iterable[str]] = None, device=None) -> list[CoupledGroup]:
    """The coupled groups of block ``index`` derived from its computation (:func:`derive_coupling`), optionally
    only those of ``kinds``.

    Raises ModelError when a requested kind cannot be pruned in this block: its group has a single unit (the error
    names the rows that tie the units together and the groups that would work) or the block has no such group.
    """
    coupling = derive_coupling(model, adapter, index, sample_inputs, device=device)
    if kinds is None:
        return list(coupling.groups)
    kinds = {kinds} if isinstance(kinds, str) else set(kinds)
    chosen = [g for g in coupling.groups if g.kind in kinds]
    for family, members in FAMILIES.items():
        if not kinds & set(members):
            continue
        mine = [g for g in chosen if g.kind in members]
        tied = [g for g in mine if g.name in coupling.ties]
        if mine and not tied:
            continue
        works = [f"{g.kind} on {g.downstream} ({g.num_units} units)" for g in coupling.groups
                 if g.num_units > 1 and g.kind not in members]
        works_text = "; ".join(works) or "no coupled group of this block"
        if tied:
            g = tied[0]
            why = (f"cannot prune {g.kind} units in block {index} ({coupling.prefix}): {coupling.ties[g.name]}, so "
                   f"all input columns of {g.downstream} form one unit.")
        else:
            why = f"cannot prune {'/'.join(members)} units: block {index} ({coupling.prefix}) has none."
        raise ModelError(f"{why} What works here: {works_text}. Fix: choose one of those structures (e.g. "
                         f"attention='vo_channels' or 'none'), or prune with structure 'unstructured' or an N:M "
                         f"pattern such as '2:4'.")
    return chosen


__all__ = ["BlockCoupling", "FAMILIES", "SAMPLE_TOKENS", "derive_coupling", "derive_groups"]
