"""The Formulation base class: an immutable, validated statement of one pruning problem.

A formulation is data: a frozen dataclass over :class:`~prunekit.formulations.layer.LayerData`, a
:class:`~prunekit.formulations.sparsity.SparsitySpec` and the method's hyperparameters.  Solving is a pure
function of it (``prunekit.solve``), which returns a new :class:`~prunekit.solvers.solution.Solution`.

Every formulation

* validates itself at construction (``validate``), raising a :class:`~prunekit.errors.FormulationError`
  that names the offending term and proposes a fix;
* exposes its structure once through ``form`` (:class:`~prunekit.formulations.form.ProblemForm`);
* evaluates its ``objective`` and the ``residuals`` (certificates) of any solution, so one checker judges
  the output of every backend alike;
* declares a ``guarantee`` (:class:`Guarantee`): what the verification suite may test about the problem
  it states relative to the problem users care about (the masked reconstruction MIP).
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from dataclasses import dataclass, fields
from functools import cached_property
from typing import TYPE_CHECKING, Any, ClassVar, Mapping, Optional

import torch

from ..errors import ShapeError
from .form import ProblemForm
from .layer import LayerData
from .sparsity import SparsitySpec

if TYPE_CHECKING:  # pragma: no cover
    from ..solvers.solution import Solution


class Guarantee(enum.Enum):
    """What a formulation, reduction or solver guarantees about its answer.

    EXACT       -- the optimum (or the transformed problem's optimum) equals that of the original problem.
    RELAXATION  -- the optimum bounds the original optimum (lower bound for a minimization).
    HEURISTIC   -- feasible answers with no optimality guarantee.
    """

    EXACT = "exact"
    RELAXATION = "relaxation"
    HEURISTIC = "heuristic"


@dataclass(frozen=True, eq=False)
class Formulation(ABC):
    """Abstract layer-level pruning problem over ``layer`` (W, G, ...).

    Subclasses are frozen dataclasses that add their own fields (sparsity spec, hyperparameters), set the
    class attributes ``guarantee`` and ``paper``, and implement ``_form`` and, where they have more
    certificates than feasibility and objective, ``_extra_residuals``.
    """

    layer: LayerData

    guarantee: ClassVar[Guarantee] = Guarantee.HEURISTIC
    paper: ClassVar[str] = ""

    # ---- what the model pipeline reads (``prunekit.models.methods.Method``); user formulations may override ----
    method_name: ClassVar[Optional[str]] = None
    """Short name of a built-in method (``--method wanda``); user classes are named ``module:Class``."""
    structures: ClassVar[Optional[frozenset]] = None
    """Structures the formulation accepts, a subset of {"unstructured", "nm", "channels"}; None derives them from
    the type of the ``sparsity`` field (Unstructured, NM, Channels, a Union of them, or SparsitySpec = all three)."""
    statistics: ClassVar[frozenset] = frozenset({"gram", "mean"})
    """Calibration statistics the formulation reads from its LayerData: "gram" (G = X X^T), "mean" (input mean),
    "star" (G* and X X*^T, intra-layer error correction); empty = no calibration data (magnitude)."""
    unstructured_scope: ClassVar[str] = "row"
    """Comparison group of an unstructured ratio: "row" (per output row) or "layer" (one threshold)."""
    calibration_mode: ClassVar[str] = "propagated"
    """Default way inputs reach each block (``CalibrationSettings.mode`` "auto" resolves to it)."""
    column_score: ClassVar[str] = "fasp"
    """Column importance used by model-level allocation pre-passes (a key of ``formulations.scores.COLUMN_SCORES``)."""

    def __post_init__(self) -> None:
        if not isinstance(self.layer, LayerData):
            raise TypeError(f"layer must be a LayerData, got {type(self.layer).__name__}.")
        self.validate()

    # ------------------------------------------------------------------ rules
    def validate(self) -> None:
        """Check the declared rules; raise a FormulationError naming the problem and the fix."""
        spec = self.sparsity_spec
        if spec is not None:
            if not isinstance(spec, SparsitySpec):
                raise TypeError(f"sparsity must be a SparsitySpec, got {type(spec).__name__}.")
            spec.validate_for(self.layer.shape)

    @property
    def sparsity_spec(self) -> Optional[SparsitySpec]:
        """The formulation's sparsity spec (``self.sparsity``) or None for fixed-mask problems."""
        return getattr(self, "sparsity", None)

    # ------------------------------------------------------------------ structure
    @cached_property
    def form(self) -> ProblemForm:
        """Structural facts (cached)."""
        return self._form()

    @abstractmethod
    def _form(self) -> ProblemForm:
        """Compute the structural facts of this problem."""

    def _base_form(self, *, is_mixed_integer: bool, has_bilinear: bool = False, is_convex: bool = False,
                   row_separable: bool = True) -> ProblemForm:
        spec = self.sparsity_spec
        m, n = self.layer.shape
        return ProblemForm(
            is_mixed_integer=is_mixed_integer,
            has_bilinear=has_bilinear,
            is_convex=is_convex,
            row_separable=row_separable,
            structured=bool(spec is not None and spec.structured),
            num_weights=m * n,
            in_features=n,
        )

    # ------------------------------------------------------------------ evaluation
    def objective(self, weights: torch.Tensor, bias: Optional[torch.Tensor] = None) -> float:
        """Reconstruction error 1/2 ||W_hat X - W X||_F^2 (error-corrected form when X* is given)."""
        return self.layer.reconstruction_error(weights, bias)

    def residuals(self, solution: "Solution") -> dict[str, float]:
        """Certificates of ``solution``: feasibility, objective, and method-specific optimality measures.

        Keys always present:

        * ``mask_violations`` -- structural units whose pruned count breaks the sparsity spec (0 = ok);
        * ``pruned_max_abs`` -- max |W_hat| on pruned entries (0 for a consistent solution);
        * ``nonfinite`` -- number of NaN/Inf entries in the weights;
        * ``objective`` -- the formulation's objective at the solution;
        * ``relative_error`` -- objective / (1/2 ||W X||^2).
        """
        w = solution.weights
        if tuple(w.shape) != self.layer.shape:
            raise ShapeError(f"solution weights have shape {tuple(w.shape)}, expected {self.layer.shape}.")
        mask = solution.mask.bool()
        spec = self.sparsity_spec
        out: dict[str, float] = {}
        out["mask_violations"] = float(spec.violations(mask)) if spec is not None else 0.0
        pruned = w.detach()[~mask]
        out["pruned_max_abs"] = float(pruned.abs().max()) if pruned.numel() else 0.0
        out["nonfinite"] = float((~torch.isfinite(w)).sum())
        obj = self.objective(w, solution.bias) if out["nonfinite"] == 0 else float("nan")
        out["objective"] = obj
        energy = self.layer.dense_energy()
        out["relative_error"] = obj / energy if energy > 0 else obj
        out.update(self._extra_residuals(solution))
        return out

    def _extra_residuals(self, solution: "Solution") -> Mapping[str, float]:
        """Method-specific certificates (e.g. KKT stationarity); none by default."""
        return {}

    # ------------------------------------------------------------------ canonical instances
    @classmethod
    def example(cls, rng) -> "Formulation":
        """A small random instance (n <= 12) of this formulation, drawn from the numpy Generator ``rng``.

        The conformance suite calls it for every formulation type that has a registered solver, so
        registering a solver is enough to get it tested. Subclasses implement it (see
        ``prunekit.verification.toy.random_layer``).
        """
        raise NotImplementedError(f"{cls.__name__}.example(rng) is not implemented; the conformance suite needs it.")

    # ------------------------------------------------------------------ sugar
    def solve(self, backend: str = "auto", options: Any = None, **overrides: Any) -> "Solution":
        """Sugar for ``prunekit.solve(self, backend, options, **overrides)``; caches nothing."""
        from ..solvers import solve

        return solve(self, backend=backend, options=options, **overrides)

    def describe(self) -> dict[str, Any]:
        """A JSON-friendly description (class, shape, hyperparameters), used in provenance."""
        out: dict[str, Any] = {"formulation": type(self).__name__, "shape": list(self.layer.shape)}
        for f in fields(self):
            if f.name == "layer":
                continue
            v = getattr(self, f.name)
            if isinstance(v, torch.Tensor):
                out[f.name] = f"tensor{tuple(v.shape)}"
            elif isinstance(v, SparsitySpec):
                out[f.name] = v.describe()
            elif isinstance(v, (int, float, str, bool, type(None))):
                out[f.name] = v
            else:
                out[f.name] = repr(v)
        return out


def restoration_stationarity(layer: LayerData, weights: torch.Tensor, mask: torch.Tensor) -> float:
    """Relative KKT residual of the fixed-mask restoration problem (methods.md §1, fact 2).

    For min 1/2 tr((W_hat - W) G (W_hat - W)^T) s.t. W_hat = 0 off ``mask``, the gradient
    (W_hat - W) G must vanish on every kept entry.  Returns
    ``max |((W_hat - W) G)_kept| / max(max |W G|, tiny)``.  With damping, the damped Gram G + lambda I
    is the one whose stationarity is exact; this function uses the damped G for that reason.
    """
    g = layer.damped_gram(dtype=torch.float64, device=weights.device)
    w = layer.weight.detach().to(device=weights.device, dtype=torch.float64)
    grad = (weights.detach().double() - w) @ g
    scale = float((w @ g).abs().max()) or 1.0
    kept = grad[mask.bool()]
    return float(kept.abs().max()) / scale if kept.numel() else 0.0
