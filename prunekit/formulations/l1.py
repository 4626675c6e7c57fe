"""FISTAPruner's l1 relaxation of layer-wise pruning (methods.md §5).

Derived parts [derived, not from the paper]: the initial ``lam`` (the paper does not give it:
``lambda_init="kkt"`` -- the default -- or ``"fraction"``, see :meth:`L1Relaxation.initial_lambda`), the
definitions of ``E_round``/``E_total``, the bisection bracket (start ``[0, inf)``, doubling while unbounded),
the per-row form of the early-stopping rule, the projected warm start as the initial incumbent ``W_best``, the
fallbacks of the warm start, and the optional least-squares ``refit`` of the final support.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from functools import cached_property
from typing import ClassVar, Literal, Mapping, Optional

import torch

from ..errors import FormulationError, NoSolverError
from .base import Formulation, Guarantee
from .form import ProblemForm
from .sparsity import NM, SparsitySpec, Unstructured

WARM_STARTS = ("wanda", "sparsegpt", "dense", "magnitude")
LAMBDA_INITS = ("kkt", "fraction")
ROUNDOFF_ULPS = 16.0
"""Round-off allowance of :func:`lasso_duality_gap`, in units of the dtype's eps times the terms' magnitudes."""


def lasso_duality_gap(weights: torch.Tensor, gram_star: torch.Tensor, cross: torch.Tensor, row_const: torch.Tensor,
                      lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Per-row duality gap and primal value of the lasso ``F_i(w) = 1/2 w G* w^T - w c_i^T + k_i + lam ||w||_1``.

    With ``G* = R R^T`` (``R = X*``), ``c_i = y_i R^T`` and ``k_i = 1/2 ||y_i||^2`` (``y_i = w0_i X``), the row is
    ``1/2 ||w R - y_i||^2 + lam ||w||_1``, whose Fenchel dual is ``max_u y_i u^T - 1/2 ||u||^2`` s.t.
    ``||u R^T||_inf <= lam``.  The residual ``r = y_i - w R`` scaled to ``u = s r``,
    ``s = min(1, lam / ||grad_i||_inf)`` (``r R^T = -grad_i``, ``grad_i = w G* - c_i``) is feasible, so

    .. math::

        \operatorname{gap}_i = F_i(w) - D(u) = 	frac12 (1 - s)^2 \lVert r 
Vert^2 + s\, w \cdot 
abla_i
            + \lambda \lVert w 
Vert_1 \;\ge\; F_i(w) - F_i^* \;\ge\; 0,

    with ``||r||^2 = 2 (F_i(w) - lam ||w||_1)``; the gap is 0 exactly at the optimum (``s = 1``,
    ``w . grad = -lam ||w||_1``).  The returned gap adds a round-off allowance of ``ROUNDOFF_ULPS * eps`` times the
    magnitudes of the summed terms (``|w| |G*| |w|^T + 2 |w| . |c_i| + 2 k_i + lam ||w||_1``), so that the bound
    also holds for the gap as computed in float64 (it is then never exactly 0).  Since the smooth part is quadratic,
    ``F_i(w) - F_i^* >= 1/2 (w - w*) G* (w - w*)^T >= mu/2 ||w - w*||^2`` (``mu = lambda_min(G*)``).  Needs only
    the statistics (never X); valid when they are consistent (one set of tokens).

    Parameters
    ----------
    weights : Tensor (m, n)
    gram_star, cross : Tensor (n, n), (m, n)
    row_const : Tensor (m,)
        ``k_i = 1/2 w0_i G w0_i^T`` (:meth:`L1Relaxation.row_constants`).
    lam : float

    Returns
    -------
    gap, primal : Tensor (m,), Tensor (m,)
        In the dtype of ``weights`` (use float64); ``gap > 0`` by construction, ``primal = F_i(w)``.
    """
    eps = torch.finfo(weights.dtype).eps
    a = weights.abs()
    magnitude = ((a @ gram_star.abs()) * a).sum(dim=1) + 2.0 * (a * cross.abs()).sum(dim=1) + 2.0 * row_const.abs()
    wg = weights @ gram_star
    grad = wg - cross
    smooth = (0.5 * (wg * weights).sum(dim=1) - (weights * cross).sum(dim=1) + row_const).clamp_min(0.0)
    l1 = weights.abs().sum(dim=1)
    gmax = grad.abs().amax(dim=1) if grad.shape[1] else torch.zeros_like(l1)
    s = torch.where(gmax > lam, lam / gmax.clamp_min(torch.finfo(gmax.dtype).tiny), torch.ones_like(gmax))
    gap = 0.5 * (1.0 - s) ** 2 * (2.0 * smooth) + s * (weights * grad).sum(dim=1) + lam * l1
    return gap.clamp_min(0.0) + ROUNDOFF_ULPS * eps * (magnitude + lam * l1), smooth + lam * l1


