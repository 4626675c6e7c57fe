"""Sparsity specifications: which masks are feasible for an m x n layer.

A mask is a boolean *keep*-mask M in {0,1}^{m x n} (True = weight kept).  Three structures:

* :class:`Unstructured` -- a fraction ``ratio`` of the weights is pruned, per row (``scope="row"``:
  floor(n * ratio) per row, Wanda's comparison group) or per layer (``scope="layer"``:
  floor(m n * ratio) in all, magnitude pruning's single threshold).
* :class:`NM` -- in every group of ``m`` consecutive input columns of every row, exactly ``n`` weights
  are pruned (2:4, 4:8).  ``m`` must divide the input width.
* :class:`Channels` -- whole input columns are removed, together with the coupled upstream rows
  (FASP/SPAP/FLAP).  Columns are removed in *groups*: single columns by default, contiguous blocks of
  ``group_size`` (attention heads), or an explicit partition ``groups`` (GQA value channels, where one
  value row feeds several output columns).  Either ``ratio`` (fraction of groups) or ``count`` (number of
  groups) is given.

Rounding: every spec prunes ``floor(ratio * size + 1e-9)`` units, so the kept count is
``ceil(size * (1 - ratio))`` as in FASP.

Every spec can *project* a score matrix onto itself: keep the highest scores subject to the structure
(ties broken towards the lower index, deterministically).
"""

from __future__ import annotations

import functools
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Literal, Optional

import torch

from ..errors import FormulationError, ShapeError, SparsityError


def _check_ratio(ratio) -> float:
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not math.isfinite(ratio):
        raise SparsityError(
            f"sparsity ratio must be a finite number in [0, 1), got {ratio!r}. Fix: pass a float such as 0.5."
        )
    if not 0.0 <= float(ratio) < 1.0:
        raise SparsityError(
            f"sparsity ratio must lie in [0, 1), got {ratio}. Fix: 0.5 prunes half the weights; "
            f"1.0 would remove the whole layer."
        )
    return float(ratio)


def _floor_count(ratio: float, size: int) -> int:
    return int(math.floor(ratio * size + 1e-9))


_SORT_BELOW = 256  # slices up to this length are sorted; longer ones use selection (measured 1.5-3x faster)


_COMPARE_BELOW = 8  # slices up to this length (N:M groups) rank by pairwise comparison: no sort, no scatter
_BROADCAST_COMPARES = 1 << 16  # up to this many compares, all pairs in one broadcast


@functools.lru_cache(maxsize=32)
def _earlier(size: int, device: torch.device) -> torch.Tensor:
    """(size, size) bool, [k, j] = k < j."""
    index = torch.arange(size, device=device)
    return index.unsqueeze(1) < index.unsqueeze(0)


def _pairwise_keep(scores: torch.Tensor, keep: int, dim: int) -> torch.Tensor:
    """Stable top-``keep`` of short slices by counting, for each entry j, the entries ranked before it:
    ``c_j = #{k < j : s_k >= s_j} + #{k > j : s_k > s_j}`` (a stable descending sort puts exactly those first);
    entry j is kept iff ``c_j < keep``.  O(size^2) compares per slice, measured ~4x faster than the sort at
    size 4 (SparseGPT's per-group 2:4 choice).  Small inputs compare all pairs at once; large ones pair by pair
    (one byte of count per entry instead of size^2).  No NaN (the caller sorts those)."""
    s = scores.movedim(dim, 0)
    size = s.shape[0]
    if s.numel() * size <= _BROADCAST_COMPARES:
        earlier = _earlier(size, s.device).reshape(size, size, *([1] * (s.dim() - 1)))
        first, second = s.unsqueeze(1), s.unsqueeze(0)  # [k, j] compares s_k with s_j
        before = torch.where(earlier, first >= second, first > second).sum(dim=0)
    else:
        before = torch.zeros(s.shape, dtype=torch.uint8, device=s.device)
        for k in range(size):
            for j in range(k + 1, size):
                k_first = s[k] >= s[j]  # without NaN, exactly one of k, j is ranked before the other
                before[j] += k_first
                before[k] += ~k_first
    return (before < keep).movedim(0, dim)


