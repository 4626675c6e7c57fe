"""Layer-by-layer calibration: block inputs, per-module Gram statistics, and propagation (methods.md §2, §5.4).

Three pieces, used by :mod:`prunekit.models.runner`:

* :func:`capture_block_inputs` -- runs the model on the calibration windows (n_s, L) with a pre-hook on block 0
  that records its inputs and stops the forward pass (the "Catcher" of SparseGPT/Wanda, here a private
  exception): the hidden states X_0 (n_s windows of shape (1, L, d)) and the other call arguments
  (attention mask, position ids / rotary embeddings, cache flags), which every block receives unchanged.
* :func:`collect_grams` -- forward hooks on a block's linear modules stream their inputs into
  :class:`~prunekit.formulations.GramAccumulator` (G = sum_t x_t x_t^T, float64 on CPU / float32 on GPU).  With a
  second block ``star_block`` (the partially pruned copy) it pairs the dense inputs x_t with the inputs x*_t
  through the already pruned operators of the same block and accumulates G* and X X*^T too: FISTAPruner's
  intra-layer error correction, min ||W* X* - W X||^2 (methods.md §5.4).  The forward pass stops as soon as
  the requested modules have seen their input.
* :func:`forward_block` -- computes the next block's inputs X_{l+1} = block(X_l).

Memory: the caller moves **one** block (a copy) to the device; activations are stored on ``storage`` (CPU by
default), so device memory is O(one block + one window's activations) and the rest of the model stays on CPU.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Optional

import torch
from torch import nn

from ..formulations import GramAccumulator


class _StopForward(Exception):
    """Raised by calibration hooks to stop a forward pass once the needed inputs are recorded."""


@dataclass
class BlockInputs:
    """Inputs of one decoder block for every calibration window.

    hidden : list of Tensor, each (1, L, d) -- X_l, one entry per window (on the storage device).
    args, kwargs -- the block's other call arguments, recorded from window 0 (all windows share L).
    """

    hidden: list[torch.Tensor]
    args: tuple = ()
    kwargs: dict[str, Any] = field(default_factory=dict)

    def with_hidden(self, hidden: list[torch.Tensor]) -> "BlockInputs":
        return BlockInputs(hidden, self.args, self.kwargs)


def _to(value: Any, device, dtype: Optional[torch.dtype]) -> Any:
    if isinstance(value, torch.Tensor):
        if dtype is not None and value.is_floating_point():
            return value.to(device=device, dtype=dtype)
        return value.to(device=device)
    if isinstance(value, tuple):
        return tuple(_to(v, device, dtype) for v in value)
    if isinstance(value, list):
        return [_to(v, device, dtype) for v in value]
    if isinstance(value, dict):
        return {k: _to(v, device, dtype) for k, v in value.items()}
    return value


def _block_ids(blocks: Iterable[nn.Module]) -> set[int]:
    return {id(m) for block in blocks for m in block.modules()}


def _move_outside_blocks(model: nn.Module, blocks: nn.ModuleList, device) -> None:
    """Move every parameter/buffer that is not inside a block (embeddings, norms, rotary, head) to ``device``
    (meta tensors of an accelerate-offloaded model stay: their hooks bring them to the execution device)."""
    inside = _block_ids(blocks)
    for module in model.modules():
        if id(module) in inside:
            continue
        module._apply(lambda t: t if t.device.type == "meta" else t.to(device), recurse=False)


def capture_block_inputs(model: nn.Module, adapter, tokens: torch.Tensor, *, device="cpu",
                         dtype: Optional[torch.dtype] = None, storage="cpu") -> BlockInputs:
    """Inputs of block 0 for each window of ``tokens`` (n_s, L), computed on ``device``, stored on ``storage``.

    The model's parameters are back on their original device afterwards.
    """
    blocks = adapter.blocks(model)
    device = torch.device(device)
    original = next((p.device for p in model.parameters() if p.device.type != "meta"), torch.device("cpu"))
    record: dict[str, Any] = {}
    hidden: list[torch.Tensor] = []

    def catcher(module, args, kwargs):
        if args:
            h, rest = args[0], tuple(args[1:])
        else:
            kwargs = dict(kwargs)
            h, rest = kwargs.pop("hidden_states"), ()
        hidden.append(h.detach().to(device=storage, dtype=dtype or h.dtype))
        if "args" not in record:
            record["args"], record["kwargs"] = rest, {k: v for k, v in kwargs.items() if k != "hidden_states"}
        raise _StopForward

    handle = blocks[0].register_forward_pre_hook(catcher, with_kwargs=True)
    if device != original:
        _move_outside_blocks(model, blocks, device)
    try:
        with torch.no_grad():
            for window in tokens:
                try:
                    model(input_ids=window.reshape(1, -1).to(device), use_cache=False)
                except _StopForward:
                    pass
    finally:
        handle.remove()
        if device != original:
            _move_outside_blocks(model, blocks, original)
    if len(hidden) != len(tokens):
        raise RuntimeError("block 0 was not reached for every calibration window; is the adapter's block list right?")
    kwargs = dict(record.get("kwargs", {}))
    if "use_cache" in kwargs:
        kwargs["use_cache"] = False
    for key in ("past_key_value", "past_key_values", "layer_past"):
        if key in kwargs:
            kwargs[key] = None
    return BlockInputs(hidden, _to(record.get("args", ()), storage, dtype), _to(kwargs, storage, dtype))


def _call(block: nn.Module, h: torch.Tensor, inputs: BlockInputs, device, dtype) -> torch.Tensor:
    out = block(h.to(device=device, dtype=dtype), *_to(inputs.args, device, dtype), **_to(inputs.kwargs, device, dtype))
    return out[0] if isinstance(out, (tuple, list)) else out


def forward_block(block: nn.Module, inputs: BlockInputs, *, device, storage="cpu") -> BlockInputs:
    """X_{l+1} = block(X_l) for every window (the block must already be on ``device``)."""
    dtype = next(block.parameters()).dtype
    out = []
    with torch.no_grad():
        for h in inputs.hidden:
            out.append(_call(block, h, inputs, device, dtype).detach().to(storage))
    return inputs.with_hidden(out)


def collect_grams(block: nn.Module, inputs: BlockInputs, names: list[str], *, device,
                  gram_dtype: Optional[torch.dtype] = None, star_block: Optional[nn.Module] = None,
                  early_stop: bool = True) -> dict[str, GramAccumulator]:
    """Gram accumulators of the block's linear modules ``names`` (relative), one pass over the windows.

    Parameters
    ----------
    block : the dense block (targets W X), on ``device``.
    star_block : optional partially pruned copy of the block; when given, the accumulators also track
        G* = X* X*^T and X X*^T with X* its inputs (intra-layer error correction, methods.md §5.4).
    gram_dtype : float64 (default on CPU) or float32 (default on GPU).
    early_stop : stop each forward pass once every requested module has seen its input.
    """
    device = torch.device(device)
    gram_dtype = gram_dtype or (torch.float32 if device.type == "cuda" else torch.float64)
    dtype = next(block.parameters()).dtype
    track = star_block is not None
    modules = {n: block.get_submodule(n) for n in names}
    accs = {n: GramAccumulator(_in_features(m), dtype=gram_dtype, device=device, track_star=track)
            for n, m in modules.items()}

    def make_recorder(store: dict[str, torch.Tensor], want: int):
        def hook_for(name: str):
            def hook(module, args):
                store[name] = args[0].detach()
                if early_stop and len(store) == want:
                    raise _StopForward
            return hook
        return hook_for

    def run(model_block: nn.Module, h: torch.Tensor) -> dict[str, torch.Tensor]:
        store: dict[str, torch.Tensor] = {}
        rec = make_recorder(store, len(names))
        handles = [model_block.get_submodule(n).register_forward_pre_hook(rec(n)) for n in names]
        try:
            _call(model_block, h, inputs, device, dtype)
        except _StopForward:
            pass
        finally:
            for hd in handles:
                hd.remove()
        return store

    with torch.no_grad():
        for h in inputs.hidden:
            dense = run(block, h)
            star = run(star_block, h) if track else {}
            for n in names:
                if n not in dense:
                    raise RuntimeError(f"module {n!r} received no input during calibration; check the adapter stages.")
                accs[n].update(dense[n], star.get(n) if track else None)
    return accs


def _in_features(module: nn.Module) -> int:
    if hasattr(module, "in_features"):
        return int(module.in_features)
    if hasattr(module, "nx"):  # GPT-2 Conv1D (weight in x out)
        return int(module.nx)
    return int(module.weight.shape[1])


__all__ = ["BlockInputs", "capture_block_inputs", "collect_grams", "forward_block"]
