"""Module dependency graph of a decoder-only LM (design.md principle 12: pure structure, no mutation).

:func:`build_graph` returns an ``nx.DiGraph`` whose nodes are the linear modules of every decoder block
(qualified ``named_modules()`` names) plus two virtual nodes per block, ``"<block>:in"`` and ``"<block>:out"``
(the residual stream entering and leaving it).  Node attribute ``record`` holds a frozen :class:`NodeRecord`;
edge attribute ``record`` a frozen :class:`EdgeRecord` whose ``kind`` is

* ``"data"`` -- the output of one linear module feeds the next stage directly (q/k/v -> o, gate/up -> down);
* ``"residual"`` -- through a residual add and a norm (residual in -> q/k/v, o -> gate/up, down -> out);
* ``"skip"`` -- the residual connection around the block (in -> out).

:func:`coupled_groups` returns the :class:`~prunekit.models.groups.CoupledGroup` list computed by the family
adapter when the graph was built (the groups are pure data and describe the module shapes at that time).
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


def build_graph(model: nn.Module) -> nx.DiGraph:
    """The dependency graph of ``model`` (see the module docstring); ``graph.graph`` holds ``family``,
    ``model_type``, ``num_blocks`` and ``groups`` (all coupled groups, in block order)."""
    adapter = adapter_for(model)
    modules = dict(model.named_modules())
    g = nx.DiGraph(family=adapter.name, model_type=getattr(model.config, "model_type", None))
    groups: list[CoupledGroup] = []
    blocks = adapter.blocks(model)
    for i, block in enumerate(blocks):
        prefix = adapter.block_prefix(model, i)
        src, dst = f"{prefix}:in", f"{prefix}:out"
        g.add_node(src, record=NodeRecord(src, i, "residual_in"))
        g.add_node(dst, record=NodeRecord(dst, i, "residual_out"))
        g.add_edge(src, dst, record=EdgeRecord("skip"))
        previous = [src]
        stages = adapter.stages(block)
        for s, stage in enumerate(stages):
            names = [f"{prefix}.{rel}" for rel in stage]
            for rel, name in zip(stage, names):
                in_f, out_f = _shape(adapter, modules[name])
                g.add_node(name, record=NodeRecord(name, i, rel, in_f, out_f, s))
                for p in previous:
                    kind = "residual" if p == src or s % 2 == 0 else "data"
                    g.add_edge(p, name, record=EdgeRecord(kind))
            previous = names
        for p in previous:
            g.add_edge(p, dst, record=EdgeRecord("residual"))
        groups.extend(adapter.coupled_groups(model, i))
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
