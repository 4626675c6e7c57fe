"""Typed solver options.  Options travel as dataclasses, never as free-form ``**kwargs``.

Solvers declare their ``options_type`` (a subclass of :class:`SolverOptions`); ``prunekit.solve`` builds
the default instance and applies keyword overrides with :func:`dataclasses.replace`, so a misspelt option
is an error that lists the valid names.

Every field is checked when an options object is built: a value of the wrong type (``tol="x"``) or out of
range (``max_iter=-1``) raises :class:`~prunekit.errors.OptionsError` (a ``FormulationError`` and a
``TypeError``) that lists every valid field with its type.  :func:`check_solver_options` runs the same check
on a plain mapping (a recipe's ``solver_options``) before anything is solved, and :func:`parse_device` turns a
device string into a ``torch.device`` that exists on this machine, or raises :class:`~prunekit.errors.DeviceError`.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import typing
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Union

import torch

from ..errors import DeviceError, FormulationError, OptionsError

_DTYPES = {"float32": torch.float32, "float64": torch.float64}


@dataclass(frozen=True)
class SolverOptions:
    """Options shared by every solver.

    Attributes
    ----------
    dtype : {"float32", "float64"}
        Compute dtype of the solver's linear algebra (results are cast back to the weight's dtype).
    device : str, optional
        Device to compute on ("cpu", "cuda", "cuda:1"); None = the weight's device.
    seed : int
        Seed for any randomness (tie-breaking, initialization); solvers are deterministic given it.
    tol : float
        Convergence tolerance of iterative solvers.
    max_iter : int
        Iteration limit of iterative solvers.
    row_batch : int, optional
        Rows processed at once by row-parallel solvers (memory bound); None = all rows.
    max_damping_tries : int
        How many times a failed Cholesky escalates the damping (x10 each) before a NumericalError.
    """

    dtype: str = "float32"
    device: Optional[str] = None
    seed: int = 0
    tol: float = 1e-6
    max_iter: int = 1000
    row_batch: Optional[int] = None
    max_damping_tries: int = 8

    def __post_init__(self) -> None:
        _check_types(self)
        if self.dtype not in _DTYPES:
            raise FormulationError(f"options.dtype must be one of {sorted(_DTYPES)}, got {self.dtype!r}. "
                                   f"Fix: use dtype='float32' or 'float64'.")
        if self.row_batch is not None and self.row_batch <= 0:
            raise FormulationError(f"options.row_batch must be positive, got {self.row_batch}. "
                                   f"Fix: use a positive int, or None for all rows.")
        if not (math.isfinite(self.tol) and self.tol >= 0):
            raise FormulationError(f"options.tol must be a finite number >= 0, got {self.tol!r}. Fix: e.g. tol=1e-6.")
        for name in ("max_iter", "max_damping_tries"):
            if getattr(self, name) < 0:
                raise FormulationError(f"options.{name} must be >= 0, got {getattr(self, name)!r}. "
                                       f"Fix: use a non-negative int.")
        if self.device is not None:
            try:
                torch.device(self.device)
            except (RuntimeError, TypeError, ValueError) as exc:
                raise DeviceError(f"options.device {self.device!r} is not a device ({exc}). Fix: use 'cpu', "
                                  f"'cuda', 'cuda:N' or 'mps', or None for the weight's device.") from None

    @property
    def torch_dtype(self) -> torch.dtype:
        return _DTYPES[self.dtype]

    def resolve_device(self, tensor: torch.Tensor) -> torch.device:
        return torch.device(self.device) if self.device is not None else tensor.device

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class ReferenceOptions(SolverOptions):
    """Options of reference (CVXPY/SciPy/brute-force) solvers: float64 on CPU by default."""

    dtype: str = "float64"
    device: Optional[str] = "cpu"
    tol: float = 1e-10


# ---------------------------------------------------------------------------------------------- checking
def type_name(hint) -> str:
    """How errors spell a type annotation: ``"int or None"``, ``"one of 'row', 'layer'"``."""
    origin = typing.get_origin(hint)
    if origin is Union:
        return " or ".join(type_name(a) for a in typing.get_args(hint))
    if origin is typing.Literal:
        return "one of " + ", ".join(map(repr, typing.get_args(hint)))
    return "None" if hint is type(None) else getattr(hint, "__name__", str(hint))


def matches_type(hint, value) -> bool:
    """Whether ``value`` fits the annotation ``hint`` (bool, int, float, str, Optional, Union, Literal; ints count
    as floats, bools as neither).  Annotations it cannot judge (a class of the user's, Callable ...) accept."""
    origin = typing.get_origin(hint)
    if origin is Union:
        return any(matches_type(a, value) for a in typing.get_args(hint))
    if origin is typing.Literal:
        return any(value == a and type(value) is type(a) for a in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is float:
        return isinstance(value, numbers.Real) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    return True


def option_fields(options_type: type = None) -> dict[str, str]:
    """``{field: type name}`` of an options dataclass (``SolverOptions`` by default), in declaration order."""
    options_type = options_type or SolverOptions
    hints = typing.get_type_hints(options_type)
    return {f.name: type_name(hints[f.name]) for f in dataclasses.fields(options_type)}


def _listing(options_type: type) -> str:
    return ", ".join(f"{name} ({kind})" for name, kind in option_fields(options_type).items())


def _check_types(options: SolverOptions) -> None:
    hints = typing.get_type_hints(type(options))
    for f in dataclasses.fields(options):
        value = getattr(options, f.name)
        if f.name == "device" and isinstance(value, torch.device):
            continue
        if not matches_type(hints[f.name], value):
            raise OptionsError(
                f"solver option {f.name}={value!r} has type {type(value).__name__}, expected "
                f"{type_name(hints[f.name])}. Fix: valid options of {type(options).__name__}: "
                f"{_listing(type(options))}.")


def check_solver_options(values: Mapping[str, Any], options_type: type = None) -> None:
    """Check a mapping of solver options (a recipe's ``solver_options``) against ``options_type``'s fields.

    Raises
    ------
    OptionsError
        An unknown name or a wrongly typed value; the message lists every valid field with its type.
    FormulationError / DeviceError
        A value of the right type out of range (e.g. ``max_iter=-1``, ``dtype="int8"``).
    """
    options_type = options_type or SolverOptions
    if not isinstance(values, Mapping):
        raise OptionsError(f"solver options must be a mapping of option name -> value, got "
                           f"{type(values).__name__}. Fix: e.g. {{'tol': 1e-8, 'max_iter': 500}}.")
    valid = option_fields(options_type)
    unknown = sorted(map(str, set(values) - set(valid)))
    if unknown:
        raise OptionsError(f"unknown solver option(s) {unknown} for {options_type.__name__}; valid options: "
                           f"{_listing(options_type)}. Fix: use these names.")
    options_type(**dict(values))


def parse_device(value: Union[str, torch.device], what: str = "device") -> torch.device:
    """A ``torch.device`` for ``value`` that exists on this machine (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``).

    Raises
    ------
    DeviceError
        ``value`` is not a device name (``"gpu"``), or names a device this machine does not have (``"cuda"``
        without CUDA, ``"cuda:3"`` on a one-GPU machine, ``"meta"``).
    """
    if isinstance(value, torch.device):
        device = value
    elif isinstance(value, str) and value.strip():
        try:
            device = torch.device(value.strip())
        except (RuntimeError, ValueError):
            raise DeviceError(f"{what} {value!r} is not a device name. Fix: use 'cpu', 'cuda', 'cuda:N' "
                              f"or 'mps'.") from None
    else:
        raise DeviceError(f"{what} must be a device name such as 'cpu' or 'cuda', got {value!r}. "
                          f"Fix: use 'cpu', 'cuda', 'cuda:N' or 'mps'.")
    if device.type == "cpu":
        return device
    if device.type == "cuda":
        if not torch.cuda.is_available():
            built = f"built with CUDA {torch.version.cuda}" if torch.version.cuda else "built without CUDA"
            raise DeviceError(f"{what} {str(value)!r}: CUDA is not available on this machine (torch "
                              f"{torch.__version__} {built}, no usable GPU). Fix: use 'cpu', or install a CUDA "
                              f"build of torch on a machine with an NVIDIA GPU.")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise DeviceError(f"{what} {str(value)!r}: this machine has {count} CUDA device(s) (cuda:0.."
                              f"cuda:{count - 1}). Fix: use one of them.")
        return device
    if device.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise DeviceError(f"{what} {str(value)!r}: Apple MPS is not available on this machine. Fix: use 'cpu'.")
        return device
    backend = getattr(torch, device.type, None)
    if device.type != "meta" and backend is not None and getattr(backend, "is_available", lambda: False)():
        return device
    raise DeviceError(f"{what} {str(value)!r} cannot run prunekit's computations here. Fix: use 'cpu', 'cuda', "
                      f"'cuda:N' or 'mps'.")


def build_options(options_type: type, options: Optional[SolverOptions], overrides: dict[str, Any]) -> SolverOptions:
    """Instantiate ``options_type`` (or take ``options``) and apply keyword ``overrides``."""
    if options is None:
        options = options_type()
    elif not isinstance(options, SolverOptions):
        raise OptionsError(f"options must be a SolverOptions dataclass, got {type(options).__name__}. "
                           f"Fix: pass SolverOptions(...) or keyword overrides such as tol=1e-8.")
    elif not isinstance(options, options_type):
        # A generic SolverOptions given to a solver with richer options: carry the shared fields over.
        shared = {f.name for f in dataclasses.fields(options_type)} & {f.name for f in dataclasses.fields(options)}
        options = options_type(**{name: getattr(options, name) for name in shared})
    if overrides:
        valid = {f.name for f in dataclasses.fields(options)}
        unknown = sorted(set(overrides) - valid)
        if unknown:
            raise OptionsError(
                f"unknown solver option(s) {unknown} for {type(options).__name__}; valid options: "
                f"{_listing(type(options))}. Fix: use these names."
            )
        options = dataclasses.replace(options, **overrides)
    return options
