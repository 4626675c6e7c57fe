"""Pure proximal operators and projections (no state, inputs never modified).

* ``prox_l1(v, tau)`` -- the prox of ``tau ||.||_1``: soft thresholding ``sign(v) max(|v| - tau, 0)`` (C9);
* ``project_topk(w, spec)`` -- hard projection onto an unstructured spec: keep the largest |w| per row or per
  layer (ties to the lower index), zero the rest;
* ``project_n_m(w, spec)`` -- hard projection onto an N:M spec (FISTAPruner's Eq. 7 for 2:4);
* ``project(w, spec)`` -- either, through the spec's own ``project`` (masks are keep-masks).
"""

from __future__ import annotations

import torch

from ...formulations.sparsity import NM, SparsitySpec, Unstructured


def prox_l1(v: torch.Tensor, tau) -> torch.Tensor:
    """``argmin_x 1/2 ||x - v||^2 + tau ||x||_1 = sign(v) max(|v| - tau, 0)`` (``tau >= 0``, scalar or broadcastable)."""
    if isinstance(tau, (int, float)) and tau < 0:
        raise ValueError(f"prox_l1 needs tau >= 0, got {tau}.")
    return torch.sign(v) * torch.clamp(v.abs() - tau, min=0.0)


def project(w: torch.Tensor, spec: SparsitySpec) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(w * mask, mask)`` with ``mask = spec.project(|w|)`` (largest magnitudes kept)."""
    mask = spec.project(w.detach().abs())
    return w * mask.to(w.dtype), mask


def project_topk(w: torch.Tensor, spec: Unstructured) -> tuple[torch.Tensor, torch.Tensor]:
    """Hard projection onto an :class:`Unstructured` spec (row or layer scope)."""
    if not isinstance(spec, Unstructured):
        raise TypeError(f"project_topk needs an Unstructured spec, got {type(spec).__name__}.")
    return project(w, spec)


def project_n_m(w: torch.Tensor, spec: NM) -> tuple[torch.Tensor, torch.Tensor]:
    """Hard projection onto an :class:`NM` spec: keep the M - N largest |w| in each group of M inputs."""
    if not isinstance(spec, NM):
        raise TypeError(f"project_n_m needs an NM spec, got {type(spec).__name__}.")
    return project(w, spec)


__all__ = ["project", "project_n_m", "project_topk", "prox_l1"]