def _stable_topk_keep(scores: torch.Tensor, keep: int, dim: int = -1) -> torch.Tensor:
    """Boolean mask keeping the ``keep`` largest entries along ``dim``; ties go to the lower index."""
    if keep <= 0:
        return torch.zeros_like(scores, dtype=torch.bool)
    if keep >= scores.shape[dim]:
        return torch.ones_like(scores, dtype=torch.bool)
    size = scores.shape[dim]
    has_nan = scores.is_floating_point() and bool(torch.isnan(scores).any())
    if size <= _COMPARE_BELOW and not has_nan:
        return _pairwise_keep(scores, keep, dim)
    if size <= _SORT_BELOW or has_nan:
        # Short slices (N:M groups) sort faster than they select; NaN orders above every number in a descending
        # sort, a rule the selection below would not follow.
        order = torch.sort(scores, dim=dim, descending=True, stable=True).indices
        return torch.zeros_like(scores, dtype=torch.bool).scatter_(dim, order.narrow(dim, 0, keep), True)
    # Selection instead of a sort (O(n) per slice): everything above the keep-th largest value t, then as many
    # entries equal to t as are still needed, lowest index first -- the same set a stable descending sort keeps.
    threshold = torch.kthvalue(scores, size - keep + 1, dim=dim, keepdim=True).values
    above = scores > threshold
    need = keep - above.sum(dim=dim, keepdim=True)
    tied = scores == threshold
    return above | (tied & (torch.cumsum(tied, dim=dim) <= need))


class SparsitySpec(ABC):
    """Abstract sparsity structure over an (m, n) weight."""

    @abstractmethod
    def validate_for(self, shape: tuple[int, int]) -> None:
        """Raise :class:`SparsityError` if the spec cannot be met on a weight of this shape."""

    @abstractmethod
    def project(self, scores: torch.Tensor) -> torch.Tensor:
        """Keep-mask (m, n) bool that keeps the highest ``scores`` subject to the structure."""

    @abstractmethod
    def violations(self, mask: torch.Tensor) -> int:
        """Number of structural units (rows, groups, layer) whose pruned count is wrong (0 = feasible)."""

    @abstractmethod
    def num_pruned(self, shape: tuple[int, int]) -> int:
        """Total number of pruned weights of a feasible mask on ``shape``."""

    @property
    def structured(self) -> bool:
        """True when all rows share the kept set (physical removal possible)."""
        return False

    def describe(self) -> str:
        return repr(self)

    def is_satisfied_by(self, mask: torch.Tensor) -> bool:
        return self.violations(mask) == 0

    def _check_mask_shape(self, mask: torch.Tensor) -> None:
        if mask.dim() != 2:
            raise ShapeError(f"mask must be 2-D (m x n), got shape {tuple(mask.shape)}.")


@dataclass(frozen=True)
class Unstructured(SparsitySpec):
    """Prune a fraction ``ratio`` of the weights, per row or per layer."""

    ratio: float
    scope: Literal["row", "layer"] = "row"

    def __post_init__(self) -> None:
        _check_ratio(self.ratio)
        if self.scope not in ("row", "layer"):
            raise SparsityError(f"scope must be 'row' or 'layer', got {self.scope!r}.")

    def validate_for(self, shape: tuple[int, int]) -> None:
        m, n = shape
        if m <= 0 or n <= 0:
            raise SparsityError(f"cannot sparsify an empty weight of shape {shape}.")

    def pruned_per_row(self, n: int) -> int:
        return _floor_count(self.ratio, n)

    def num_pruned(self, shape: tuple[int, int]) -> int:
        m, n = shape
        if self.scope == "row":
            return m * self.pruned_per_row(n)
        return _floor_count(self.ratio, m * n)

    def project(self, scores: torch.Tensor) -> torch.Tensor:
        m, n = scores.shape
        if self.scope == "row":
            return _stable_topk_keep(scores, n - self.pruned_per_row(n), dim=1)
        keep = m * n - self.num_pruned((m, n))
        return _stable_topk_keep(scores.reshape(-1), keep, dim=0).reshape(m, n)

    def violations(self, mask: torch.Tensor) -> int:
        self._check_mask_shape(mask)
        m, n = mask.shape
        pruned = (~mask.bool()).sum(dim=1)
        if self.scope == "row":
            return int((pruned != self.pruned_per_row(n)).sum())
        return int(int(pruned.sum()) != self.num_pruned((m, n)))


