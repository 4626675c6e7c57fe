"""The calibration value every source becomes: token windows and which of their tokens are real.

:class:`CalibrationSet` is what the block runner consumes (``prunekit.models.calibration``).  It is produced by
:func:`prunekit.calibration_sources.calibration_set` from any source a user brings (text, datasets, a tokenized
batch, a DataLoader ...).  Padded positions (``attention_mask`` False) stay in the windows -- every window keeps
length L and is propagated whole -- but the model is told to ignore them as attention keys and they never enter a
statistic (G = sum over real tokens t of x_t x_t^T).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from .errors import DataError


@dataclass(frozen=True, eq=False)
class CalibrationSet:
    """Calibration windows (n, L) with an optional mask of real tokens.

    Attributes
    ----------
    input_ids : LongTensor (n, L)
        Token ids, one window per row.
    attention_mask : BoolTensor (n, L) or None
        True where a token is real, False at padding; None means every token is real.  Normalised on
        construction: a mask without any False entry becomes None, and every window has at least one real token.

    Guarantees: ``input_ids`` is 2-D ``torch.long`` with n >= 1 and L >= 1; the mask (when kept) is ``torch.bool``
    of the same shape.  Invalid input raises :class:`~prunekit.errors.DataError`.
    """

    input_ids: torch.Tensor
    attention_mask: Optional[torch.Tensor] = None

    def __post_init__(self) -> None:
        ids = self.input_ids
        if not isinstance(ids, torch.Tensor):
            ids = torch.as_tensor(ids)
        if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
            raise DataError(f"calibration input_ids must hold integer token ids, got dtype {ids.dtype}. "
                            f"Fix: pass token ids (torch.long), e.g. tokenizer(texts, return_tensors='pt').")
        if ids.dim() != 2 or ids.shape[0] == 0 or ids.shape[1] == 0:
            raise DataError(f"calibration windows must have shape (nsamples, seqlen) with both > 0, got "
                            f"{tuple(ids.shape)}. Fix: pass a 2-D LongTensor, e.g. ids.reshape(1, -1) for one window.")
        object.__setattr__(self, "input_ids", ids.detach().to("cpu", torch.long))
        mask = self.attention_mask
        if mask is None:
            return
        mask = torch.as_tensor(mask).detach().to("cpu")
        if tuple(mask.shape) != tuple(ids.shape):
            raise DataError(f"attention_mask shape {tuple(mask.shape)} differs from input_ids shape "
                            f"{tuple(ids.shape)}. Fix: pass the mask the tokenizer returned with these ids.")
        if mask.dtype != torch.bool:
            if not bool(((mask == 0) | (mask == 1)).all()):
                raise DataError("attention_mask must hold 0/1 (or False/True) values. Fix: pass the tokenizer's "
                                "attention_mask unchanged.")
            mask = mask != 0
        empty = (~mask.any(dim=1)).nonzero().flatten().tolist()
        if empty:
            raise DataError(f"calibration window(s) {empty[:10]} have no real token (attention_mask all 0). "
                            f"Fix: drop the empty rows before calibrating.")
        object.__setattr__(self, "attention_mask", None if bool(mask.all()) else mask)

    # ------------------------------------------------------------------ views
    @property
    def shape(self) -> tuple[int, int]:
        """(n, L): number of windows and window length."""
        return tuple(self.input_ids.shape)

    def dim(self) -> int:
        """Always 2 (a CalibrationSet reads like its (n, L) id tensor where code checks the rank)."""
        return 2

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def num_tokens(self) -> int:
        """Real tokens over all windows (what the statistics see)."""
        return int(self.input_ids.numel() if self.attention_mask is None else self.attention_mask.sum())

    @property
    def padded(self) -> bool:
        return self.attention_mask is not None

    def window_mask(self, i: int) -> Optional[torch.Tensor]:
        """BoolTensor (L,) of window ``i``'s real tokens, or None when the window has no padding."""
        if self.attention_mask is None:
            return None
        row = self.attention_mask[i]
        return None if bool(row.all()) else row

    # ------------------------------------------------------------------ construction
    @classmethod
    def coerce(cls, value) -> "CalibrationSet":
        """A CalibrationSet from itself or an (n, L) integer tensor / nested list (no padding)."""
        if isinstance(value, CalibrationSet):
            return value
        if isinstance(value, torch.Tensor) or isinstance(value, (list, tuple)):
            try:
                return cls(torch.as_tensor(value))
            except (TypeError, ValueError, RuntimeError) as exc:
                raise DataError(f"calibration tokens could not be read as an (nsamples, seqlen) integer tensor: "
                                f"{exc}. Fix: pass a LongTensor or a CalibrationSet.") from exc
        raise DataError(f"calibration tokens must be a LongTensor (nsamples, seqlen) or a CalibrationSet, got "
                        f"{type(value).__name__}. Fix: build one with prunekit.calibration_sources.calibration_set.")

    @classmethod
    def from_rows(cls, rows: Sequence[torch.Tensor], masks: Optional[Sequence[Optional[torch.Tensor]]] = None, *,
                  pad_id: int = 0) -> "CalibrationSet":
        """Right-pad 1-D id rows of different lengths to the longest; padding is masked out.

        ``masks[i]`` (optional) marks the real tokens of row ``i`` (e.g. a tokenizer's own padding).
        """
        if not rows:
            raise DataError("no calibration rows were found (the source is empty). Fix: pass a non-empty source.")
        width = max(int(r.numel()) for r in rows)
        ids = torch.full((len(rows), width), int(pad_id), dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.bool)
        for i, row in enumerate(rows):
            k = int(row.numel())
            ids[i, :k] = row.reshape(-1).to(torch.long)
            real = masks[i] if masks is not None and masks[i] is not None else None
            mask[i, :k] = True if real is None else torch.as_tensor(real).reshape(-1).to(torch.bool)
        return cls(ids, mask)


__all__ = ["CalibrationSet"]