@dataclass(frozen=True, eq=False)
class L1Relaxation(Formulation):
    r"""l1-relaxed reconstruction (FISTAPruner, Zhao et al., arXiv 2408.03728, EMNLP 2025).

    With ``W`` (m x n) the dense weight, ``X`` its dense inputs and ``X*`` the error-corrected inputs
    (``layer.gram_star``/``layer.cross``; without them ``X* = X``), ``G* = X* X*^T`` (n x n) and
    ``C = W X X*^T`` (m x n):

    .. math::

        \min_{W^*}\; f(W^*) + \lambda \lVert W^* \rVert_1, \qquad
        f(W^*) = \tfrac12 \lVert W^* X^* - W X \rVert_F^2, \quad \nabla f = W^* G^* - C,
        \quad L = \lambda_{\max}(G^*).

    ``project=True`` (FISTAPruner): the lasso is solved approximately by ``K`` FISTA steps from a warm start
    (Wanda/SparseGPT/magnitude/dense), projected onto ``sparsity`` by hard thresholding, and (``adaptive``) λ
    is adapted over ``T`` rounds by the ratio ``E_round/E_total`` against ``xi``
    (``E_round = ||(H(W_K) - W_K) X*||_F``, ``E_total = ||H(W_K) X* - W X||_F``, both [derived]); the best
    projected iterate (smallest ``E_total``) is returned.  Guarantee: HEURISTIC for the masked MIP.

    ``project=False, adaptive=False`` is the pure lasso (3) at fixed ``lam`` (convex; claims C8, C10, C11); its
    ``objective`` is then ``F = f + lam ||W||_1`` and no sparsity spec is enforced.  Its certificates
    (``residuals``) come from a feasible dual point (:func:`lasso_duality_gap`), so they *bound* the error:

    * ``lasso_gap`` -- ``gap / F(W)`` with ``gap >= F(W) - F*``;
    * ``lasso_output_distance`` -- ``sqrt(2 gap) / ||W X||_F >= ||(W - W*) X*||_F / ||W X||_F``: the distance in the
      problem's own geometry (always finite; ``W* X*`` is unique even when ``W*`` is not).  Per row it is the
      stopping certificate of the torch solver (``eps``);
    * ``lasso_distance`` -- ``sqrt(2 gap / mu) / ||W||_F >= ||W - W*||_F / ||W||_F`` (``W`` the dense weight) with
      ``mu`` = :meth:`strong_convexity` ``= lambda_min(G*)``; present only when ``G*`` is numerically positive
      definite (otherwise the optimum need not be unique and no distance bound exists);
    * ``lasso_kkt`` -- max KKT violation / ``lambda_max`` (a stationarity measure, not a bound on the distance).

    The bounds assume consistent statistics (``G = X X^T``, ``G* = X* X*^T``, ``C = W X X*^T`` from the same
    tokens, as :class:`~prunekit.formulations.layer.LayerData` accumulates them); the problem is *undamped*.

    Parameters
    ----------
    sparsity : Unstructured or NM
    lam : float, optional
        λ >= 0 (initial λ of the adaptive loop); default from ``lambda_init``.
    lambda_init : {"kkt", "fraction"}
        [derived] Rule for the initial λ when ``lam`` is None. ``"kkt"`` (default): the median of
        ``|∇f(W_p)_ij|`` over the entries that the projected warm start ``W_p`` prunes -- the λ at which half of
        those zeros satisfy the lasso's optimality condition ``|∇f_ij| <= λ`` -- so the l1 term is on the scale of
        the gradients that decide the support.  ``"fraction"``: ``1e-2 * lambda_max()`` (this package's earlier
        default).  On smollm2-135m layers, ``"fraction"`` started 2-4 orders of magnitude too high: three
        halvings never got the projected iterate below the warm start's error, so FISTAPruner returned its warm
        start unchanged (benchmarks/RESULTS.md).
    refit : bool
        [derived, not in FISTAPruner] After the outer loop, replace the kept weights by the damped least-squares
        optimum on the chosen support (the "relaxed lasso" debiasing step): per row
        ``W_S = (C_S + δ U_S)(G*_SS + δI)^{-1}`` with ``U G* = C`` (``U = W`` without error correction, where this
        is exactly :class:`FixedMaskRestoration` on the chosen mask; δ = the layer's damping); kept only if it
        lowers ``E_total``.
    adaptive : bool
    K, T : int
        FISTA steps per round, outer rounds (paper: 20, 3).
    xi : float
        Threshold on ``E_round / E_total`` (paper: 0.3).
    eps : float
        Early stop of a row (0 disables it).  Projected mode (the paper's Eq. 6): once
        ``||w_k - w_{k-1}|| <= eps ||w_{k-1}||``.  Pure-lasso mode: once the row's certified output distance
        ``sqrt(2 gap_i) / ||w0_i X|| <= eps`` (:func:`lasso_duality_gap`, so ``||(w_i - w*_i) X*|| <= eps ||w0_i X||``);
        the solver reports ``"solved"`` only when every row meets it, so ``residuals["lasso_output_distance"] <= eps``
        then.
    warm_start : {"wanda", "sparsegpt", "dense", "magnitude"}
    threshold_group : {"row", "layer"}, optional
        Comparison group of the hard threshold; must agree with an Unstructured spec's ``scope`` (default: it).
    project : bool
    """

    sparsity: SparsitySpec
    lam: Optional[float] = None
    adaptive: bool = True
    K: int = 20
    T: int = 3
    xi: float = 0.3
    eps: float = 1e-6
    warm_start: Literal["wanda", "sparsegpt", "dense", "magnitude"] = "wanda"
    threshold_group: Optional[Literal["row", "layer"]] = None
    project: bool = True
    lambda_init: Literal["kkt", "fraction"] = "kkt"
    refit: bool = False

    guarantee: ClassVar[Guarantee] = Guarantee.HEURISTIC
    paper: ClassVar[str] = "FISTAPruner (Zhao et al., arXiv 2408.03728, EMNLP 2025)"
    method_name: ClassVar[str] = "fista"
    structures: ClassVar[frozenset] = frozenset({"unstructured", "nm"})
    statistics: ClassVar[frozenset] = frozenset({"gram", "mean", "star"})
    statistics_dtype: ClassVar[str] = "float64"
    calibration_mode: ClassVar[str] = "dense_sequential"

    def validate(self) -> None:
        if not isinstance(self.sparsity, (Unstructured, NM)):
            raise FormulationError(
                f"L1Relaxation prunes individual weights (unstructured or N:M), got {type(self.sparsity).__name__}. "
                f"Fix: for channels use PenaltyRelaxation or CoupledStructuredRemoval."
            )
        self.sparsity.validate_for(self.layer.shape)
        super().validate()
        if self.lam is not None and not (isinstance(self.lam, (int, float)) and self.lam >= 0 and self.lam == self.lam):
            raise FormulationError(f"lam must be a number >= 0 (the l1 weight), got {self.lam!r}.")
        for name in ("K", "T"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise FormulationError(f"{name} must be an int >= 1, got {v!r}. Fix: FISTAPruner uses K=20, T=3.")
        if not (isinstance(self.xi, (int, float)) and self.xi > 0):
            raise FormulationError(f"xi must be > 0, got {self.xi!r}. Fix: the paper uses 0.3.")
        if not (isinstance(self.eps, (int, float)) and self.eps >= 0):
            raise FormulationError(f"eps must be >= 0, got {self.eps!r}.")
        if self.warm_start not in WARM_STARTS:
            raise FormulationError(f"warm_start must be one of {WARM_STARTS}, got {self.warm_start!r}.")
        if self.threshold_group not in (None, "row", "layer"):
            raise FormulationError(f"threshold_group must be 'row' or 'layer', got {self.threshold_group!r}.")
        scope = self.sparsity.scope if isinstance(self.sparsity, Unstructured) else "row"
        if self.threshold_group is not None and self.threshold_group != scope:
            raise FormulationError(
                f"threshold_group={self.threshold_group!r} disagrees with the spec ({self.sparsity.describe()}). "
                f"Fix: use Unstructured(ratio, scope={self.threshold_group!r}) (N:M thresholds per row)."
            )
        if self.lambda_init not in LAMBDA_INITS:
            raise FormulationError(f"lambda_init must be one of {LAMBDA_INITS}, got {self.lambda_init!r}.")
        if not isinstance(self.refit, bool):
            raise FormulationError(f"refit must be True or False, got {self.refit!r}.")
        if self.refit and not self.project:
            raise FormulationError("refit re-solves the least squares on the projected support; it needs "
                                   "project=True. Fix: refit=False for the pure lasso.")
        if self.adaptive and not self.project:
            raise FormulationError("adaptive lambda needs the projection (project=True). Fix: adaptive=False.")
        if not self.project and self.lam is None:
            raise FormulationError("the pure-lasso mode (project=False) needs an explicit lam.")

    @property
    def sparsity_spec(self) -> Optional[SparsitySpec]:
        return self.sparsity if self.project else None

    def _form(self) -> ProblemForm:
        return self._base_form(is_mixed_integer=False, is_convex=not self.project, row_separable=not self.adaptive)

    # ------------------------------------------------------------------ smooth part and its constants
    def gram_star(self, dtype: torch.dtype = torch.float64, device=None) -> torch.Tensor:
        g = self.layer.gram_star if self.layer.has_error_correction else self.layer.gram
        return g.detach().to(device=device or g.device, dtype=dtype)

    def cross(self, dtype: torch.dtype = torch.float64, device=None) -> torch.Tensor:
        if self.layer.has_error_correction:
            return self.layer.cross.detach().to(device=device or self.layer.cross.device, dtype=dtype)
        w = self.layer.weight.detach().to(device=device or self.layer.weight.device, dtype=dtype)
        return w @ self.layer.gram.detach().to(device=w.device, dtype=dtype)

    def smooth(self, weights: torch.Tensor) -> float:
        """f(W) = 1/2 ||W X* - W0 X||_F^2 (float64)."""
        return self.layer.reconstruction_error(weights)

    def grad(self, weights: torch.Tensor) -> torch.Tensor:
        """∇f(W) = W G* - C, in the dtype and device of ``weights``."""
        return weights @ self.gram_star(weights.dtype, weights.device) - self.cross(weights.dtype, weights.device)

    @cached_property
    def _spectrum(self) -> tuple[float, float]:
        """(lambda_min, lambda_max) of G* (float64, one eigvalsh per formulation)."""
        g = self.gram_star()
        if not g.numel():
            return 0.0, 0.0
        ev = torch.linalg.eigvalsh(0.5 * (g + g.T))
        return float(ev.min()), float(ev.max())

    def lipschitz(self) -> float:
        """L = lambda_max(G*) (float64)."""
        return self._spectrum[1]

    def strong_convexity(self) -> float:
        """mu: a lower bound on lambda_min(G*) -- the computed one less its round-off ``4 n eps L`` -- or 0.0.

        The lasso is mu-strongly convex, so ``||W - W*||_F^2 <= 2 gap / mu`` when mu > 0.
        """
        lo, hi = self._spectrum
        mu = lo - 4.0 * self.layer.in_features * torch.finfo(torch.float64).eps * max(hi, 0.0)
        return mu if mu > 0 else 0.0

    def row_constants(self, dtype: torch.dtype = torch.float64, device=None) -> torch.Tensor:
        """``k_i = 1/2 w0_i G w0_i^T`` (m,): the constant of row i's smooth part (1/2 ||w0_i X||^2)."""
        w = self.layer.weight.detach().to(device=device or self.layer.weight.device, dtype=dtype)
        return 0.5 * ((w @ self.layer.gram.detach().to(device=w.device, dtype=dtype)) * w).sum(dim=1)

    def lasso_certificate(self, weights: torch.Tensor, lam: Optional[float] = None) -> dict[str, float]:
        """The bounds of the class docstring at ``weights`` (float64): ``lasso_gap``, ``lasso_output_distance`` and,
        when mu > 0, ``lasso_distance``."""
        lam = self.initial_lambda() if lam is None else lam
        w = weights.detach().to(device=self.layer.weight.device, dtype=torch.float64)
        gap, primal = lasso_duality_gap(w, self.gram_star(), self.cross(), self.row_constants(), lam)
        total, value = float(gap.sum()), float(primal.sum())
        out = {"lasso_gap": total / value if value > 0 else 0.0}
        energy = self.layer.dense_energy()
        out["lasso_output_distance"] = math.sqrt(2.0 * total / (2.0 * energy)) if energy > 0 else 0.0
        mu = self.strong_convexity()
        if mu > 0:
            norm = float(torch.linalg.vector_norm(self.layer.weight.detach().double()))
            out["lasso_distance"] = math.sqrt(2.0 * total / mu) / norm if norm > 0 else 0.0
        return out

    def lambda_max(self) -> float:
        """max_ij |C_ij|: W* = 0 is the lasso optimum iff lam >= this (C11)."""
        return float(self.cross().abs().max())

    def initial_lambda(self, projected_warm: Optional[torch.Tensor] = None) -> float:
        """The first λ: ``lam`` if given; else by ``lambda_init`` [derived].

        ``"kkt"`` needs the projected warm start ``W_p`` (m, n): ``median |(W_p G* - C)_ij|`` over ``W_p == 0``
        (falls back to ``"fraction"`` without ``W_p``, without pruned entries, or when that median is 0).
        ``"fraction"``: ``1e-2 * max_ij |C_ij|``.
        """
        if self.lam is not None:
            return float(self.lam)
        fraction = 1e-2 * self.lambda_max()
        if self.lambda_init == "fraction" or projected_warm is None:
            return fraction
        w = projected_warm.detach().double().to(self.layer.weight.device)
        pruned = w == 0
        if not bool(pruned.any()):
            return fraction
        value = float(self.grad(w)[pruned].abs().median())
        return value if value > 0 and math.isfinite(value) else fraction

    def lasso_objective(self, weights: torch.Tensor, lam: Optional[float] = None) -> float:
        lam = self.initial_lambda() if lam is None else lam
        return self.smooth(weights) + lam * float(weights.detach().double().abs().sum())

    def objective(self, weights: torch.Tensor, bias=None) -> float:
        if self.project:
            return self.layer.reconstruction_error(weights, bias)
        return self.lasso_objective(weights)

    def _extra_residuals(self, solution) -> Mapping[str, float]:
        if self.project:
            return {}
        w = solution.weights.detach().double()
        g = self.grad(w)
        lam = self.initial_lambda()
        viol = torch.where(w != 0, (g + lam * torch.sign(w)).abs(), (g.abs() - lam).clamp_min(0.0))
        scale = max(self.lambda_max(), 1e-300)
        return {"lasso_kkt": float(viol.max()) / scale if viol.numel() else 0.0, **self.lasso_certificate(w, lam)}

    # ------------------------------------------------------------------ warm start
    def warm_start_weights(self) -> tuple[torch.Tensor, str]:
        """The warm start (float64, layer device) and the name of the method that produced it.

        "wanda"/"sparsegpt" use the WandaPruning/SparseGPTPruning formulations (torch, float64) when they are
        installed; otherwise Wanda's score-and-threshold rule is applied directly and SparseGPT falls back
        to magnitude [derived fallback].  SparseGPT has no error-correction form, so with X* terms (the
        ``dense_sequential`` pipeline mode) its warm start solves the plain problem on the dense statistics G
        [derived].
        """
        w = self.layer.weight.detach().double()
        if self.warm_start == "dense":
            return w.clone(), "dense"
        spec = self.sparsity
        if self.warm_start in ("wanda", "sparsegpt"):
            name = {"wanda": "WandaPruning", "sparsegpt": "SparseGPTPruning"}[self.warm_start]
            try:
                from importlib import import_module

                cls = getattr(import_module(f".{self.warm_start}", __package__), name)
                from ..solvers import solve

                layer = self.layer
                if self.warm_start == "sparsegpt" and layer.has_error_correction:
                    layer = dataclasses.replace(layer, gram_star=None, cross=None, check_psd=False)
                sol = solve(cls(layer, spec), backend="torch", dtype="float64")
                return sol.weights.detach().double().clone(), self.warm_start
            except (ImportError, AttributeError, NoSolverError):
                pass
            if self.warm_start == "wanda":
                from .scores import wanda

                return w * spec.project(wanda(self.layer)).to(w.dtype), "wanda (score rule)"
        return w * spec.project(w.abs()).to(w.dtype), "magnitude"

    @classmethod
    def example(cls, rng) -> "L1Relaxation":
        from ..verification.toy import random_layer

        n = 4 * int(rng.integers(1, 4))
        m = int(rng.integers(2, 6))
        layer = random_layer(rng, m, n, conditioning=("well", "correlated")[int(rng.integers(0, 2))])
        choice = int(rng.integers(0, 3))
        if choice == 2:
            return cls(layer, Unstructured(0.5), lam=0.05 * float(layer.weight.abs().max()) * float(layer.gram.diagonal().mean()),
                       adaptive=False, project=False, K=5000, eps=1e-13, warm_start="dense")
        spec = NM(2, 4) if choice == 1 else Unstructured(0.5)
        return cls(layer, spec, warm_start="magnitude")


__all__ = ["L1Relaxation", "LAMBDA_INITS", "ROUNDOFF_ULPS", "WARM_STARTS", "lasso_duality_gap"]
