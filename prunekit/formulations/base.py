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
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, fields
from functools import cached_property
from typing import TYPE_CHECKING, Any, ClassVar, Mapping, Optional

import torch

from ..errors import FormulationError, ShapeError
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
    """Calibration statistics the formulation reads from its LayerData: "gram" (the full G = X X^T), "norms" (only
    diag G = ||X_j||^2: the model pipeline then accumulates the diagonal alone, O(N n) instead of O(N n^2)),
    "mean" (input mean), "star" (G* and X X*^T, intra-layer error correction); empty = no calibration data
    (magnitude: the pipeline runs no calibration forward at all).  A formulation that declares "gram" or "star"
    refuses a layer with diagonal statistics."""
    statistics_dtype: ClassVar[str] = "float32"
    """Accumulation dtype the model pipeline uses for this formulation's statistics: "float32" (SparseGPT's and
    Wanda's reference implementations accumulate in float32) or "float64" (where the formulation's objective
    involves cancellations, e.g. FISTAPruner's error-corrected terms)."""
    unstructured_scope: ClassVar[str] = "row"
    """Comparison group of an unstructured ratio: "row" (per output row) or "layer" (one threshold)."""
    calibration_mode: ClassVar[str] = "propagated"
    """Default way inputs reach each block (``CalibrationSettings.mode`` "auto" resolves to it)."""
    column_score: ClassVar[str] = "fasp"
    """Column importance used by model-level allocation pre-passes (a key of ``formulations.scores.COLUMN_SCORES``)."""

    def __post_init__(self) -> None:
        if not isinstance(self.layer, LayerData):
            raise TypeError(f"layer must be a LayerData, got {type(self.layer).__name__}.")
        if self.layer.is_diagonal and self.statistics & {"gram", "star"}:
            raise FormulationError(
                f"{type(self).__name__} needs the full Gram G = X X^T, but the layer holds only its diagonal "
                f"(||X_j||^2). Fix: build LayerData with the (n, n) Gram (GramAccumulator(diagonal=False)).")
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
        * ``relative_error`` -- objective / (1/2 ||W X||^2);
        * ``objective_undamped`` -- the layer's reconstruction error ``F(W_hat) = 1/2 ||W_hat X(*) - W X||_F^2``
          on the collected statistics, no damping (equal to ``objective`` for every reconstruction formulation);
        * ``objective_damped`` -- ``F(W_hat) + 1/2 sum_j delta_j ||W_hat[:, j] - W[:, j]||^2``, the objective of
          the damped problem that the restoration/OBS solvers minimize (G replaced by ``layer.damped_gram()``:
          ``delta_j = lambda``, plus 1 on dead inputs G_jj = 0); see :func:`damping_term`.
        """
        try:
            return self._residuals(solution)
        finally:
            self.layer.forget_products()  # the (W_hat - W) G the certificates shared

    def _residuals(self, solution: "Solution") -> dict[str, float]:
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
        out.update(damped_and_undamped(self, w, solution.bias, obj))
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


def damping_term(layer: LayerData, weights: torch.Tensor) -> float:
    """``1/2 sum_j delta_j ||W_hat[:, j] - W[:, j]||^2``: what the damping adds to the reconstruction error.

    ``delta_j = layer.damping_value()`` plus 1 where ``G_jj = 0`` -- exactly ``diag(layer.damped_gram()) - diag G``,
    so ``F(W_hat) + damping_term`` is ``1/2 tr((W_hat - W)(G + lambda I)(W_hat - W)^T)`` (dead inputs at G_jj := 1).
    Float64; O(m n).
    """
    w = layer.weight.detach().double()
    delta = layer.damping_delta(w.device)
    d = weights.detach().to(device=w.device, dtype=torch.float64) - w
    return float(0.5 * torch.sum(d * d * delta.unsqueeze(0)))


def damped_and_undamped(formulation: "Formulation", weights: torch.Tensor, bias: Optional[torch.Tensor],
                        objective: float) -> dict[str, float]:
    """``{"objective_undamped", "objective_damped"}`` of ``weights``; ``objective`` (the formulation's own value) is
    reused as the undamped one when the formulation does not override :meth:`Formulation.objective`, so the
    reconstruction error is computed once."""
    if not math.isfinite(objective):
        return {"objective_undamped": objective, "objective_damped": objective}
    if type(formulation).objective is Formulation.objective:
        undamped = objective
    else:
        undamped = formulation.layer.reconstruction_error(weights, bias)
    return {"objective_undamped": undamped, "objective_damped": undamped + damping_term(formulation.layer, weights)}


def restoration_stationarity(layer: LayerData, weights: torch.Tensor, mask: torch.Tensor) -> float:
    """Relative KKT residual of the fixed-mask restoration problem (methods.md §1, fact 2).

    For min 1/2 tr((W_hat - W) G (W_hat - W)^T) s.t. W_hat = 0 off ``mask``, the gradient
    (W_hat - W) G must vanish on every kept entry.  Returns
    ``max |((W_hat - W) G)_kept| / max(max |W G|, tiny)``.  With damping, the damped Gram G + lambda I
    is the one whose stationarity is exact; this function uses the damped G for that reason.
    """
    w = layer.weight.detach().double()
    d = weights.detach().to(device=w.device, dtype=torch.float64) - w
    # (W_hat - W)(G + diag delta): the objective's product (W_hat - W) G, shared, plus the damping's diagonal
    grad = layer.error_gram(weights) + d * layer.damping_delta(w.device).unsqueeze(0)
    scale = layer.damped_weight_gram_max() or 1.0
    kept = grad[mask.bool().to(grad.device)]
    return float(kept.abs().max()) / scale if kept.numel() else 0.0
