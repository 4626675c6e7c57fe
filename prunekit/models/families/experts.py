"""Fused mixture-of-experts weights as linear layers, and back (used by the generic adapter).

transformers >= 5 stores the experts of Mixtral, Qwen2-MoE ... as one 3-D parameter per projection
(``gate_up_proj`` (E, 2I, H) = [gate; up] per expert, ``down_proj`` (E, H, I)), not as ``nn.Linear`` modules, so
unstructured / N:M pruning would not reach them.  :func:`unfuse_experts_` rewrites such a module in place as a
:class:`LinearExperts` -- one ``gate_up_proj`` / ``down_proj`` linear pair per expert with the same forward
(checked on a random routing that hits every expert before the swap), weights shared with the fused tensors --
and :func:`fuse_experts_` stacks the (pruned) weights back into the original module, whose state-dict names stock
``from_pretrained`` loads.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn


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

    def fused(self) -> nn.Module:
        """The original module with the current expert weights stacked back (E, ...)."""
        fused = self.__dict__["_fused_module"]
        for name in ("gate_up_proj", "down_proj"):
            weights = [getattr(expert, name).weight for expert in self]
            setattr(fused, name, nn.Parameter(torch.stack([w.detach() for w in weights]),
                                              requires_grad=weights[0].requires_grad))
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
    expert weights); returns the qualified names restored."""
    names = [n for n, m in module.named_modules() if isinstance(m, LinearExperts)]
    for name in names:
        module.set_submodule(name, module.get_submodule(name).fused())
    return names


__all__ = ["ExpertMLP", "LinearExperts", "fuse_experts_", "unfuse_experts_"]
