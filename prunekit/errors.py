"""Error classes of prunekit.

Every error names the problem and proposes the fix, in one message.  One class per rule family:

* :class:`FormulationError` and its subclasses -- a formulation, its layer data or its sparsity
  specification is invalid (shapes, non-finite values, a Gram matrix that is not PSD, a sparsity that
  does not fit the layer).
* :class:`NoSolverError` -- no registered backend accepts a formulation; lists every backend tried and
  why it declined.
* :class:`BackendUnavailable` -- a backend's optional dependency is not installed.
* :class:`NumericalError` -- a solver could not produce a finite answer (e.g. Cholesky failed after
  every damping escalation).  prunekit never returns NaN silently.
* :class:`VerificationError` -- a claim or conformance check failed.
* :class:`ModelError` -- an unsupported architecture, a model that cannot be found or loaded.
* :class:`DataError` -- calibration or evaluation data missing or malformed.
* :class:`OptionsError` -- an unknown or wrongly typed solver option (also a ``TypeError``, as ``**kwargs``
  mistakes are in Python).
* :class:`DeviceError` -- a device that is not understood or not available on this machine.

The ``prunekit`` command line prints any :class:`PrunekitError` as one line ``prunekit: error: ...`` (exit 2).
"""

from __future__ import annotations


class PrunekitError(Exception):
    """Base class of all prunekit errors."""


class FormulationError(PrunekitError, ValueError):
    """A formulation (or its data) violates a declared rule."""


class ShapeError(FormulationError):
    """Tensor shapes do not match (e.g. weight m x n against a Gram that is not n x n)."""


class NonFiniteError(FormulationError):
    """A weight, Gram matrix or statistic contains NaN or Inf."""


class GramError(FormulationError):
    """The Gram matrix is not symmetric positive semidefinite, or is singular where a solve needs it."""


class SparsityError(FormulationError):
    """The sparsity specification is invalid or does not fit the layer."""


class NoSolverError(PrunekitError, LookupError):
    """No registered solver accepts the formulation with the requested backend."""


class BackendUnavailable(PrunekitError, ImportError):
    """An optional backend dependency (e.g. cvxpy) is not installed."""


class NumericalError(PrunekitError, ArithmeticError):
    """A solver failed numerically (non-finite result, factorization failure after escalation)."""


class VerificationError(PrunekitError, AssertionError):
    """A claim or conformance check failed."""


class ModelError(PrunekitError, ValueError):
    """A model cannot be found, loaded, or is of an unsupported architecture."""


class DataError(PrunekitError, ValueError):
    """Calibration or evaluation data is missing or malformed."""


class OptionsError(FormulationError, TypeError):
    """A solver option is unknown or has the wrong type (a FormulationError and a TypeError)."""


class DeviceError(PrunekitError, ValueError):
    """A device string is not understood, or the device is not available on this machine."""


__all__ = [
    "PrunekitError",
    "FormulationError",
    "ShapeError",
    "NonFiniteError",
    "GramError",
    "SparsityError",
    "NoSolverError",
    "BackendUnavailable",
    "NumericalError",
    "VerificationError",
    "ModelError",
    "DataError",
    "OptionsError",
    "DeviceError",
]
