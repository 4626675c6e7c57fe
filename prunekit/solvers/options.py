"""Typed solver options.  Options travel as dataclasses, never as free-form ``**kwargs``.

Solvers declare their ``options_type`` (a subclass of :class:`SolverOptions`); ``prunekit.solve`` builds
the default instance and applies keyword overrides with :func:`dataclasses.replace`, so a misspelt option
is an error that lists the valid names.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Optional

import torch

from ..errors import FormulationError

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
        if self.dtype not in _DTYPES:
            raise FormulationError(f"options.dtype must be one of {sorted(_DTYPES)}, got {self.dtype!r}.")
        if self.row_batch is not None and self.row_batch <= 0:
            raise FormulationError(f"options.row_batch must be positive, got {self.row_batch}.")

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


def build_options(options_type: type, options: Optional[SolverOptions], overrides: dict[str, Any]) -> SolverOptions:
    """Instantiate ``options_type`` (or take ``options``) and apply keyword ``overrides``."""
    if options is None:
        options = options_type()
    elif not isinstance(options, SolverOptions):
        raise TypeError(f"options must be a SolverOptions dataclass, got {type(options).__name__}.")
    elif not isinstance(options, options_type):
        # A generic SolverOptions given to a solver with richer options: carry the shared fields over.
        shared = {f.name for f in dataclasses.fields(options_type)} & {f.name for f in dataclasses.fields(options)}
        options = options_type(**{name: getattr(options, name) for name in shared})
    if overrides:
        valid = {f.name for f in dataclasses.fields(options)}
        unknown = sorted(set(overrides) - valid)
        if unknown:
            raise TypeError(
                f"unknown solver option(s) {unknown} for {type(options).__name__}; valid options: {sorted(valid)}."
            )
        options = dataclasses.replace(options, **overrides)
    return options
