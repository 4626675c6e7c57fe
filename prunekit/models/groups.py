"""Coupled groups: sets of weight slices that must be removed together (pure data).

A :class:`CoupledGroup` describes one prunable structure of one block, e.g. the GLU MLP channels of block 3:

* ``downstream`` -- the module whose **input columns** are selected (down_proj, fc2, o_proj); the pruning
  formulation is stated on it (its Gram matrix is the Gram of those columns);
* ``units`` -- the removable units; unit ``u`` removes the downstream columns ``units[u]`` (so a unit is a
  single channel for an MLP, ``head_dim`` columns for an attention head, and for a GQA group the columns of all
  its query heads);
* ``upstream`` -- for each upstream module, unit ``u`` removes its output rows ``upstream[name][u]`` (gate/up
  rows, fc1 rows and bias entries, v_proj rows, q/k/v rows of a head).

Removing a unit deletes the downstream columns and every upstream row of that unit; the block output is then
identical to the one with those downstream columns zeroed (methods.md claim C2).  Groups are frozen and
computed by pure functions of the model structure; only ``prunekit.models.surgery`` edits modules.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Mapping

GroupKind = Literal["glu_channel", "ffn_channel", "attention_head", "gqa_group", "vo_channel"]


@dataclass(frozen=True)
class CoupledGroup:
    """One coupled structure of one block.

    Attributes
    ----------
    name : str
        Unique id, e.g. ``"model.layers.3.mlp:glu_channel"``.
    kind : GroupKind
    block : int
        Index of the decoder block.
    downstream : str
        Qualified module name (``model.named_modules()`` key) whose input columns the units select.
    units : tuple of tuple of int
        ``units[u]`` = downstream input columns of unit u (disjoint).
    upstream : mapping str -> tuple of tuple of int
        ``upstream[module][u]`` = output rows of ``module`` removed with unit u.
    unit_size : int
        Parameters-per-unit bookkeeping helper: number of downstream columns per unit.
    """

    name: str
    kind: GroupKind
    block: int
    downstream: str
    units: tuple[tuple[int, ...], ...]
    upstream: Mapping[str, tuple[tuple[int, ...], ...]] = field(default_factory=dict)

    @property
    def num_units(self) -> int:
        return len(self.units)

    @property
    def unit_size(self) -> int:
        return len(self.units[0]) if self.units else 0

    def columns_of(self, kept_units) -> list[int]:
        """Downstream columns kept when ``kept_units`` are kept (sorted)."""
        return sorted(c for u in kept_units for c in self.units[u])

    def rows_of(self, module: str, kept_units) -> list[int]:
        """Rows of upstream ``module`` kept when ``kept_units`` are kept (sorted)."""
        return sorted(r for u in kept_units for r in self.upstream[module][u])
