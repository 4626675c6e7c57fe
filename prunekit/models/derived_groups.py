"""The coupled groups every adapter serves: derived from each block's computation, once per block layout.

Runner, surgery, allocation, saving and :func:`prunekit.models.graph.build_graph` ask an adapter for the coupled
groups of block ``i`` (``FamilyAdapter.coupled_groups``); the answer comes from here, never from hand-written
tables: :func:`block_coupling` runs the dependency probe of :mod:`prunekit.models.coupling` on the block and keeps
the result for every block of the same **layout** in the same model.

A layout is the block's class and the (name, type, (out, in) shape) of each of its linear modules.  Blocks of one
model with one layout run the same code on the same shapes, so their couplings are equal up to the block prefix
(the probe is structural: which rows reach which columns, never the weight values).  A pruned block has new
shapes, hence a new layout, and is probed again when asked: its groups describe the shapes it has.  Cost: one
probe per layout (one for a dense model: 56-110 forwards of a 16-token window for the tiny test models, ~600 for a
7B LLaMA block, see ``coupling``), where hand-written tables cost nothing -- paid once per run.

**Sample inputs.**  The runner warms the cache with each block's real calibration inputs
(:func:`block_coupling` with ``sample_inputs``); the call arguments of the last window used (position embeddings,
masks) are kept per model, so a layout first met later -- a pruned block, a block of a lazily loaded model whose
other blocks sit on the meta device -- is probed with a random hidden state of that window's shape and those
arguments.  A model never seen runs a random token window through its own forward (``coupling.SAMPLE_TOKENS``),
which needs the model in memory.
"""

from __future__ import annotations

import weakref
from dataclasses import replace
from typing import Optional

import torch
from torch import nn

from .coupling import BlockCoupling, derive_coupling
from .linear_layers import linear_kind, weight_of


def block_layout(block: nn.Module) -> tuple:
    """What identifies a block layout: its class and the name, type and (out, in) shape of each linear module."""
    return type(block).__qualname__, tuple(
        (name, type(m).__name__, tuple(weight_of(m).shape)) for name, m in block.named_modules()
        if name and linear_kind(m) is not None)


class _ModelCouplings:
    """One model's derived couplings: layout -> the coupling of the first block probed, and the last sample."""

    def __init__(self):
        self.by_layout: dict[tuple, BlockCoupling] = {}
        self.sample: Optional[tuple] = None  # (hidden (1, L, H) on the probe device, args, kwargs)


_CACHE: "weakref.WeakKeyDictionary[nn.Module, _ModelCouplings]" = weakref.WeakKeyDictionary()


def _renamed(name: str, old: str, new: str) -> str:
    return new + name[len(old):] if name == old or name.startswith((f"{old}.", f"{old}:")) else name


def _moved(coupling: BlockCoupling, prefix: str, index: int) -> BlockCoupling:
    """``coupling`` (probed on another block of the same layout) stated for block ``index`` at ``prefix``."""
    if coupling.prefix == prefix and coupling.block == index:
        return coupling
    old = coupling.prefix

    def q(n: str) -> str:
        return _renamed(n, old, prefix)

    groups = tuple(replace(g, name=q(g.name), block=index, downstream=q(g.downstream),
                           upstream={q(u): rows for u, rows in g.upstream.items()}) for g in coupling.groups)
    return replace(coupling, block=index, prefix=prefix, groups=groups,
                   owners={q(u): q(d) for u, d in coupling.owners.items()},
                   reaches={q(u): tuple(q(d) for d in ds) for u, ds in coupling.reaches.items()},
                   ties={q(n): why for n, why in coupling.ties.items()})


def _first_window(sample_inputs) -> Optional[tuple]:
    """``(hidden (1, L, H), args, kwargs)`` of window 0 of a ``calibration.BlockInputs`` (else None)."""
    from .calibration import BlockInputs

    if isinstance(sample_inputs, BlockInputs):
        args, kwargs = sample_inputs.call_arguments(0)
        return sample_inputs.hidden[0][:1], args, kwargs
    if isinstance(sample_inputs, tuple) and len(sample_inputs) == 3:
        return sample_inputs
    return None


def keep_sample(model: nn.Module, sample_inputs) -> None:
    """Keep window 0 of ``sample_inputs`` (a ``calibration.BlockInputs``) for the probes of ``model``'s layouts not
    yet met (module docstring); no probe runs."""
    window = _first_window(sample_inputs)
    if window is not None:
        _CACHE.setdefault(model, _ModelCouplings()).sample = window


def block_coupling(model: nn.Module, adapter, index: int, sample_inputs=None, *, device=None) -> BlockCoupling:
    """The coupling of block ``index`` (``coupling.BlockCoupling``: groups, data edges, ties), probed once per
    block layout of ``model`` (module docstring).  ``sample_inputs`` as for ``coupling.derive_coupling``; None
    uses the call arguments kept from an earlier sample of this model, else a random token window."""
    block = adapter.blocks(model)[index]
    prefix = adapter.block_prefix(model, index)
    keep_sample(model, sample_inputs)
    known = _CACHE.setdefault(model, _ModelCouplings())
    layout = block_layout(block)
    if layout not in known.by_layout:
        if sample_inputs is None and known.sample is not None:
            hidden, args, kwargs = known.sample
            generator = torch.Generator().manual_seed(0)
            noise = torch.randn(hidden.shape, generator=generator, dtype=torch.float64)
            sample_inputs = (noise.to(device=hidden.device, dtype=hidden.dtype) * hidden.float().std().clamp(min=1e-3)
                             .to(hidden.dtype), args, kwargs)
        known.by_layout[layout] = derive_coupling(model, adapter, index, sample_inputs, device=device)
    return _moved(known.by_layout[layout], prefix, index)


def forget_couplings(model: nn.Module) -> None:
    """Drop what :func:`block_coupling` kept for ``model`` (tests; a model whose code was patched in place)."""
    _CACHE.pop(model, None)


__all__ = ["block_coupling", "block_layout", "forget_couplings", "keep_sample"]
