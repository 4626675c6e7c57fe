"""Module dependency graph of a decoder-only LM (design.md principle 12: pure structure, no mutation).

:func:`build_graph` returns an ``nx.DiGraph`` whose nodes are the linear modules of every decoder block
(qualified ``named_modules()`` names) plus two virtual nodes per block, ``"<block>:in"`` and ``"<block>:out"``
(the residual stream entering and leaving it).  Node attribute ``record`` holds a frozen :class:`NodeRecord`;
edge attribute ``record`` a frozen :class:`EdgeRecord` whose ``kind`` is

* ``"data"`` -- every path from the output of one linear module to the block output runs through the input of
  the next (q/k/v -> o, gate/up -> down, fc1 -> fc2): the dependency probe's *owner* edges;
* ``"residual"`` -- a module's output reaches the next through a residual add and a norm (residual in -> q/k/v,
  o -> gate/up, down -> out);
* ``"skip"`` -- the residual connection around the block (in -> out).

**The edges and the groups come from the block's computation**, not from names: ``derived_groups.block_coupling``
(the dependency probe of :mod:`prunekit.models.coupling`, once per block layout) says which modules' inputs each
module's output reaches; the edges are the transitive reduction of that relation (``u -> d`` when d's input is
reached from u and not only through another module reached from u), so parallel attention + MLP blocks (GPT-NeoX,
Falcon) get two independent branches.  ``graph.graph["groups"]`` holds the derived coupled groups -- the same
ones every adapter serves to the runner, surgery, allocation and saving (``FamilyAdapter.coupled_groups``).
:func:`coupled_groups` filters them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Optional

import networkx as nx
from torch import nn

from .adapters import adapter_for
from .groups import CoupledGroup


@dataclass(frozen=True)
class NodeRecord:
    """One node: a linear module (``role`` = its name inside the block) or a residual-stream endpoint."""

    name: str
    block: int
    role: str
    in_features: Optional[int] = None
    out_features: Optional[int] = None
    stage: Optional[int] = None


@dataclass(frozen=True)
class EdgeRecord:
    kind: str  # "data" | "residual" | "skip"


def _shape(adapter, module: nn.Module) -> tuple[int, int]:
    out_f, in_f = adapter.get_weight(module).shape
    return int(in_f), int(out_f)


def _reaches(coupling, prefix: str, names: list[str]) -> dict[str, set[str]]:
    """``{module: modules of names whose input it reaches}``; a module the probe did not run (an MoE expert that
    follows a probed sibling, one no token reached) takes the reach of a probed sibling with the same pattern,
    its own instance substituted."""
    from .families.generic import sibling_pattern  # ("mlp.experts.*", "mlp.experts.5", "w1") of "mlp.experts.5.w1"

    rel = (lambda name: name[len(prefix) + 1:])
    known = {u: set(ds) & set(names) for u, ds in coupling.reaches.items()}
    by_pattern = {}  # (sibling pattern, rest) -> a probed module
    for u in known:
        pattern, _, rest = sibling_pattern(rel(u))
        if pattern:
            by_pattern[(pattern, rest)] = u
    out = {}
    for n in names:
        pattern, instance, rest = sibling_pattern(rel(n))
        twin = by_pattern.get((pattern, rest)) if n not in known and pattern else None
        if twin is None:
            out[n] = known.get(n, set())
            continue
        inst, rep = f"{prefix}.{instance}", f"{prefix}.{sibling_pattern(rel(twin))[1]}"  # experts.5 <- experts.2
        out[n] = {inst + d[len(rep):] if d.startswith(f"{rep}.") else d for d in known[twin]} & set(names)
    return out


def build_graph(model: nn.Module) -> nx.DiGraph:
    """The dependency graph of ``model`` (see the module docstring); ``graph.graph`` holds ``family``,
    ``model_type``, ``num_blocks`` and ``groups`` (all derived coupled groups, in block order)."""
    from .derived_groups import block_coupling

    adapter = adapter_for(model)
    modules = dict(model.named_modules())
    g = nx.DiGraph(family=adapter.name, model_type=getattr(model.config, "model_type", None))
    groups: list[CoupledGroup] = []
    blocks = adapter.blocks(model)
    for i, block in enumerate(blocks):
        prefix = adapter.block_prefix(model, i)
        coupling = block_coupling(model, adapter, i)
        src, dst = f"{prefix}:in", f"{prefix}:out"
        g.add_node(src, record=NodeRecord(src, i, "residual_in"))
        g.add_node(dst, record=NodeRecord(dst, i, "residual_out"))
        g.add_edge(src, dst, record=EdgeRecord("skip"))
        stages = adapter.stages(block)
        names = [f"{prefix}.{rel}" for stage in stages for rel in stage]
        for s, stage in enumerate(stages):
            for rel in stage:
                name = f"{prefix}.{rel}"
                in_f, out_f = _shape(adapter, modules[name])
                g.add_node(name, record=NodeRecord(name, i, rel, in_f, out_f, s))
        reach = nx.DiGraph()
        reach.add_nodes_from(names)
        reach.add_edges_from((u, d) for u, ds in _reaches(coupling, prefix, names).items() for d in ds if d != u)
        direct = nx.transitive_reduction(reach) if nx.is_directed_acyclic_graph(reach) else reach
        for u, d in direct.edges:
            kind = "data" if coupling.owners.get(u) == d else "residual"
            g.add_edge(u, d, record=EdgeRecord(kind))
        for name in names:
            if direct.in_degree(name) == 0:
                g.add_edge(src, name, record=EdgeRecord("residual"))
            if direct.out_degree(name) == 0:
                g.add_edge(name, dst, record=EdgeRecord("residual"))
        groups.extend(coupling.groups)
    g.graph["num_blocks"] = len(blocks)
    g.graph["groups"] = tuple(groups)
    return g


def coupled_groups(graph_or_model, kinds: Optional[Iterable[str]] = None,
                   blocks: Optional[Iterable[int]] = None) -> list[CoupledGroup]:
    """Coupled groups of a graph (or of a model, building its graph), optionally filtered by kind and block."""
    graph = graph_or_model if isinstance(graph_or_model, nx.DiGraph) else build_graph(graph_or_model)
    kinds = None if kinds is None else ({kinds} if isinstance(kinds, str) else set(kinds))
    blocks = None if blocks is None else set(blocks)
    return [
        grp for grp in graph.graph["groups"]
        if (kinds is None or grp.kind in kinds) and (blocks is None or grp.block in blocks)
    ]


def linear_nodes(graph: nx.DiGraph) -> list[NodeRecord]:
    """Records of the linear-module nodes, in block and stage order."""
    return [d["record"] for _, d in graph.nodes(data=True) if d["record"].stage is not None]


__all__ = ["NodeRecord", "EdgeRecord", "build_graph", "coupled_groups", "linear_nodes"]
