"""Methods: a pruning method *is* a formulation class; this module turns one into what the pipeline needs.

A :class:`Method` wraps a :class:`~prunekit.formulations.Formulation` subclass -- a built-in one or a user's,
written like ``examples/02_custom_formulation.py`` -- and reads everything the model pipeline needs from the class
itself:

* ``structures`` -- the class attribute ``structures`` when it declares one, else derived from the type of its
  ``sparsity`` field: ``Unstructured`` -> {"unstructured"}, ``NM`` -> {"nm"}, ``Channels`` -> {"channels"}, a
  Union -> the union, ``SparsitySpec`` -> all three;
* ``statistics`` (calibration statistics read from LayerData), ``unstructured_scope``, ``calibration_mode``,
  ``column_score`` -- class attributes with defaults on ``Formulation``;
* ``options`` -- the dataclass fields other than ``layer`` and ``sparsity``: a recipe's options are exactly these.

Built-in methods are the formulation classes that set ``method_name`` (``wanda``, ``sparsegpt``, ...): adding one
is one module in ``prunekit/formulations`` (plus its line in that package's lazy table).  Anything else is named by
``"package.module:Class"`` (or ``"path/to/file.py:Class"``); :func:`resolve_method` accepts a name, such a
reference, a class or a Method, and checks that a torch solver is registered for the class.

A *coupled group* (channels) is stated on its downstream module: W (m x n), G of its input, and a ``Channels``
spec whose explicit ``groups`` are the group's units; the kept units follow from the kept columns.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import math
import sys
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Union

from ..errors import FormulationError
from .structure import KINDS, Structure

BUILTIN_FORMULATIONS = ("MagnitudePruning", "WandaPruning", "SparseGPTPruning", "MultipleRemoval", "L1Relaxation",
                        "RefitL1Relaxation", "CoupledStructuredRemoval", "RefitCoupledRemoval", "PenaltyRelaxation",
                        "RefitPenaltyRelaxation", "FLAPRemoval", "ADMMSplit")
"""Names in ``prunekit.formulations`` scanned for ``method_name`` (the built-in methods, in table order)."""

_EXTRA: dict[str, type] = {}  # names registered by register_method


@dataclass(frozen=True)
class Method:
    """A formulation class as a pruning method (see the module docstring); hashable, cheap to build."""

    formulation: type

    def __post_init__(self) -> None:
        from ..formulations import Formulation

        if not (isinstance(self.formulation, type) and issubclass(self.formulation, Formulation)):
            raise FormulationError(f"a method must be a Formulation subclass, got {self.formulation!r}. Fix: "
                                   f"subclass prunekit.formulations.Formulation (see examples/02_custom_formulation.py).")
        if "sparsity" not in {f.name for f in dataclasses.fields(self.formulation)}:
            raise FormulationError(f"{self.formulation.__name__} has no 'sparsity' field, so the pipeline cannot state "
                                   f"a target sparsity for it. Fix: add a field `sparsity: SparsitySpec = None`.")

    # ------------------------------------------------------------------ identity
    @property
    def name(self) -> str:
        """The built-in short name, else ``"module:Class"`` (what recipes store and ``--method`` takes)."""
        cls = self.formulation
        short = cls.__dict__.get("method_name") or next((k for k, v in _EXTRA.items() if v is cls), None)
        return short or f"{cls.__module__}:{cls.__qualname__}"

    def __str__(self) -> str:
        return self.name

    # ------------------------------------------------------------------ declarations
    @property
    def structures(self) -> frozenset:
        declared = getattr(self.formulation, "structures", None)
        if declared is not None:
            return frozenset(declared)
        return _structures_from_type(self.formulation)

    @property
    def statistics(self) -> frozenset:
        """The calibration statistics the formulation declares (``Formulation.statistics``)."""
        return frozenset(self.formulation.statistics)

    @property
    def statistics_basis(self) -> str:
        """What the pipeline accumulates for this method: "gram" (full G, and G* / X X*^T when "star" is
        declared), "diagonal" (diag G only: "norms" and/or "mean" declared) or "none" (no calibration at all)."""
        stats = self.statistics
        if stats & {"gram", "star"}:
            return "gram"
        return "diagonal" if stats else "none"

    @property
    def statistics_dtype(self):
        """torch dtype the pipeline accumulates the statistics in (``Formulation.statistics_dtype``)."""
        import torch

        declared = getattr(self.formulation, "statistics_dtype", "float32")
        if declared not in ("float32", "float64"):
            raise FormulationError(f"{self.formulation.__name__}.statistics_dtype must be 'float32' or 'float64', "
                                   f"got {declared!r}.")
        return torch.float64 if declared == "float64" else torch.float32

    @property
    def calibration_mode(self) -> str:
        return self.formulation.calibration_mode

    @property
    def block_refit_default(self) -> Union[bool, Mapping[str, Any]]:
        """What ``block_refit="auto"`` means for this method: the formulation's ``block_refit_default`` ClassVar --
        False (off; also when absent), True (``BlockRefit``'s defaults) or a mapping of ``BlockRefit`` fields
        (those settings; ``prunekit.models.block_refit``).  Truthy exactly when the refit is on by default."""
        declared = getattr(self.formulation, "block_refit_default", False)
        if isinstance(declared, bool):
            return declared
        if isinstance(declared, Mapping) and declared:
            return dict(declared)
        raise FormulationError(f"{self.formulation.__name__}.block_refit_default must be True, False or a non-empty "
                               f"mapping of block_refit fields, got {declared!r}. Fix: e.g. "
                               f"block_refit_default = {{'epochs': 4}}.")

    def allocation_default(self, kind: str) -> Optional[str]:
        """The allocation rule ``allocation="auto"`` stands for with this method at structure ``kind``
        (``"unstructured"``, ``"nm"``, ``"channels"``): the formulation's ``allocation_defaults`` ClassVar (a
        mapping kind -> rule), None where it declares none (then prunekit's measured table decides,
        :mod:`prunekit.models.allocation_default`)."""
        declared = getattr(self.formulation, "allocation_defaults", None) or {}
        if not isinstance(declared, Mapping):
            raise FormulationError(f"{self.formulation.__name__}.allocation_defaults must be a mapping of structure "
                                   f"kind -> allocation rule, got {declared!r}. Fix: e.g. "
                                   f"allocation_defaults = {{'channels': 'adaptive'}}.")
        unknown = sorted(set(declared) - set(KINDS))
        if unknown:
            raise FormulationError(f"{self.formulation.__name__}.allocation_defaults names unknown structure kind(s) "
                                   f"{unknown}. Fix: use {', '.join(KINDS)}.")
        return declared.get(kind)

    @property
    def column_score(self) -> str:
        return self.formulation.column_score

    @property
    def options(self) -> tuple[str, ...]:
        """Field names a recipe may set (the dataclass fields besides ``layer`` and ``sparsity``)."""
        return tuple(f.name for f in dataclasses.fields(self.formulation) if f.name not in ("layer", "sparsity"))

    def supports(self, structure: Structure) -> bool:
        return structure.kind in self.structures

    def check_structure(self, structure: Structure) -> None:
        if not self.supports(structure):
            shown = ", ".join("N:M (e.g. 2:4)" if s == "nm" else s for s in sorted(self.structures))
            can = sorted(m.name for m in builtin_methods().values() if m.supports(structure))
            raise FormulationError(
                f"method {self.name!r} does not support structure {str(structure)!r}; it supports: {shown}. "
                f"Methods that support {structure.label}: {', '.join(can)}."
            )

    def check_options(self, options: Mapping[str, Any]) -> None:
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            raise FormulationError(f"unknown option(s) {unknown} for method {self.name!r} "
                                   f"({self.formulation.__name__}); its options are its fields: {list(self.options)}.")

    # ------------------------------------------------------------------ building problems
    def sparsity_for(self, structure: Structure, ratio: float):
        """The SparsitySpec of a per-module problem (unstructured / N:M) at ``ratio``; None when nothing is pruned."""
        from ..formulations import NM, Unstructured

        if structure.kind == "nm":
            return NM(structure.n, structure.m)
        if ratio <= 0:
            return None
        return Unstructured(float(ratio), scope=self.formulation.unstructured_scope)

    def formulation_for(self, layer, sparsity, options: Mapping[str, Any]):
        """The layer problem: ``formulation(layer=layer, sparsity=sparsity, **options)``, or, for a class that states
        itself as the end of a reduction chain (a ``via_reductions`` classmethod, e.g. SPAP's PenaltyRelaxation),
        ``formulation.via_reductions(layer, sparsity, **options)``: the chain's end problem, which carries the chain."""
        self.check_options(options)
        via = getattr(self.formulation, "via_reductions", None)
        if callable(via):
            return via(layer, sparsity, **dict(options))
        return self.formulation(layer=layer, sparsity=sparsity, **dict(options))


def _structures_from_type(cls: type) -> frozenset:
    from ..formulations import NM, Channels, SparsitySpec, Unstructured

    try:
        hint = typing.get_type_hints(cls).get("sparsity")
    except Exception:  # noqa: BLE001 -- unresolvable annotations: accept every structure, validate() decides
        hint = None
    kinds = {Unstructured: "unstructured", NM: "nm", Channels: "channels"}
    args = typing.get_args(hint) if typing.get_origin(hint) in (Union, getattr(__import__("types"), "UnionType", Union)) \
        else (hint,)
    out = {kinds[a] for a in args if a in kinds}
    if not out or any(a is SparsitySpec or a is None or a is typing.Any for a in args):
        out |= set(KINDS)
    return frozenset(out)


# ---------------------------------------------------------------------------------------------- registry
def builtin_methods() -> dict[str, Method]:
    """``{short name: Method}`` of the built-in formulations (``method_name`` set), in table order."""
    import prunekit.formulations as formulations

    out = {}
    for cls_name in BUILTIN_FORMULATIONS:
        cls = getattr(formulations, cls_name)
        out[cls.method_name] = Method(cls)
    for name, cls in _EXTRA.items():
        out[name] = Method(cls)
    return out


def method_names() -> list[str]:
    return list(builtin_methods())


def register_method(formulation: type, name: Optional[str] = None) -> Method:
    """Give a user formulation a short name (``--method NAME``); returns its Method."""
    method = Method(formulation)
    name = name or formulation.__dict__.get("method_name")
    if not name:
        raise FormulationError("register_method needs a name (or a method_name class attribute).")
    taken = builtin_methods().get(name)
    if taken is not None and taken.formulation is not formulation:
        raise FormulationError(f"method name {name!r} is taken by {taken.formulation.__name__}. Fix: choose another.")
    _EXTRA[name] = formulation
    return method


def unregister_method(name: str) -> None:
    _EXTRA.pop(name, None)


def resolve_method(value: Union[str, type, Method], *, check_solver: bool = True) -> Method:
    """A Method from a built-in name, ``"module:Class"``, ``"file.py:Class"``, a Formulation class or a Method."""
    if isinstance(value, Method):
        method = value
    elif isinstance(value, type):
        method = Method(value)
    elif isinstance(value, str):
        builtins = builtin_methods()
        if value in builtins:
            method = builtins[value]
        elif ":" in value:
            method = Method(_import_reference(value))
        else:
            raise FormulationError(f"unknown method {value!r}; built-in methods: {', '.join(builtins)}. Fix: use one of "
                                   f"them, or name a formulation of your own as 'package.module:ClassName' (or "
                                   f"'file.py:ClassName').")
    else:
        raise FormulationError(f"method must be a name, 'module:Class' or a Formulation class, got {value!r}.")
    if check_solver:
        _check_solver(method)
    return method


def _import_reference(reference: str) -> type:
    module_name, _, attr = reference.rpartition(":")
    if not module_name or not attr:
        raise FormulationError(f"method reference {reference!r} must read 'package.module:ClassName'.")
    try:
        if module_name.endswith(".py"):
            path = Path(module_name).expanduser().resolve()
            if not path.is_file():
                raise FormulationError(f"method file {path} does not exist. Fix: check the path in {reference!r}.")
            spec = importlib.util.spec_from_file_location(f"prunekit_user_{path.stem}", path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[spec.name] = module
            spec.loader.exec_module(module)
        else:
            if "" not in sys.path and str(Path.cwd()) not in sys.path:  # like `python -m`: the cwd is importable
                sys.path.insert(0, str(Path.cwd()))
            module = importlib.import_module(module_name)
    except FormulationError:
        raise
    except ImportError as exc:
        raise FormulationError(f"cannot import {module_name!r} for method {reference!r}: {exc}. Fix: run from the "
                               f"folder holding it, add it to PYTHONPATH, or pass 'path/to/file.py:{attr}'.") from exc
    except Exception as exc:  # noqa: BLE001 -- the user's module raised while importing
        raise FormulationError(f"importing {module_name!r} for method {reference!r} failed: "
                               f"{type(exc).__name__}: {exc}") from exc
    cls = module
    for part in attr.split("."):
        cls = getattr(cls, part, None)
        if cls is None:
            raise FormulationError(f"{module_name!r} has no {attr!r} (method {reference!r}).")
    if not isinstance(cls, type):
        raise FormulationError(f"{reference!r} is a {type(cls).__name__}, not a Formulation class.")
    return cls


def _check_solver(method: Method) -> None:
    from ..solvers.registry import solvers_for

    if not solvers_for(method.formulation):
        raise FormulationError(
            f"no solver is registered for {method.formulation.__name__}, so method {method.name!r} cannot run. Fix: "
            f"register one, e.g. @register_solver({method.formulation.__name__}, backend='torch') on a Solver class, "
            f"in the module that defines the formulation."
        )


# ---------------------------------------------------------------------------------------------- units
AUTO_ROUND_TO = 64
"""Kept-width multiple of ``round_to="auto"`` for wide groups (fast-kernel friendly; measured in benchmarks/ROUND_TO.md)."""
AUTO_MIN_UNITS = 1024
"""Groups with fewer units than this are not rounded by ``"auto"`` (heads, small models): [derived] rule."""


def resolve_round_to(round_to, num_units: int) -> int:
    """The multiple kept widths are rounded to: an int as given; ``"auto"`` -> 64 for groups of >= 1024 units
    (MLP channels of real models), 1 otherwise ([derived]: not from a paper; rounding up keeps at most 63 more
    units, e.g. 1076 -> 1088 of 1536 on SmolLM2 at 30%)."""
    if round_to == "auto":
        return AUTO_ROUND_TO if num_units >= AUTO_MIN_UNITS else 1
    return int(round_to)


def units_pruned(num_units: int, ratio: float, round_to=1) -> int:
    """Units removed at ``ratio``: keep ``ceil(n (1 - ratio))`` (FASP's n(1-s)), rounded to a multiple of round_to.

    The kept count is rounded **up** to a multiple of ``round_to`` (an int, or "auto": see
    :func:`resolve_round_to`; capped at ``num_units``), so pruned widths suit fast kernels; at least one unit is kept.
    """
    round_to = resolve_round_to(round_to, num_units)
    keep = num_units - int(math.floor(ratio * num_units + 1e-9))
    if round_to > 1:
        keep = min(num_units, int(math.ceil(keep / round_to)) * round_to)
    return max(0, min(num_units - max(keep, 1), num_units - 1))


def group_spec(units, ratio: float, round_to=1):
    """A Channels spec over the group's units (explicit column partition), or None when nothing is pruned."""
    from ..formulations import Channels

    count = units_pruned(len(units), ratio, round_to)
    if count == 0:
        return None
    return Channels(count=count, groups=tuple(tuple(u) for u in units))


def kept_units_from_solution(solution, units) -> tuple[int, ...]:
    """Units whose downstream columns are all kept by ``solution`` (kept_columns, else the mask's kept columns)."""
    if solution.kept_columns is not None:
        kept = {int(c) for c in solution.kept_columns.tolist()}
    else:
        col_kept = solution.mask.bool().all(dim=0)
        kept = {int(c) for c in col_kept.nonzero().flatten().tolist()}
    return tuple(u for u, cols in enumerate(units) if all(int(c) in kept for c in cols))


__all__ = ["BUILTIN_FORMULATIONS", "Method", "builtin_methods", "group_spec", "kept_units_from_solution",
           "method_names", "register_method", "resolve_method", "resolve_round_to", "unregister_method",
           "units_pruned"]
