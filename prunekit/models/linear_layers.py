"""The linear layer types prunekit prunes, in one place: ``nn.Linear`` (and subclasses) and GPT-2 style ``Conv1D``.

Every other module reads and writes weights through these functions, in PyTorch layout (out_features x
in_features), whatever the storage:

* ``nn.Linear`` stores W as (out, in);
* Hugging Face ``Conv1D`` (GPT-2, and GPT-2 derived models) stores W^T as (in, out), ``nx`` = in features;
* ``CompactLinear`` (prunekit's V/O-channel layer, ``prunekit.models.surgery``) is an ``nn.Linear``.

Fused projections (Phi-3's ``qkv_proj`` / ``gate_up_proj``, GPT-2's ``c_attn``) are ordinary linear layers here:
what is fused is which *rows* belong together, which the coupled groups state (``prunekit.models.groups``).
Fused MoE experts (3-D parameters) are not linear layers; ``prunekit.models.families.experts`` rewrites them.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ..errors import ModelError


def is_conv1d(module: nn.Module) -> bool:
    """A Hugging Face ``Conv1D`` (weight stored (in, out))."""
    return type(module).__name__ == "Conv1D" and getattr(module, "weight", None) is not None


def linear_kind(module: nn.Module) -> Optional[str]:
    """``"Linear"`` for ``nn.Linear`` (and subclasses), ``"Conv1D"`` for GPT-2 style Conv1D, else None."""
    if isinstance(module, nn.Linear):
        return "Linear"
    if is_conv1d(module):
        return "Conv1D"
    return None


def weight_of(module: nn.Module) -> torch.Tensor:
    """W in (out, in) layout: the parameter itself for ``nn.Linear``, a transposed view for ``Conv1D``."""
    return module.weight.t() if is_conv1d(module) else module.weight


def write_weight_(module: nn.Module, weight: torch.Tensor) -> None:
    """Copy an (out, in) ``weight`` into the module in place (same shape; the module's dtype and device)."""
    w = weight.t() if is_conv1d(module) else weight
    with torch.no_grad():
        module.weight.copy_(w.to(dtype=module.weight.dtype, device=module.weight.device))


def in_features(module: nn.Module) -> int:
    """n, the layer's input width."""
    if hasattr(module, "in_features"):
        return int(module.in_features)
    if hasattr(module, "nx"):
        return int(module.nx)
    return int(weight_of(module).shape[1])


def new_linear_like(old: nn.Module, out_features: int, in_features: int, bias: bool) -> nn.Module:
    """An uninitialized module of the same type as ``old`` (``nn.Linear`` or HF ``Conv1D``) with new sizes, in
    ``old``'s dtype and device."""
    w = old.weight
    if is_conv1d(old):
        new = type(old)(out_features, in_features)
        new.to(dtype=w.dtype, device=w.device)
        if not bias:
            new.bias = None
        return new
    if isinstance(old, nn.Linear):
        return nn.Linear(in_features, out_features, bias=bias, dtype=w.dtype, device=w.device)
    raise ModelError(f"cannot resize module of type {type(old).__name__}; only nn.Linear and Conv1D are supported.")


__all__ = ["in_features", "is_conv1d", "linear_kind", "new_linear_like", "weight_of", "write_weight_"]