@dataclass(frozen=True)
class NM(SparsitySpec):
    """N:M semi-structured sparsity: ``n`` zeros in every ``m`` consecutive inputs of every row."""

    n: int
    m: int

    def __post_init__(self) -> None:
        for name, v in (("n", self.n), ("m", self.m)):
            if isinstance(v, bool) or not isinstance(v, int):
                raise SparsityError(f"N:M needs integer {name}, got {v!r}.")
        if not 0 < self.n < self.m:
            raise SparsityError(f"N:M needs 0 < N < M, got {self.n}:{self.m}. Fix: use e.g. 2:4 or 4:8.")

    @property
    def ratio(self) -> float:
        return self.n / self.m

    def validate_for(self, shape: tuple[int, int]) -> None:
        rows, cols = shape
        if cols % self.m != 0:
            raise SparsityError(
                f"{self.n}:{self.m} sparsity needs the input width to be a multiple of {self.m}, "
                f"but the layer has {cols} inputs. Fix: choose M dividing {cols}, or use unstructured sparsity."
            )

    def num_pruned(self, shape: tuple[int, int]) -> int:
        rows, cols = shape
        return rows * (cols // self.m) * self.n

    def project(self, scores: torch.Tensor) -> torch.Tensor:
        rows, cols = scores.shape
        self.validate_for((rows, cols))
        grouped = scores.reshape(rows, cols // self.m, self.m)
        return _stable_topk_keep(grouped, self.m - self.n, dim=2).reshape(rows, cols)

    def violations(self, mask: torch.Tensor) -> int:
        self._check_mask_shape(mask)
        rows, cols = mask.shape
        if cols % self.m:
            return rows
        pruned = (~mask.bool()).reshape(rows, cols // self.m, self.m).sum(dim=2)
        return int((pruned != self.n).sum())

    def describe(self) -> str:
        return f"{self.n}:{self.m}"


@dataclass(frozen=True)
class Channels(SparsitySpec):
    """Remove whole input columns (with the coupled upstream rows), in groups.

    Parameters
    ----------
    ratio : float, optional
        Fraction of groups removed, in [0, 1).
    count : int, optional
        Number of groups removed (exclusive with ``ratio``).
    group_size : int
        Contiguous block width of a group (1 = single channels; head_dim = attention heads).
    groups : tuple of tuple of int, optional
        Explicit partition of (a subset of) the columns into groups; overrides ``group_size``.
        Columns outside every group are never removed.
    """

    ratio: Optional[float] = None
    count: Optional[int] = None
    group_size: int = 1
    groups: Optional[tuple[tuple[int, ...], ...]] = None

    def __post_init__(self) -> None:
        if (self.ratio is None) == (self.count is None):
            raise SparsityError("Channels needs exactly one of ratio= or count=.")
        if self.ratio is not None:
            _check_ratio(self.ratio)
        if self.count is not None and (isinstance(self.count, bool) or not isinstance(self.count, int) or self.count < 0):
            raise SparsityError(f"Channels count must be an int >= 0, got {self.count!r}.")
        if isinstance(self.group_size, bool) or not isinstance(self.group_size, int) or self.group_size < 1:
            raise SparsityError(f"group_size must be a positive int, got {self.group_size!r}.")
        if self.groups is not None:
            flat = [c for g in self.groups for c in g]
            if len(flat) != len(set(flat)) or any(len(g) == 0 for g in self.groups):
                raise SparsityError("groups must be non-empty and disjoint.")
            object.__setattr__(self, "groups", tuple(tuple(int(c) for c in g) for g in self.groups))

    @property
    def structured(self) -> bool:
        return True

    def group_index(self, n: int) -> list[list[int]]:
        """The column groups of an n-column weight."""
        if self.groups is not None:
            return [list(g) for g in self.groups]
        return [list(range(s, s + self.group_size)) for s in range(0, n, self.group_size)]

    def num_groups(self, n: int) -> int:
        return len(self.group_index(n)) if self.groups is not None else n // self.group_size

    def groups_pruned(self, n: int) -> int:
        g = self.num_groups(n)
        return self.count if self.count is not None else _floor_count(self.ratio, g)

    def validate_for(self, shape: tuple[int, int]) -> None:
        m, n = shape
        if self.groups is not None:
            if any(c < 0 or c >= n for g in self.groups for c in g):
                raise SparsityError(f"groups refer to columns outside [0, {n}).")
        elif n % self.group_size:
            raise SparsityError(
                f"group_size {self.group_size} must divide the input width {n}. "
                f"Fix: use the head dimension of this layer, or group_size=1."
            )
        if self.groups_pruned(n) >= self.num_groups(n):
            raise SparsityError(
                f"cannot remove {self.groups_pruned(n)} of {self.num_groups(n)} channel groups: "
                f"at least one must remain. Fix: lower the ratio/count."
            )

    def num_pruned(self, shape: tuple[int, int]) -> int:
        m, n = shape
        index = self.group_index(n)
        sizes = sorted(len(g) for g in index)
        if len(set(sizes)) > 1:
            raise SparsityError("num_pruned is ambiguous for groups of unequal size.")
        return m * self.groups_pruned(n) * (sizes[0] if sizes else 0)

    def group_scores(self, column_scores: torch.Tensor) -> torch.Tensor:
        """Sum per-column scores (n,) over each group -> (num_groups,)."""
        index = self.group_index(column_scores.shape[0])
        return torch.stack([column_scores[g].sum() for g in index])

    def keep_columns_from_group_scores(self, group_scores: torch.Tensor, n: int) -> torch.Tensor:
        """Boolean (n,) vector of kept columns, removing the lowest-scoring groups."""
        index = self.group_index(n)
        keep_groups = _stable_topk_keep(group_scores, len(index) - self.groups_pruned(n), dim=0)
        keep = torch.ones(n, dtype=torch.bool, device=group_scores.device)
        for gi, cols in enumerate(index):
            if not bool(keep_groups[gi]):
                keep[cols] = False
        return keep

    def project(self, scores: torch.Tensor) -> torch.Tensor:
        """``scores`` is (m, n) (summed over rows) or a column score vector (n,)."""
        col = scores.sum(dim=0) if scores.dim() == 2 else scores
        n = col.shape[0]
        keep = self.keep_columns_from_group_scores(self.group_scores(col), n)
        rows = scores.shape[0] if scores.dim() == 2 else 1
        return keep.unsqueeze(0).expand(rows, n).clone()

    def violations(self, mask: torch.Tensor) -> int:
        self._check_mask_shape(mask)
        m, n = mask.shape
        mask = mask.bool()
        col_kept = mask.all(dim=0)
        col_pruned = (~mask).all(dim=0)
        bad = int((~(col_kept | col_pruned)).sum())  # partially pruned columns
        index = self.group_index(n)
        pruned_groups = 0
        for g in index:
            states = col_pruned[g]
            if bool(states.all()):
                pruned_groups += 1
            elif bool(states.any()):
                bad += 1
        grouped = {c for g in index for c in g}
        outside = [c for c in range(n) if c not in grouped]
        if outside and bool(col_pruned[outside].any()):
            bad += 1
        if pruned_groups != self.groups_pruned(n):
            bad += 1
        return bad

    def describe(self) -> str:
        what = f"ratio={self.ratio}" if self.ratio is not None else f"count={self.count}"
        return f"channels({what}, group_size={self.group_size}{', explicit groups' if self.groups else ''})"


def coerce_sparsity(value, scope: Literal["row", "layer"]):
    """A bare ratio ``r`` becomes ``Unstructured(r, scope=scope)``; a spec (or None) is returned unchanged.

    The baselines accept ``sparsity=0.5`` as shorthand; each states its natural scope (Wanda: row, magnitude and
    SparseGPT: layer).
    """
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return Unstructured(float(value), scope=scope)
    return value


def require_sparsity(owner: str, value) -> None:
    """Raise the one error for a formulation built without a sparsity spec or ratio."""
    if value is None:
        raise FormulationError(f"{owner} needs a sparsity spec or ratio. Fix: e.g. sparsity=0.5 or NM(2, 4).")
