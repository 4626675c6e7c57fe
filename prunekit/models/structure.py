"""Structure: the parsed form of a recipe's ``structure`` ("unstructured", "2:4", "channels"), parsed once.

A :class:`Structure` is the one value the pipeline passes around: the recipe parses the user's text once, every
later step reads ``kind`` (``"unstructured"``, ``"nm"``, ``"channels"``) and, for N:M, ``n``/``m`` -- nothing is
parsed again, and ``str(structure)`` gives back the text (``"2:4"``), so recipes round-trip through JSON and YAML.

An N:M structure prunes exactly ``n/m`` of the weights (``n`` zeros in every ``m`` consecutive inputs of a row);
its ``fixed_ratio`` is that number, which is why a recipe that states another ``sparsity`` beside it is an error.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional, Union

from ..errors import FormulationError

KINDS = ("unstructured", "nm", "channels")
_NM = re.compile(r"^\s*(\d+)\s*:\s*(\d+)\s*$")


@dataclass(frozen=True)
class Structure:
    """``kind`` in {"unstructured", "nm", "channels"}; ``n``/``m`` for N:M (``n`` pruned of every ``m``)."""

    kind: str
    n: Optional[int] = None
    m: Optional[int] = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise FormulationError(f"structure kind must be one of {KINDS}, got {self.kind!r}.")
        if (self.kind == "nm") != (self.n is not None and self.m is not None):
            raise FormulationError("an N:M structure needs n and m (and only N:M has them).")
        if self.kind == "nm" and not (0 < self.n < self.m):
            raise FormulationError(f"N:M needs 0 < N < M, got {self.n}:{self.m}. Fix: e.g. '2:4' or '4:8'.")

    @classmethod
    def parse(cls, value: Union[str, "Structure"]) -> "Structure":
        """``"unstructured"`` | ``"channels"`` | ``"N:M"`` -> Structure; a Structure is returned as is."""
        if isinstance(value, Structure):
            return value
        if isinstance(value, bool) or isinstance(value, (int, float)):
            hint = (" (YAML 1.1 reads an unquoted 2:4 as the base-60 number 124: quote it, structure: '2:4')"
                    if isinstance(value, int) else "")
            raise FormulationError(f"structure {value!r} is a number, not a structure{hint}. Fix: use "
                                   f"'unstructured', 'channels' or 'N:M' such as '2:4'.")
        text = str(value).strip()
        if text in ("unstructured", "channels"):
            return cls(text)
        match = _NM.match(text)
        if match:
            return cls("nm", int(match.group(1)), int(match.group(2)))
        raise FormulationError(
            f"structure {value!r} is not understood. Fix: use 'unstructured', 'channels' or 'N:M' with 0 < N < M "
            f"(e.g. '2:4', '4:8')."
        )

    @property
    def fixed_ratio(self) -> Optional[float]:
        """n/m for N:M (the only ratio it can prune), None otherwise."""
        return self.n / self.m if self.kind == "nm" else None

    @property
    def label(self) -> str:
        """How methods and errors name the kind: "unstructured", "N:M", "channels"."""
        return "N:M" if self.kind == "nm" else self.kind

    def __str__(self) -> str:
        return f"{self.n}:{self.m}" if self.kind == "nm" else self.kind


__all__ = ["KINDS", "Structure"]
