"""The method table: method name -> how to state its layer problem, and which structures it supports.

Each row of :data:`METHODS` says which formulation class (``prunekit.formulations``, imported lazily) a
method uses, on which level it works and which sparsity structures it accepts:

=========  ==========================  =======================  =========================================
method     formulation                 level                    structures
=========  ==========================  =======================  =========================================
magnitude  MagnitudePruning            one linear module        unstructured (one threshold per layer), N:M
wanda      WandaPruning                one linear module        unstructured (per row), N:M
sparsegpt  SparseGPTPruning            one linear module        unstructured, N:M
mrp        MultipleRemoval             one linear module        unstructured, N:M
fista      L1Relaxation                one linear module        unstructured, N:M (intra-layer X*)
fasp       CoupledStructuredRemoval    coupled group            channels
spap       PenaltyRelaxation           coupled group            channels
flap       FLAPRemoval                 coupled group            channels
admm       ADMMSplit                   group / module           channels, unstructured, N:M
=========  ==========================  =======================  =========================================

A *coupled group* (``prunekit.models.groups.CoupledGroup``) is stated on its downstream module: the
formulation sees the downstream weight W (m x n) and the Gram G of its input (n x n), with a
:class:`~prunekit.formulations.sparsity.Channels` spec whose explicit ``groups`` are the group's units (one
column per MLP channel, ``head_dim`` columns per head).  The kept units follow from the solution's kept
columns.  Formulation hyperparameters come from ``Recipe.method_options`` and are passed as dataclass
fields; an unknown name is an error listing the valid fields.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
from dataclasses import dataclass
from typing import Any, Mapping, Optional

from ..errors import FormulationError


@dataclass(frozen=True)
class MethodSpec:
    """One row of the method table."""

    name: str
    formulation: str
    structures: tuple[str, ...]  # subset of ("unstructured", "nm", "channels")
    unstructured_scope: str = "row"
    paper: str = ""

    @property
    def structured(self) -> bool:
        return "channels" in self.structures

    def supports(self, kind: str) -> bool:
        return kind in self.structures

    def check_structure(self, kind: str, structure: str = "") -> None:
        if not self.supports(kind):
            shown = ", ".join("N:M (e.g. 2:4)" if s == "nm" else s for s in self.structures)
            can = sorted(m.name for m in METHODS.values() if m.supports(kind))
            raise FormulationError(
                f"method {self.name!r} does not support structure {structure or kind!r}; it supports: {shown}. "
                f"Methods that support {structure or kind!r}: {', '.join(can)}."
            )

    def formulation_class(self) -> type:
        module = importlib.import_module("prunekit.formulations")
        try:
            return getattr(module, self.formulation)
        except (AttributeError, ImportError) as exc:
            raise FormulationError(
                f"method {self.name!r} needs the formulation {self.formulation}, which is not available in this "
                f"prunekit ({exc}). Fix: choose another method."
            ) from exc


METHODS: dict[str, MethodSpec] = {
    m.name: m
    for m in (
        MethodSpec("magnitude", "MagnitudePruning", ("unstructured", "nm"), "layer", "methods.md §8.1"),
        MethodSpec("wanda", "WandaPruning", ("unstructured", "nm"), "row", "Sun et al. 2023, §8.2"),
        MethodSpec("sparsegpt", "SparseGPTPruning", ("unstructured", "nm"), "row", "Frantar & Alistarh 2023, §8.3"),
        MethodSpec("mrp", "MultipleRemoval", ("unstructured", "nm"), "row", "arXiv 2410.15567, §6"),
        MethodSpec("fista", "L1Relaxation", ("unstructured", "nm"), "row", "FISTAPruner arXiv 2408.03728, §5"),
        MethodSpec("fasp", "CoupledStructuredRemoval", ("channels",), "row", "FASP arXiv 2501.09412, §4"),
        MethodSpec("spap", "PenaltyRelaxation", ("channels",), "row", "SPAP arXiv 2505.03373, §3"),
        MethodSpec("flap", "FLAPRemoval", ("channels",), "row", "FLAP, §8.4"),
        MethodSpec("admm", "ADMMSplit", ("channels", "unstructured", "nm"), "row", "StructPrune §7"),
    )
}


def method_spec(name: str) -> MethodSpec:
    try:
        return METHODS[name]
    except KeyError:
        raise FormulationError(f"unknown method {name!r}; known methods: {', '.join(METHODS)}.") from None


def module_spec(method: str, kind: str, ratio: float, nm: Optional[tuple[int, int]]):
    """The SparsitySpec of a per-module (unstructured / N:M) problem."""
    from ..formulations import NM, Unstructured

    if kind == "nm":
        return NM(*nm)
    return Unstructured(float(ratio), scope=method_spec(method).unstructured_scope)


def units_pruned(num_units: int, ratio: float, round_to: int = 1) -> int:
    """Units removed at ``ratio``: keep ``ceil(n (1 - ratio))`` (FASP's n(1-s)), rounded to a multiple of round_to.

    The kept count is rounded **up** to a multiple of ``round_to`` (capped at ``num_units``), as
    ``prunekit.models.surgery.round_kept_count`` does, so pruned widths suit fast kernels.
    """
    keep = num_units - int(math.floor(ratio * num_units + 1e-9))
    if round_to > 1:
        keep = min(num_units, int(math.ceil(keep / round_to)) * round_to)
    return max(0, min(num_units - max(keep, 1), num_units - 1))


def group_spec(units, ratio: float, round_to: int = 1):
    """A Channels spec over the group's units (explicit column partition), or None when nothing is pruned."""
    from ..formulations import Channels

    count = units_pruned(len(units), ratio, round_to)
    if count == 0:
        return None
    return Channels(count=count, groups=tuple(tuple(u) for u in units))


def build_formulation(method: str, layer, sparsity, options: Mapping[str, Any] | None = None):
    """Instantiate the method's formulation on ``layer`` with ``sparsity`` and hyperparameters ``options``."""
    spec = method_spec(method)
    cls = spec.formulation_class()
    options = dict(options or {})
    names = {f.name for f in dataclasses.fields(cls)} - {"layer", "sparsity"}
    unknown = sorted(set(options) - names)
    if unknown:
        raise FormulationError(
            f"unknown option(s) {unknown} for method {method!r} ({cls.__name__}); valid options: {sorted(names)}."
        )
    return cls(layer=layer, sparsity=sparsity, **options)


def kept_units_from_solution(solution, units) -> tuple[int, ...]:
    """Units whose downstream columns are all kept by ``solution`` (kept_columns, else the mask's kept columns)."""
    if solution.kept_columns is not None:
        kept = {int(c) for c in solution.kept_columns.tolist()}
    else:
        col_kept = solution.mask.bool().all(dim=0)
        kept = {int(c) for c in col_kept.nonzero().flatten().tolist()}
    return tuple(u for u, cols in enumerate(units) if all(int(c) in kept for c in cols))


__all__ = ["METHODS", "MethodSpec", "build_formulation", "group_spec", "kept_units_from_solution", "method_spec",
           "module_spec", "units_pruned"]
