"""Streaming accumulation of calibration statistics for one linear layer.

For inputs arriving in chunks ``x`` of shape (..., n) (tokens in the leading dimensions) this keeps

.. math::

    G = \\sum_t x_t x_t^T, \\qquad s = \\sum_t x_t, \\qquad N = \\#\\text{tokens},

and, when error correction is tracked (FISTAPruner §5.4), with the matching error-corrected inputs x*_t,

.. math::

    G^* = \\sum_t x^*_t {x^*_t}^T, \\qquad K = \\sum_t x_t {x^*_t}^T \\quad (C = W K).

Accumulation happens in float64 (default) or float32 whatever the activation dtype, so bf16/fp16
activations never overflow or lose the small eigenvalues the restoration needs.  Memory: O(n^2) on the
accumulator's device, independent of the number of tokens.

``diagonal=True`` keeps only diag G = (sum_t x_tj^2)_j (and the sum): O(N n) work and O(n) memory instead of
O(N n^2) and O(n^2) -- all that Wanda, FLAP and the column scores read (``Formulation.statistics``).

Finiteness is checked once, when the statistics are frozen (:meth:`GramAccumulator.check_finite`, called by
:meth:`~GramAccumulator.layer_data`), not per chunk: a NaN or Inf in any input x_tj makes the diagonal entry
sum_t x_tj^2 NaN or Inf, and so does a float32 overflow of the sums, so one O(n) test of diag G (and diag G*)
catches every non-finite input without scanning each activation batch.
"""

from __future__ import annotations

import copy as _copy
from typing import Optional

import torch

from ..errors import NonFiniteError, ShapeError


class GramAccumulator:
    """Accumulate G = X X^T, the input sum and (optionally) G* and X X*^T over streamed chunks.

    Parameters
    ----------
    in_features : int
        n, the layer's input width.
    dtype : torch.dtype
        Accumulation dtype: float64 (default) or float32.
    device : torch.device or str, optional
        Where the accumulators live (default: the device of the first chunk).
    track_star : bool
        Also accumulate G* and K = X X*^T for intra-layer error correction.
    diagonal : bool
        Keep only diag G (a vector (n,)) and the sum; ``layer_data`` then gives a LayerData with diagonal
        statistics (``LayerData.is_diagonal``).  Incompatible with ``track_star``.
    """

    def __init__(self, in_features: int, *, dtype: torch.dtype = torch.float64, device=None, track_star: bool = False,
                 diagonal: bool = False):
        if dtype not in (torch.float32, torch.float64):
            raise ValueError(f"accumulate Gram matrices in float32 or float64, not {dtype}.")
        if diagonal and track_star:
            raise ValueError("error correction (track_star) needs the full Gram; use diagonal=False.")
        self.diagonal = bool(diagonal)
        self.in_features = int(in_features)
        self.dtype = dtype
        self.device = torch.device(device) if device is not None else None
        self.track_star = track_star
        self.gram: Optional[torch.Tensor] = None
        self.sum: Optional[torch.Tensor] = None
        self.gram_star: Optional[torch.Tensor] = None
        self.cross_gram: Optional[torch.Tensor] = None
        self.num_tokens = 0

    def _flatten(self, x: torch.Tensor, name: str) -> torch.Tensor:
        if x.shape[-1] != self.in_features:
            raise ShapeError(f"{name} last dimension must be {self.in_features}, got shape {tuple(x.shape)}.")
        device = self.device or x.device
        return x.detach().reshape(-1, self.in_features).to(device=device, dtype=self.dtype)

    def update(self, inputs: torch.Tensor, inputs_star: Optional[torch.Tensor] = None) -> None:
        """Add a chunk of inputs of shape (..., n); ``inputs_star`` must match when tracking X*."""
        x = self._flatten(inputs, "inputs")
        if self.gram is None:
            dev = x.device
            n = self.in_features
            self.gram = torch.zeros(n if self.diagonal else (n, n), dtype=self.dtype, device=dev)
            self.sum = torch.zeros(n, dtype=self.dtype, device=dev)
            if self.track_star:
                self.gram_star = torch.zeros(n, n, dtype=self.dtype, device=dev)
                self.cross_gram = torch.zeros(n, n, dtype=self.dtype, device=dev)
        if self.diagonal:
            self.gram.add_(torch.linalg.vector_norm(x, dim=0).square_())
        else:
            self.gram.addmm_(x.T, x)
        self.sum.add_(x.sum(dim=0))
        if self.track_star:
            if inputs_star is None:
                raise ShapeError("this accumulator tracks X*: pass inputs_star with every chunk.")
            xs = self._flatten(inputs_star, "inputs_star")
            if xs.shape != x.shape:
                raise ShapeError(f"inputs_star shape {tuple(xs.shape)} must match inputs {tuple(x.shape)}.")
            self.gram_star.addmm_(xs.T, xs)
            self.cross_gram.addmm_(x.T, xs)
        elif inputs_star is not None:
            raise ShapeError("inputs_star given but the accumulator was created with track_star=False.")
        self.num_tokens += int(x.shape[0])

    def copy(self) -> "GramAccumulator":
        """An independent accumulator holding the same sums (tensors cloned)."""
        twin = _copy.copy(self)
        for name in ("gram", "sum", "gram_star", "cross_gram"):
            value = getattr(self, name)
            setattr(twin, name, None if value is None else value.clone())
        return twin

    @property
    def mean(self) -> torch.Tensor:
        """Token mean of the inputs (n,)."""
        self._require_data()
        return self.sum / self.num_tokens

    def check_finite(self) -> None:
        """Raise :class:`NonFiniteError` if any accumulated input was NaN/Inf or the sums overflowed (one O(n)
        test of diag G and diag G*, see the module docstring)."""
        self._require_data()
        for name, g in (("inputs", self.gram), ("inputs_star", self.gram_star)):
            if g is None:
                continue
            diag = g if g.dim() == 1 else g.diagonal()
            if not torch.isfinite(diag).all():
                raise NonFiniteError(
                    f"calibration {name} contain NaN/Inf (or their squares overflowed {self.dtype}); the calibration "
                    f"forward pass overflowed. Fix: run calibration in float32, accumulate in float64, or lower the "
                    f"sequence length."
                )

    def _require_data(self) -> None:
        if self.gram is None or self.num_tokens == 0:
            raise ShapeError("no calibration tokens were accumulated; feed at least one chunk with update().")

    def layer_data(self, weight: torch.Tensor, *, bias=None, damping: float = 0.01, with_mean: bool = True, check_psd: bool = True):
        """Freeze the statistics into a :class:`~prunekit.formulations.layer.LayerData` for ``weight``."""
        from .layer import LayerData

        self.check_finite()
        gram = self.gram if self.diagonal else 0.5 * (self.gram + self.gram.T)
        kwargs = {}
        if self.track_star:
            w = weight.detach().to(device=self.cross_gram.device, dtype=self.dtype)
            kwargs["gram_star"] = 0.5 * (self.gram_star + self.gram_star.T)
            kwargs["cross"] = w @ self.cross_gram
        return LayerData(
            weight=weight,
            gram=gram,
            num_tokens=self.num_tokens,
            bias=bias,
            input_mean=self.mean if with_mean else None,
            damping=damping,
            check_psd=check_psd,
            **kwargs,
        )
