"""Family adapters: the architecture knowledge of prunekit, one adapter per model family.

An adapter answers, for one family (LLaMA-like, Gemma, OPT, GPT-2), what a dependency graph cannot know:

* where the decoder blocks are, and which linear modules each block has, in execution order grouped into
  *stages* of operators that share an input (``[[q, k, v], [o], [gate, up], [down]]``) -- the order
  FISTAPruner's intra-layer error correction follows (methods.md §5.4);
* how to read and write a module's weight in PyTorch layout (out x in) -- GPT-2's Conv1D stores in x out;
* how to fix the config after units are removed (``intermediate_size``, heads, KV heads, head_dim), which
  users never do by hand.

The coupled groups of a block (``prunekit.models.groups.CoupledGroup``) are *not* family knowledge: every adapter
serves the groups derived from the block's computation (:meth:`FamilyAdapter.coupled_groups`,
``prunekit.models.derived_groups``: the dependency probe, once per block layout).  A family module holds its
layout and its config fix-up only (``families/opt.py``: the smallest).

Adapters are registered with :func:`register_family` and found by :func:`adapter_for` from the model's
``config.model_type``; an unsupported architecture raises :class:`~prunekit.errors.ModelError` listing the
supported ones.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Callable

import torch
from torch import nn

from ..errors import ModelError
from .groups import CoupledGroup
from .linear_layers import weight_of, write_weight_


class FamilyAdapter(ABC):
    """Architecture knowledge for one model family (stateless)."""

    name: str = ""
    model_types: tuple[str, ...] = ()
    groups_per_block: bool = False
    """True when the adapter keeps, per block, the groups the block was pruned with (the generic adapter); False
    when :meth:`coupled_groups` describes each block's current shapes (derived once per layout, on demand)."""

    @abstractmethod
    def blocks(self, model: nn.Module) -> nn.ModuleList:
        """The decoder blocks, in order."""

    @abstractmethod
    def block_prefix(self, model: nn.Module, index: int) -> str:
        """Qualified name of block ``index`` in ``model.named_modules()`` (e.g. ``"model.layers.3"``)."""

    @abstractmethod
    def stages(self, block: nn.Module) -> list[list[str]]:
        """Linear-module names relative to the block, grouped by shared input, in execution order."""

    def coupled_groups(self, model: nn.Module, index: int) -> list[CoupledGroup]:
        """Coupled groups of block ``index`` (qualified module names), derived from the block's computation
        (``prunekit.models.derived_groups.block_coupling``: probed once per block layout, so they describe the
        block's current shapes, pruned or not)."""
        from .derived_groups import block_coupling

        return list(block_coupling(model, self, index).groups)

    def derive_groups_(self, model: nn.Module, index: int, sample_inputs=None) -> list[CoupledGroup]:
        """Derive block ``index``'s groups on ``sample_inputs`` (the runner passes the block's calibration inputs,
        a ``calibration.BlockInputs``) unless its layout is known; returns them (as :meth:`coupled_groups`)."""
        from .derived_groups import block_coupling

        return list(block_coupling(model, self, index, sample_inputs).groups)

    def linear_names(self, block: nn.Module) -> list[str]:
        return [n for stage in self.stages(block) for n in stage]

    def get_weight(self, module: nn.Module) -> torch.Tensor:
        """The module's weight in (out, in) layout (a view for nn.Linear, a transpose for Conv1D)."""
        return weight_of(module)

    def set_weight(self, module: nn.Module, weight: torch.Tensor) -> None:
        """Write an (out, in) weight into the module in place (same shape)."""
        write_weight_(module, weight)

    def fix_block(self, model: nn.Module, index: int) -> None:
        """Update per-module attributes (head counts, widths) of block ``index`` from its current shapes."""

    def fix_config(self, model: nn.Module) -> None:
        """Update ``model.config`` after surgery so it describes the new shapes."""


_FAMILIES: list[FamilyAdapter] = []


def register_family(adapter_cls: type[FamilyAdapter]) -> type[FamilyAdapter]:
    _FAMILIES.append(adapter_cls())
    return adapter_cls


def supported_model_types() -> list[str]:
    _load_families()
    return sorted({t for a in _FAMILIES for t in a.model_types})


def _load_families() -> None:
    from . import families  # noqa: F401  (modules register themselves on import)


def adapter_for(model_or_type) -> FamilyAdapter:
    """The adapter for a model (or a ``config.model_type`` string)."""
    _load_families()
    if isinstance(model_or_type, str):
        model_type = model_or_type
    else:
        config = getattr(model_or_type, "config", None)
        model_type = getattr(config, "model_type", None) or type(model_or_type).__name__
    for adapter in _FAMILIES:
        if model_type in adapter.model_types:
            return adapter
    if not isinstance(model_or_type, str):
        from .families.generic import generic_adapter, is_causal_lm

        if is_causal_lm(model_or_type):  # unstructured / N:M for any causal LM; channels raise its clear error
            return generic_adapter(model_or_type)
    raise ModelError(
        f"unsupported architecture {model_type!r}. Supported model types: {', '.join(supported_model_types())}. "
        f"Fix: add a FamilyAdapter in prunekit/models/families/ and register it with @register_family."
    )


AdapterFactory = Callable[[], FamilyAdapter]
