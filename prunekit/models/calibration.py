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
* :class:`NoStatistics` -- the stand-in for methods that read no calibration statistics (magnitude), for which
  the runner runs no calibration forward at all.

Only what a formulation declares is collected (``Formulation.statistics``, ``Method.statistics_basis``): the
full Gram (O(N n^2) per module), or its diagonal alone (``diagonal=True``: O(N n), what Wanda and FLAP read),
accumulated in the formulation's ``statistics_dtype`` (float32 unless it asks for float64).  Finiteness is
checked once per module when its statistics are frozen (``GramAccumulator.check_finite``), not per batch.

Padding (a :class:`~prunekit.calibration_set.CalibrationSet` with an ``attention_mask``): each padded window is
run with its mask (and position ids counted over its real tokens, ``cumsum(mask) - 1``), so no real token attends
a padded key and real tokens sit at the positions they would have without padding.  Such a window's block call
arguments (its 4-D attention mask, rotary embeddings ...) are recorded per window -- shared between windows
with the same mask -- in :class:`BlockInputs`.  Every position is propagated (windows keep length L; padded
positions are reset to 0 after each block so they stay finite), but only real tokens reach
``GramAccumulator.update``: the statistics of a padded window equal those of its unpadded tokens.

Memory: the caller moves **one** block (a copy) to the device; activations are stored on ``storage`` (CPU by
default), so device memory is O(one block + one window's activations) and the rest of the model stays on CPU.
"""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass, field
from typing import Any, Iterable, Optional, Union

import torch
from torch import nn

from ..calibration_set import CalibrationSet
from ..errors import ModelError
from ..formulations import GramAccumulator
from .linear_layers import in_features


class _StopForward(Exception):
    """Raised by calibration hooks to stop a forward pass once the needed inputs are recorded."""


@dataclass
class BlockInputs:
    """Inputs of one decoder block for every calibration window.

    hidden : list of Tensor, each (1, L, d) -- X_l, one entry per window (on the storage device).
    args, kwargs -- the block's other call arguments, shared by every window without padding (all windows share L).
    masks : None when no window is padded, else one entry per window: BoolTensor (L,) of its real tokens, or None
        for a window without padding.
    window_calls : ``{window: (args, kwargs)}`` -- the call arguments of each padded window (its own attention
        mask and positions); windows with the same mask share one entry.
    """

    hidden: list[torch.Tensor]
    args: tuple = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    masks: Optional[list[Optional[torch.Tensor]]] = None
    window_calls: dict[int, tuple[tuple, dict[str, Any]]] = field(default_factory=dict)

    def with_hidden(self, hidden: list[torch.Tensor]) -> "BlockInputs":
        return dataclasses.replace(self, hidden=hidden)

    def call_arguments(self, i: int) -> tuple[tuple, dict[str, Any]]:
        """(args, kwargs) of window ``i``'s block call."""
        return self.window_calls.get(i, (self.args, self.kwargs))

    def real_tokens(self, i: int) -> Optional[torch.Tensor]:
        """BoolTensor (L,) of window ``i``'s real tokens, or None when all are real."""
        return None if self.masks is None else self.masks[i]


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


def capture_block_inputs(model: nn.Module, adapter, tokens: Union[torch.Tensor, CalibrationSet], *, device="cpu",
                         dtype: Optional[torch.dtype] = None, storage="cpu") -> BlockInputs:
    """Inputs of block 0 for each window of ``tokens`` (a LongTensor (n_s, L) or a :class:`CalibrationSet`),
    computed on ``device``, stored on ``storage``.

    Padded windows of a CalibrationSet are run with their attention mask (and mask-counted position ids when the
    model's forward takes ``position_ids``); their block call arguments and masks are kept in the result.  The
    model's parameters are back on their original device afterwards.
    """
    calib = CalibrationSet.coerce(tokens)
    blocks = adapter.blocks(model)
    device = torch.device(device)
    original = next((p.device for p in model.parameters() if p.device.type != "meta"), torch.device("cpu"))
    calls: list[tuple[tuple, dict]] = []
    hidden: list[torch.Tensor] = []

    def catcher(module, args, kwargs):
        if args:
            h, rest = args[0], tuple(args[1:])
        else:
            kwargs = dict(kwargs)
            h, rest = kwargs.pop("hidden_states"), ()
        hidden.append(h.detach().to(device=storage, dtype=dtype or h.dtype))
        calls.append((rest, {k: v for k, v in kwargs.items() if k != "hidden_states"}))
        raise _StopForward

    takes_positions = "position_ids" in inspect.signature(model.forward).parameters
    handle = blocks[0].register_forward_pre_hook(catcher, with_kwargs=True)
    if device != original:
        _move_outside_blocks(model, blocks, device)
    shared: Optional[tuple] = None
    by_mask: dict[bytes, tuple] = {}
    window_calls: dict[int, tuple] = {}
    try:
        with torch.no_grad():
            for i, window in enumerate(calib.input_ids):
                mask = calib.window_mask(i)
                feed = {"input_ids": window.reshape(1, -1).to(device), "use_cache": False}
                if mask is not None:
                    feed["attention_mask"] = mask.reshape(1, -1).to(device=device, dtype=torch.long)
                    if takes_positions:
                        feed["position_ids"] = (mask.long().cumsum(-1) - 1).clamp(min=0).reshape(1, -1).to(device)
                try:
                    model(**feed)
                except _StopForward:
                    pass
                if not calls:  # block 0 was not reached
                    break
                args, kwargs = calls.pop()
                if mask is None:
                    if shared is None:
                        shared = _stored_call(args, kwargs, storage, dtype)
                    continue
                key = mask.numpy().tobytes()
                if key not in by_mask:
                    by_mask[key] = _stored_call(args, kwargs, storage, dtype)
                window_calls[i] = by_mask[key]
    finally:
        handle.remove()
        if device != original:
            _move_outside_blocks(model, blocks, original)
    if len(hidden) != len(calib):
        raise RuntimeError("block 0 was not reached for every calibration window; is the adapter's block list right?")
    if shared is None:  # every window is padded: no shared call is ever used
        shared = next(iter(window_calls.values()))
    masks = None if not calib.padded else [calib.window_mask(i) for i in range(len(calib))]
    return BlockInputs(hidden, shared[0], shared[1], masks, window_calls)


def _stored_call(args: tuple, kwargs: dict[str, Any], storage, dtype) -> tuple[tuple, dict[str, Any]]:
    kwargs = dict(kwargs)
    if "use_cache" in kwargs:
        kwargs["use_cache"] = False
    for key in ("past_key_value", "past_key_values", "layer_past"):
        if key in kwargs:
            kwargs[key] = None
    return _to(args, storage, dtype), _to(kwargs, storage, dtype)


CUDA_BATCH_TOKENS = 8192
"""Tokens per batched block call on CUDA.  On CPU each window is its own call: batching 1, 4 or 8 windows of 512
tokens through a SmolLM2 block took the same time at 2 threads (0.83-1.01 s for 32 windows, run to run noise), and
one window keeps the activation memory smallest."""


def window_batches(inputs: BlockInputs, device, batch_tokens: Optional[int] = None) -> list[list[int]]:
    """Window indices grouped into block calls: consecutive windows that share the common call arguments (no
    padding), at most ``max(1, batch_tokens // L)`` per call; each padded window is a call of its own (it has its
    own attention mask).  ``batch_tokens`` None: :data:`CUDA_BATCH_TOKENS` on CUDA, one window per call elsewhere."""
    if not inputs.hidden:
        return []
    if batch_tokens is None:
        batch_tokens = CUDA_BATCH_TOKENS if torch.device(device).type == "cuda" else 0
    per_call = max(1, int(batch_tokens) // max(1, int(inputs.hidden[0].shape[-2])))
    groups: list[list[int]] = []
    for i in range(len(inputs.hidden)):
        shared = inputs.real_tokens(i) is None and i not in inputs.window_calls
        if shared and groups and len(groups[-1]) < per_call and groups[-1][-1] + 1 == i and \
                inputs.real_tokens(groups[-1][-1]) is None and groups[-1][-1] not in inputs.window_calls:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


def _call(block: nn.Module, inputs: BlockInputs, group: list[int], device, dtype) -> torch.Tensor:
    """block(X) for the windows ``group`` stacked along the batch dimension: (len(group), L, d)."""
    args, kwargs = inputs.call_arguments(group[0])
    h = torch.cat([inputs.hidden[i] for i in group]) if len(group) > 1 else inputs.hidden[group[0]]
    out = block(h.to(device=device, dtype=dtype), *_to(args, device, dtype), **_to(kwargs, device, dtype))
    return out[0] if isinstance(out, (tuple, list)) else out


def forward_block(block: nn.Module, inputs: BlockInputs, *, device, storage="cpu",
                  batch_tokens: Optional[int] = None) -> BlockInputs:
    """X_{l+1} = block(X_l) for every window (the block must already be on ``device``), in batched calls
    (:func:`window_batches`); padded positions of padded windows are set to 0 (real tokens never attend them)."""
    dtype = next(block.parameters()).dtype
    out: list[torch.Tensor] = []
    with torch.no_grad():
        for group in window_batches(inputs, device, batch_tokens):
            out.extend(_window_outputs(_call(block, inputs, group, device, dtype).detach(), inputs, group, storage))
    return inputs.with_hidden(out)


def _window_outputs(ys: torch.Tensor, inputs: BlockInputs, group: list[int], storage) -> list[torch.Tensor]:
    """The per-window block outputs (1, L, d) of a batched call, on ``storage``, padded positions set to 0."""
    out = []
    for k, i in enumerate(group):
        y = ys[k:k + 1]
        real = inputs.real_tokens(i)
        if real is not None:
            y = torch.where(real.to(y.device).reshape(1, -1, 1), y, torch.zeros((), dtype=y.dtype, device=y.device))
        out.append(y.to(storage).clone() if len(group) > 1 else y.to(storage))
    return out


def collect_grams(block: nn.Module, inputs: BlockInputs, names: list[str], *, device,
                  gram_dtype: Optional[torch.dtype] = None, star_block: Optional[nn.Module] = None,
                  early_stop: bool = True, diagonal: bool = False, batch_tokens: Optional[int] = None,
                  allow_unreached: bool = False, outputs: Optional[list] = None,
                  storage="cpu") -> dict[str, GramAccumulator]:
    """Gram accumulators of the block's linear modules ``names`` (relative), one pass over the windows.

    Parameters
    ----------
    block : the dense block (targets W X), on ``device``.
    star_block : optional partially pruned copy of the block; when given, the accumulators also track
        G* = X* X*^T and X X*^T with X* its inputs (intra-layer error correction, methods.md §5.4).
    gram_dtype : float64 (default on CPU) or float32 (default on GPU); the runner passes the method's
        ``statistics_dtype``.
    early_stop : stop each forward pass once every requested module has seen its input.
    diagonal : accumulate only diag G and the input sum (``GramAccumulator(diagonal=True)``).
    batch_tokens : windows per block call (:func:`window_batches`).
    allow_unreached : a module that gets no input in a window (an MoE expert no token of it was routed to) is
        skipped for that window instead of raising; one that never gets any keeps ``num_tokens == 0``.  Early
        stopping is off then (the hooks cannot know which experts a window reaches).
    outputs : a list that receives block(X_l) of every window (on ``storage``, padded positions zeroed, as
        :func:`forward_block` gives them): the same pass then yields the next block's dense inputs (the ``dense``
        mode's stream), so a dense-input run makes one forward per block instead of two.  Early stopping is off.
    """
    device = torch.device(device)
    gram_dtype = gram_dtype or (torch.float32 if device.type == "cuda" else torch.float64)
    dtype = next(block.parameters()).dtype
    track = star_block is not None
    early_stop = early_stop and not allow_unreached and outputs is None
    modules = {n: block.get_submodule(n) for n in names}
    accs = {n: GramAccumulator(in_features(m), dtype=gram_dtype, device=device, track_star=track,
                               diagonal=diagonal) for n, m in modules.items()}

    def make_recorder(store: dict[str, torch.Tensor], want: int):
        def hook_for(name: str):
            def hook(module, args):
                store[name] = args[0]  # the object itself (no grad here): modules fed the same tensor share sums
                if early_stop and len(store) == want:
                    raise _StopForward
            return hook
        return hook_for

    def run(model_block: nn.Module, group: list[int], keep: Optional[list] = None) -> dict[str, torch.Tensor]:
        store: dict[str, torch.Tensor] = {}
        rec = make_recorder(store, len(names))
        handles = [model_block.get_submodule(n).register_forward_pre_hook(rec(n)) for n in names]
        try:
            ys = _call(model_block, inputs, group, device, dtype)
            if keep is not None:
                keep.extend(_window_outputs(ys.detach(), inputs, group, storage))
        except _StopForward:
            pass
        finally:
            for hd in handles:
                hd.remove()
        return store

    # Modules fed the very same tensor (q/k/v, gate/up) share one accumulation: ``alias[n] = source`` while n's
    # input has been its source's in every call so far; a call that breaks this gives n a copy of the source's sums
    # (which are then exactly n's) before anything of that call is added.  Aliases get their copies at the end.
    alias: dict[str, str] = {}
    with torch.no_grad():
        for number, group in enumerate(window_batches(inputs, device, batch_tokens)):
            dense = run(block, group, outputs)
            star = run(star_block, group) if track else {}
            real = inputs.real_tokens(group[0])  # None for a batch of several windows
            present = []
            for n in names:
                if n not in dense or (track and n not in star):
                    if allow_unreached:
                        continue
                    raise RuntimeError(f"module {n!r} received no input during calibration; check the adapter stages.")
                present.append(n)
            same_as = _same_input(present, dense, star if track else None)
            for n, source in list(alias.items()):
                if same_as.get(n) != source:
                    accs[n] = accs[source].copy()
                    del alias[n]
            if number == 0:
                alias = dict(same_as)
            for n in present:
                if n in alias:
                    continue
                x, xs = dense[n], star.get(n) if track else None
                if xs is not None and xs.shape != x.shape:
                    raise ModelError(
                        f"module {n!r} sees {x.shape[:-1].numel()} tokens in the dense block but "
                        f"{xs.shape[:-1].numel()} in the partially pruned one (an MoE router sends tokens elsewhere "
                        f"once earlier operators are pruned), so X and X* do not pair up. Fix: calibration mode "
                        f"'propagated' or 'dense' for mixture-of-experts models.")
                if real is not None:
                    x = _real_rows(x, real, n)
                    xs = None if xs is None else _real_rows(xs, real, n)
                accs[n].update(x, xs)
    for n, source in alias.items():
        accs[n] = accs[source].copy()
    return accs


def _same_input(names: list[str], dense: dict[str, torch.Tensor],
                star: Optional[dict[str, torch.Tensor]]) -> dict[str, str]:
    """``{name: first earlier name that received the identical tensor(s)}`` for one call (object identity)."""
    first: dict[tuple[int, int], str] = {}
    same: dict[str, str] = {}
    for n in names:
        key = (id(dense[n]), id(star[n]) if star is not None else 0)
        if key in first:
            same[n] = first[key]
        else:
            first[key] = n
    return same


class NoStatistics:
    """The statistics of a method that reads none (``Formulation.statistics`` empty: magnitude).

    ``layer_data`` gives the layer with diagonal statistics G := I and N = 1, so the reported objective is the
    weight-space error 1/2 ||W_hat - W||_F^2 (``LayerRecord.statistics == "none"``); no calibration input exists.
    """

    def __init__(self, in_features: int):
        self.in_features = int(in_features)

    def layer_data(self, weight: torch.Tensor, *, bias=None, damping: float = 0.01, **_: Any):
        from ..formulations import LayerData

        ones = torch.ones(self.in_features, dtype=torch.float32, device=weight.device)
        return LayerData(weight=weight, gram=ones, num_tokens=1, bias=bias, damping=damping)


def _real_rows(x: torch.Tensor, real: torch.Tensor, name: str) -> torch.Tensor:
    """The rows of a module input (1, L, d) at the window's real tokens: (k, d)."""
    flat = x.reshape(-1, x.shape[-1])
    if flat.shape[0] != real.numel():
        raise ModelError(f"module {name!r} sees {flat.shape[0]} input rows for a window of {real.numel()} tokens, so "
                         f"its padding cannot be masked out. Fix: calibrate this model on unpadded windows (a "
                         f"LongTensor, or text sources).")
    return flat[real.to(flat.device)]




__all__ = ["BlockInputs", "CalibrationSet", "NoStatistics", "capture_block_inputs", "collect_grams", "forward_block"]
