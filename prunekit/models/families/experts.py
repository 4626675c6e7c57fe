"""Fused mixture-of-experts weights as linear layers, and back (used by the generic adapter).

transformers >= 5 stores the experts of Mixtral, Qwen2-MoE ... as one 3-D parameter per projection
(``gate_up_proj`` (E, 2I, H) = [gate; up] per expert, ``down_proj`` (E, H, I)), not as ``nn.Linear`` modules, so
unstructured / N:M pruning would not reach them.  :func:`unfuse_experts_` rewrites such a module in place as a
:class:`LinearExperts` -- one ``gate_up_proj`` / ``down_proj`` linear pair per expert with the same forward
(checked on a random routing that hits every expert before the swap), weights shared with the fused tensors --
and :func:`fuse_experts_` stacks the (pruned) weights back into the original module, whose state-dict names stock
``from_pretrained`` loads.

**Channel-pruned experts** (``prunekit.models.families.expert_channels``) are fused back smaller, under two rules
:meth:`LinearExperts.fused` guarantees:

* *one width*: every expert of the module has the same number of channels (a 3-D parameter holds one ``I``);
  otherwise it raises one :class:`~prunekit.errors.ModelError` and changes nothing;
* *aligned width*: a width that pruning made narrower than the original and that is not a multiple of
  :data:`EXPERT_WIDTH_MULTIPLE` is zero-padded up to one -- zero gate and up rows and zero down columns, so each
  padded channel adds ``down[:, j] * act(0) * 0 = 0`` (exact for any activation).  Why: transformers' default
  experts kernel (``grouped_mm``, torch 2.13 on CPU and CUDA) refuses rows whose stride is not a multiple of 16
  bytes ("strides should be multiple of 16 bytes"), i.e. 8 bfloat16 / float16 or 4 float32 elements, so a
  stock Mixtral with ``intermediate_size`` 34 cannot run.  8 covers float32, bfloat16 and float16 (an output
  saved in float32 and loaded in bfloat16 still runs).  Padding costs at most 7 channels per expert; a recipe
  with ``round_to`` a multiple of 8 never pads.  The module's ``intermediate_dim`` (read by some kernels) is
  set to the new width, and its ``prunekit_padding`` to ``(kept, padded)`` widths (None without padding).
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Optional

import torch
from torch import nn

from ...errors import ModelError

EXPERT_WIDTH_MULTIPLE = 8
"""Channel-pruned fused experts are zero-padded to a multiple of this width (module docstring: 16-byte rows)."""


def _fused_expert_params(module: nn.Module) -> dict[str, tuple[int, ...]]:
    """Parameters of ``module`` itself with 3 or more dimensions (fused experts: one slice per expert)."""
    return {n: tuple(p.shape) for n, p in module.named_parameters(recurse=False) if p.dim() >= 3}


class ExpertMLP(nn.Module):
    """One expert of a fused experts module as linear layers: ``gate_up_proj`` (H -> 2I, [gate; up]) and
    ``down_proj`` (I -> H); its weights are views of the fused parameters when unfused (no copy)."""

    def __init__(self, gate_up: torch.Tensor, down: torch.Tensor, requires_grad: bool):
        super().__init__()
        self.gate_up_proj = nn.Linear(gate_up.shape[1], gate_up.shape[0], bias=False, device="meta")
        self.down_proj = nn.Linear(down.shape[1], down.shape[0], bias=False, device="meta")
        self.gate_up_proj.weight = nn.Parameter(gate_up, requires_grad=requires_grad)
        self.down_proj.weight = nn.Parameter(down, requires_grad=requires_grad)


class LinearExperts(nn.ModuleList):
    """A fused experts module (``gate_up_proj`` (E, 2I, H), ``down_proj`` (E, H, I), ``act_fn``) rewritten as
    one :class:`ExpertMLP` per expert, with the same forward ``(hidden_states, top_k_index, top_k_weights)``:
    each expert runs its linear layers on the tokens routed to it, so hooks see every expert's inputs.

    :func:`fuse_experts_` turns it back into the original module (with the current weights)."""

    def __init__(self, fused: nn.Module):
        gate_up, down = fused.gate_up_proj, fused.down_proj
        super().__init__(ExpertMLP(gate_up.data[e], down.data[e], gate_up.requires_grad)
                         for e in range(gate_up.shape[0]))
        self.__dict__["act_fn"] = fused.act_fn  # not a submodule: the list holds the experts only
        # the original module, without its weights (fuse_experts_ gives them back): not a submodule
        self.__dict__["_fused_module"] = fused
        self.__dict__["_full_width"] = int(down.shape[-1])  # the original I (padding applies only below it)
        for name in ("gate_up_proj", "down_proj"):
            setattr(fused, name, nn.Parameter(torch.empty(0, device="meta"), requires_grad=False))

    def forward(self, hidden_states: torch.Tensor, top_k_index: torch.Tensor,
                top_k_weights: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(hidden_states)
        with torch.no_grad():
            mask = nn.functional.one_hot(top_k_index, num_classes=len(self)).permute(2, 1, 0)  # (E, k, T)
            hit = torch.greater(mask.sum(dim=(-1, -2)), 0).nonzero()
        for (e,) in hit.tolist():
            pos, token = torch.where(mask[e])
            gate, up = self[e].gate_up_proj(hidden_states[token]).chunk(2, dim=-1)
            h = self[e].down_proj(self.act_fn(gate) * up) * top_k_weights[token, pos, None]
            out.index_add_(0, token, h.to(out.dtype))
        return out

    def widths(self) -> tuple[int, ...]:
        """Channels (``I``) of each expert, in expert order."""
        return tuple(int(expert.down_proj.weight.shape[1]) for expert in self)

    def common_width(self) -> int:
        """The experts' common number of channels.

        Raises ModelError (naming why and the fix) when the experts have different widths, or when a gate_up
        projection does not hold two rows (gate and up) per down_proj column."""
        widths = self.widths()
        if len(set(widths)) != 1:
            raise ModelError(f"cannot fuse experts of different widths {list(widths)} back into one 3-D parameter: "
                             f"every expert of an MoE block must keep the same number of channels. Fix: prune every "
                             f"expert at the same ratio (allocation='uniform', no per-group ratios for experts), or "
                             f"prune with structure 'unstructured' or an N:M pattern such as '2:4'.")
        width = widths[0]
        rows = sorted({int(expert.gate_up_proj.weight.shape[0]) for expert in self})
        if rows != [2 * width]:
            raise ModelError(f"cannot fuse experts back: gate_up_proj keeps {rows} rows for {width} down_proj columns "
                             f"(expected {2 * width}: rows j and I + j per channel j), so the channel groups were "
                             f"not those of this expert layout. Fix: derive the groups on the unfused experts of "
                             f"this model (GenericAdapter.derive_groups_), or prune with structure 'unstructured'.")
        return width

    def fused(self) -> nn.Module:
        """The original module with the current expert weights stacked back (E, 2W, H) and (E, H, W).

        ``W`` is the experts' common width, zero-padded up to a multiple of :data:`EXPERT_WIDTH_MULTIPLE` when
        pruning made it narrower than the original (module docstring); the kept channels come first, in order.

        Raises the ModelError of :meth:`common_width` (nothing is changed)."""
        width = self.common_width()
        target, full = width, self.__dict__.get("_full_width", width)
        if width < full and width % EXPERT_WIDTH_MULTIPLE:
            target = min(full, -(-width // EXPERT_WIDTH_MULTIPLE) * EXPERT_WIDTH_MULTIPLE)
        gate_up, down = [], []
        for expert in self:
            gu, d = expert.gate_up_proj.weight.detach(), expert.down_proj.weight.detach()
            if target != width:
                pad = gu.new_zeros(target - width, gu.shape[1])
                gu = torch.cat([gu[:width], pad, gu[width:], pad])  # [gate; 0; up; 0]
                d = torch.cat([d, d.new_zeros(d.shape[0], target - width)], dim=1)
            gate_up.append(gu)
            down.append(d)
        fused = self.__dict__["_fused_module"]
        fused.gate_up_proj = nn.Parameter(torch.stack(gate_up), requires_grad=self[0].gate_up_proj.weight.requires_grad)
        fused.down_proj = nn.Parameter(torch.stack(down), requires_grad=self[0].down_proj.weight.requires_grad)
        if isinstance(getattr(fused, "intermediate_dim", None), int):
            fused.intermediate_dim = target
        fused.prunekit_padding = (width, target) if target != width else None  # read by export's notes
        return fused.to(device=self[0].down_proj.weight.device)


def _fusable(module: nn.Module) -> Optional[str]:
    """None when ``module`` is a standard fused experts module :class:`LinearExperts` reproduces, else why not."""
    params = dict(module.named_parameters(recurse=False))
    inner = [n for n, _ in module.named_parameters() if "." in n]  # parameters of submodules (act_fn has none)
    if set(params) != {"gate_up_proj", "down_proj"} or inner:
        return f"parameters {sorted(params) + inner}, not exactly gate_up_proj and down_proj"
    gate_up, down = params["gate_up_proj"], params["down_proj"]
    if gate_up.dim() != 3 or down.dim() != 3 or gate_up.shape[0] != down.shape[0]:
        return "expert parameters are not (E, 2I, H) and (E, H, I)"
    e, two_i, h = gate_up.shape
    if two_i % 2 or tuple(down.shape) != (e, h, two_i // 2):
        return f"shapes {list(gate_up.shape)} and {list(down.shape)} are not (E, 2I, H) and (E, H, I)"
    flags = {k: getattr(module, k, d) for k, d in (("has_gate", True), ("has_bias", False),
                                                    ("is_transposed", False), ("is_concatenated", True),
                                                    ("has_post_expert_norm", False))}
    if flags != {"has_gate": True, "has_bias": False, "is_transposed": False, "is_concatenated": True,
                 "has_post_expert_norm": False}:
        return f"layout flags {flags} differ from the concatenated [gate; up] layout without bias"
    if not callable(getattr(module, "act_fn", None)) or gate_up.device.type == "meta":
        return "no act_fn, or weights on the meta device"
    return None


def _same_forward(module: nn.Module, twin: LinearExperts, generator: torch.Generator) -> bool:
    """Run the fused module and its linear twin on a random routing that hits every expert; equal outputs?"""
    p = twin[0].down_proj.weight
    experts, hidden = len(twin), p.shape[0]
    tokens, k = 2 * experts, min(2, experts)
    x = torch.randn(tokens, hidden, generator=generator).to(p.device, p.dtype)
    index = torch.stack([(torch.arange(tokens) + j) % experts for j in range(k)], dim=1).to(p.device)
    weights = torch.rand(tokens, k, generator=generator).to(p.device, p.dtype)
    with torch.no_grad():
        twin_out = twin(x, index, weights)
        fused = twin.fused()
        try:
            ref = fused(x, index, weights)
        finally:
            for name in ("gate_up_proj", "down_proj"):
                setattr(fused, name, nn.Parameter(torch.empty(0, device="meta"), requires_grad=False))
    tol = 1e-5 if p.dtype in (torch.float32, torch.float64) else 2e-2
    return torch.allclose(ref, twin_out, rtol=tol, atol=tol)


def unfuse_experts_(module: nn.Module) -> dict[str, str]:
    """Replace every fused experts module under ``module`` (a model or a block) by a :class:`LinearExperts`
    **in place**, so unstructured / N:M pruning reaches each expert's linear layers.

    A module is converted only when its layout is the standard one and a forward on a random routing gives the
    same output as the original (checked here); returns ``{qualified name: "unfused" | why it was kept}``.
    State-dict names change (``experts.3.gate_up_proj.weight``): call :func:`fuse_experts_` before saving.
    """
    report: dict[str, str] = {}
    generator = torch.Generator().manual_seed(0)
    for name, m in list(module.named_modules()):
        if not _fused_expert_params(m) or isinstance(m, LinearExperts):
            continue
        why = _fusable(m) if name else "it is the module passed in, which cannot replace itself"
        if why is None:
            original = dict(m.named_parameters(recurse=False))
            twin = LinearExperts(m)
            if _same_forward(m, twin, generator):
                module.set_submodule(name, twin)
                report[name] = "unfused"
                continue
            for pname, param in original.items():  # give the very same parameters back
                setattr(m, pname, param)
            why = "its forward differs from the standard experts loop on a random routing"
        report[name] = f"kept fused: {why}"
    return report


def fuse_experts_(module: nn.Module) -> list[str]:
    """Undo :func:`unfuse_experts_` in place (the original modules come back with the current, possibly pruned,
    expert weights); returns the qualified names restored.

    Raises ModelError (before any module is restored) when one of them holds experts of different widths."""
    names = [n for n, m in module.named_modules() if isinstance(m, LinearExperts)]
    for name in names:
        module.get_submodule(name).common_width()  # raises its clear ModelError before anything is restored
    for name in names:
        module.set_submodule(name, module.get_submodule(name).fused())
    return names


@contextlib.contextmanager
def experts_unfused(module: nn.Module) -> Iterator[list[str]]:
    """Unfuse every standard fused experts module under ``module`` for the duration of the ``with`` block (so
    plan names such as ``model.layers.0.mlp.experts.3.down_proj`` resolve to linear modules), then fuse them back
    with their current, possibly pruned, weights (also when the block raises); yields the names unfused."""
    names = [n for n, status in unfuse_experts_(module).items() if status == "unfused"]
    try:
        yield names
    finally:
        if names:
            fuse_experts_(module)


__all__ = ["EXPERT_WIDTH_MULTIPLE", "ExpertMLP", "LinearExperts", "experts_unfused", "fuse_experts_",
           "unfuse_experts_"]
