"""SPAP's penalty relaxation of the channel-selection MIP (methods.md §3.2-§3.3).

SPAP is stated as a chain of reductions (:func:`~prunekit.formulations.reductions_spap.spap_chain`)::

    MaskedReconstructionMIP (model (P), Channels)  --SPAPRelaxation, EXACT (C4)-->  RelaxedChannelMIP (s in [0,1])
        --RelaxedToPenalty, HEURISTIC-->  PenaltyRelaxation (P_rho)

and the ``spap`` method builds its layer problems through that chain (:meth:`PenaltyRelaxation.via_reductions`,
called by ``Method.formulation_for``), so every solution's provenance names the chain and its guarantees.

Two s-updates ship, selected by ``s_update``:

* ``"exact_lp"`` -- the exact block minimization over s (the LP vertex, C6).  [derived]  Observed: the selected set
  never leaves the first s-step's (issue 13: 30/30 toy layers), i.e. one score plus exact restoration.
* ``"momentum"`` -- the paper's dynamics as issue 13 reports them: s is updated *softly* with momentum ``alpha``
  toward the pruning decision of a score that mixes column norm and activation magnitude (parameter ``t``) while
  rho grows.  The exact formulas below (Frank-Wolfe-type step toward the LP vertex, the score
  ``||W_{:,j}||^2 (G_jj / mean diag G)^t``, the barycentre start, the defaults) are [derived]: the paper's text
  was not available here (methods.md §0.2).

.. warning::
   Every default of this module is a **reconstruction [derived]** (methods.md §3.3, §0.2): the penalty weight
   ``omega``, the continuation schedule (``rho0``, ``kappa``), ``alpha``, ``t``, the stopping rule
   (``stable_rounds``, ``eps``) and the final restoration are *not* read from the SPAP paper
   (arXiv 2505.03373).  They ship behind the named options below; do not present them as the published method.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Mapping, Optional

import torch

from ..errors import FormulationError
from .base import Formulation, Guarantee, restoration_stationarity
from .form import ProblemForm
from .reductions import Reduction
from .sparsity import Channels

PENALTY_WEIGHTS = ("gram_diag", "literal")
S_UPDATES = ("exact_lp", "momentum")
"""Named s-updates: the exact LP vertex (C6) or the soft momentum step (the paper's dynamics, formulas [derived])."""
RHO0_FACTOR = {"exact_lp": 1e-3, "momentum": 1.0}
"""Default ``rho0 = factor * tr(G) / f`` per s-update [derived]: ``1e-3`` (methods.md §3.3); ``1.0`` for the
momentum update, where the first W-steps must shrink the columns enough to reorder them (toy layers: 0.3-1 gave
the smallest brute-force gap; at 1e-3 the soft update locks onto the first selection like the exact one)."""


@dataclass(frozen=True, eq=False)
class PenaltyRelaxation(Formulation):
    r"""SPAP penalty method for choosing which input channels (columns) of ``W`` to remove.

    With ``W = W_down`` (shape ``(d, f)``), ``Z`` its calibration inputs (``f x N``), ``G = Z Z^T + \lambda I``
    (the layer's *damped* Gram, ``\lambda`` = ``layer.damping_value()``; with ``damping=0`` it is exact),
    ``s \in [0, 1]^{n_g}`` (one variable per channel group; ``s_g = 1`` = group g pruned) and ``k`` removed groups:

    .. math::

        (P_\rho)\quad \min_{W,\ s \in [0,1]^{n_g},\ 1^T s = k}\;
            \tfrac12 \operatorname{tr}\big((W - W_0) G (W - W_0)^T\big)
            + \tfrac{\rho}{2} \sum_g s_g\, c_g(W), \qquad
            c_g(W) = \sum_{j \in g} \omega_j \lVert W_{:,j} \rVert_2^2,
            \quad \omega_j = (G_{jj} / \bar g)^{t},\ \bar g = \operatorname{tr}(G)/f .

    ``c_j`` is the score that mixes column norm and activation magnitude (``\lVert Z_j \rVert^2 = G_{jj}``) through
    the exponent ``t`` [derived form]: ``t = 1`` is ``penalty_weight="gram_diag"`` (scale-invariant, the default),
    ``t = 0`` is ``"literal"`` (the literal ``\lVert W \operatorname{diag}(s) \rVert_F^2`` penalty); ``t`` given
    overrides ``penalty_weight``.  Dividing by ``\bar g`` only rescales ``\rho`` so that one default serves both.

    Each round r (rho_r = rho0 kappa^r) runs

    1. **s-update.**  ``\hat s`` = indicator of the k groups with the smallest ``c_g(W)``: the vertex of the LP
       ``min_s \sum_g s_g c_g(W)`` over ``{0 <= s <= 1, 1^T s = k}`` (exact block minimization, C6).

       * ``s_update="exact_lp"``: ``s = \hat s``.
       * ``s_update="momentum"``: ``s \leftarrow \alpha s + (1 - \alpha) \hat s``, from the barycentre
         ``s^0 = k / n_g``.  Soft update with momentum ``alpha``: [paper, as issue 13 reports it]; this
         Frank-Wolfe form with fixed step ``1 - alpha`` and the barycentre start: [derived].  Every iterate is a
         convex combination of feasible points, hence feasible; since ``P_rho`` is linear in s and ``\hat s``
         minimizes it, ``P_rho(W, s)`` never goes up at fixed rho; while ``\hat s`` stays fixed,
         ``||s - \hat s||`` shrinks by exactly ``alpha`` per round.
       The round's **selection** is the k groups with the largest s (ties: the higher index), = ``\hat s`` for
       the exact update.
    2. **W-step** (exact block minimization, C5): ``W = W_0 G (G + \rho D)^{-1}``, ``D = \operatorname{diag}(s
       \odot \omega)`` (s expanded to columns), one Cholesky factor for all d rows.
    3. ``rho <- kappa rho``; stop once the selection has been the same for ``stable_rounds`` rounds and
       ``\lVert W_{:,sel} \rVert_F / \lVert W \rVert_F < eps``; then project onto the selection and
       (``final_restore``) apply the exact damped restoration ``W_S = W_0 G_{:,S} G_{SS}^{-1}``, ``W_P = 0`` (C1).

    With the soft update, fractional s penalizes every column a little, so the first W-steps act as a ridge that
    shrinks redundant (correlated) columns more than the score of ``W_0`` shows; this is what lets the selection
    move.  Convergence needs about ``log(eps) / log(alpha)`` rounds (the kept groups' residual mass decays as
    ``alpha^r``).

    Parameters (all defaults [derived], methods.md §3.3)
    ----------
    layer : LayerData
        ``W_down`` (d x f) and G = Z Z^T of its inputs (the MLP's intermediate activations).
    sparsity : Channels
        How many channels (groups) to remove.
    penalty_weight : {"gram_diag", "literal"}
        ``t = 1`` or ``t = 0`` when ``t`` is None.
    s_update : {"exact_lp", "momentum"}
    alpha : float
        Momentum of the soft s-update, in [0, 1) (0 = the exact LP step).  Ignored by ``"exact_lp"``.
    t : float, optional
        Activation exponent of the score / penalty weight, >= 0 (overrides ``penalty_weight``).
    rho0 : float, optional
        Initial penalty; default ``RHO0_FACTOR[s_update] * tr(G) / f`` (1e-3 exact, 1.0 momentum).
    kappa : float
        Continuation factor ``rho <- kappa * rho`` (>= 1; 1 keeps rho fixed, as claim C7 uses).
    max_rounds, stable_rounds : int
    eps : float
        Threshold on ``||W_{:,sel}||_F / ||W||_F`` (>= 0).
    final_restore : bool
        Exact damped restoration on the final kept set (otherwise the last W-step, zeroed off the set).

    Observed behaviour [checked, ``tests/unit/test_spap_dynamics.py``; report ``spap_gap``]: with
    ``"exact_lp"`` the selection never moves after the first s-step, whatever rho0/kappa (gram_diag: median 1.0001x
    the brute-force optimum, worst 1.52x; literal: median 2.7x).  With ``"momentum"`` (defaults) it leaves the first
    selection on a fraction of toy layers and lowers the mean and worst gap (numbers in that test's docstring).

    Guarantee: HEURISTIC for the masked-reconstruction MIP (a feasible kept set, no optimality proof).
    Source: SPAP, Hu & Yuan, arXiv 2505.03373 (model); update rules derived.
    """

    sparsity: Channels
    penalty_weight: Literal["gram_diag", "literal"] = "gram_diag"
    s_update: Literal["exact_lp", "momentum"] = "exact_lp"
    alpha: float = 0.9
    t: Optional[float] = None
    rho0: Optional[float] = None
    kappa: float = 1.5
    max_rounds: int = 100
    stable_rounds: int = 3
    eps: float = 1e-4
    final_restore: bool = True

    guarantee: ClassVar[Guarantee] = Guarantee.HEURISTIC
    paper: ClassVar[str] = "SPAP (Hu & Yuan, arXiv 2505.03373); update rules derived (methods.md §3.3)"
    method_name: ClassVar[str] = "spap"

    def validate(self) -> None:
        if not isinstance(self.sparsity, Channels):
            raise FormulationError(
                f"PenaltyRelaxation selects whole channels and needs a Channels spec, got "
                f"{type(self.sparsity).__name__}. Fix: use Channels(ratio=...) or Channels(count=...); for "
                f"unstructured or N:M sparsity use L1Relaxation, MultipleRemoval or SparseGPT."
            )
        super().validate()
        if self.penalty_weight not in PENALTY_WEIGHTS:
            raise FormulationError(f"penalty_weight must be one of {PENALTY_WEIGHTS}, got {self.penalty_weight!r}.")
        if self.s_update not in S_UPDATES:
            raise FormulationError(f"s_update must be one of {S_UPDATES}, got {self.s_update!r}. Fix: 'exact_lp' "
                                   f"(exact LP s-step) or 'momentum' (soft s-update, the paper's dynamics).")
        if isinstance(self.alpha, bool) or not (isinstance(self.alpha, (int, float)) and 0 <= self.alpha < 1):
            raise FormulationError(f"alpha (momentum of the soft s-update) must be in [0, 1), got {self.alpha!r}. "
                                   f"Fix: e.g. alpha=0.9 (0 is the exact LP step).")
        if self.t is not None and (isinstance(self.t, bool) or not (isinstance(self.t, (int, float))
                                                                      and 0 <= self.t < float("inf"))):
            raise FormulationError(f"t (activation exponent of the score) must be a finite number >= 0 or None, "
                                   f"got {self.t!r}. Fix: t=1 (column norm x activation, = gram_diag) or t=0.")
        if self.rho0 is not None and not (isinstance(self.rho0, (int, float)) and self.rho0 > 0):
            raise FormulationError(f"rho0 must be a positive number or None, got {self.rho0!r}.")
        if not (isinstance(self.kappa, (int, float)) and self.kappa >= 1.0):
            raise FormulationError(f"kappa must be >= 1 (1 keeps rho fixed), got {self.kappa!r}. Fix: e.g. 1.5.")
        for name in ("max_rounds", "stable_rounds"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise FormulationError(f"{name} must be an int >= 1, got {v!r}.")
        if not (isinstance(self.eps, (int, float)) and self.eps >= 0):
            raise FormulationError(f"eps must be a number >= 0, got {self.eps!r}.")

    def _form(self) -> ProblemForm:
        return self._base_form(is_mixed_integer=False, has_bilinear=False, is_convex=False, row_separable=False)

    # ------------------------------------------------------------------ the chain MIP -> relaxation -> penalty
    @classmethod
    def via_reductions(cls, layer, sparsity, **options) -> "PenaltyRelaxation":
        """This problem built as the end of :func:`~.reductions_spap.spap_chain` from SPAP's model (P).

        ``MaskedReconstructionMIP(layer, sparsity)`` -> (SPAPRelaxation, EXACT) -> ``RelaxedChannelMIP`` ->
        (RelaxedToPenalty, HEURISTIC) -> ``cls(layer, sparsity, **options)``.  The returned problem carries the
        chain (:attr:`chain_origin`): :meth:`describe`, hence every solution's provenance, names it with each step's
        guarantee.  ``Method.formulation_for`` calls this, so the ``spap`` method's problems are built this way.
        """
        from .mip import MaskedReconstructionMIP
        from .reductions_spap import spap_chain

        return spap_chain(target=cls, **options).reduce(MaskedReconstructionMIP(layer, sparsity))

    @property
    def chain_origin(self):
        """The :class:`~.reductions.ChainOrigin` this problem was reduced from, or None when built directly."""
        return getattr(self, "_chain_origin", None)

    def describe(self) -> dict[str, Any]:
        """Base description plus, when built through a chain, ``reduction_chain`` (source, steps, guarantee)."""
        out = super().describe()
        origin = self.chain_origin
        if origin is not None:
            out["reduction_chain"] = origin.to_dict()
        return out

    # ------------------------------------------------------------------ problem data (float64)
    def gram(self, dtype: torch.dtype = torch.float64, device=None) -> torch.Tensor:
        """The damped Gram ``G + lambda I`` used by every step (a new tensor)."""
        return self.layer.damped_gram(dtype=dtype, device=device)

    @property
    def exponent(self) -> float:
        """The activation exponent t of the score: ``t`` when given, else 1 ("gram_diag") or 0 ("literal")."""
        if self.t is not None:
            return float(self.t)
        return 1.0 if self.penalty_weight == "gram_diag" else 0.0

    def omega(self, dtype: torch.dtype = torch.float64, device=None) -> torch.Tensor:
        """Penalty weights / score factors omega (f,): ``(diag G / mean diag G)^t`` (t = 1: "gram_diag", t = 0:
        "literal", ones)."""
        g = self.gram(dtype, device)
        t = self.exponent
        if t == 0.0:
            return torch.ones(g.shape[0], dtype=dtype, device=g.device)
        diag = g.diagonal().clone()
        rel = diag / diag.mean()
        return rel if t == 1.0 else rel ** t

    def initial_rho(self) -> float:
        """``rho0`` or the [derived] default ``RHO0_FACTOR[s_update] * tr(G) / f``."""
        if self.rho0 is not None:
            return float(self.rho0)
        g = self.gram()
        return RHO0_FACTOR[self.s_update] * float(g.diagonal().mean())

    def groups(self) -> list[list[int]]:
        return self.sparsity.group_index(self.layer.in_features)

    def num_removed(self) -> int:
        """k, the number of channel groups removed."""
        return self.sparsity.groups_pruned(self.layer.in_features)

    def penalized_objective(self, weights: torch.Tensor, pruned: torch.Tensor, rho: float) -> float:
        """(P_rho) value at ``weights`` (d x f) and the pruned-column indicator ``pruned`` (f,): binary, or the
        fractional s expanded to columns (soft update)."""
        g = self.gram(device=weights.device)
        w0 = self.layer.weight.detach().to(device=weights.device, dtype=torch.float64)
        w = weights.detach().double()
        d = w - w0
        c = self.omega(device=weights.device) * (w * w).sum(dim=0)
        return float(0.5 * torch.sum((d @ g) * d) + 0.5 * rho * torch.sum(pruned.double() * c))

    # ------------------------------------------------------------------ certificates
    def _extra_residuals(self, solution) -> Mapping[str, float]:
        if self.final_restore:
            return {"stationarity": restoration_stationarity(self.layer, solution.weights, solution.mask)}
        return {}

    @classmethod
    def example(cls, rng) -> "PenaltyRelaxation":
        from ..verification.toy import random_layer

        n = int(rng.integers(5, 11))
        m = int(rng.integers(3, 7))
        cond = ("well", "correlated", "ill")[int(rng.integers(0, 3))]
        layer = random_layer(rng, m, n, conditioning=cond)
        weight = PENALTY_WEIGHTS[int(rng.integers(0, 2))]
        return cls(layer, Channels(count=max(1, n // 3)), penalty_weight=weight)


class MIPToPenalty(Reduction):
    """``MaskedReconstructionMIP`` (Channels spec, SPAP's model (P)) -> :class:`PenaltyRelaxation`.

    HEURISTIC: the penalty method returns a feasible kept set with no optimality proof.  ``invert`` passes the
    solution through (same layer, same weight shape); ``options`` are PenaltyRelaxation fields.  A one-step
    shortcut: the ``spap`` method goes through the exact relaxation first
    (:func:`~prunekit.formulations.reductions_spap.spap_chain`).
    """

    guarantee: ClassVar[Guarantee] = Guarantee.HEURISTIC

    def __init__(self, **options) -> None:
        self.options = dict(options)

    def accepts(self, formulation) -> bool:
        try:
            from .mip import MaskedReconstructionMIP
        except ImportError:  # pragma: no cover - mip.py is another module's
            return False
        return isinstance(formulation, MaskedReconstructionMIP) and isinstance(formulation.sparsity, Channels)

    def apply(self, formulation):
        return PenaltyRelaxation(formulation.layer, formulation.sparsity, **self.options), formulation

    def invert(self, solution, inverse_data):
        provenance = {**dict(solution.provenance), "reduction": "MIPToPenalty (heuristic)"}
        objective = inverse_data.objective(solution.weights, solution.bias)
        return solution.replace(objective=objective, provenance=provenance)


def penalty_relaxation_of(mip, **options) -> PenaltyRelaxation:
    """Build the penalty relaxation of a channel-selection ``MaskedReconstructionMIP`` (same layer and spec)."""
    return PenaltyRelaxation(mip.layer, mip.sparsity, **options)


__all__ = ["MIPToPenalty", "PENALTY_WEIGHTS", "PenaltyRelaxation", "RHO0_FACTOR", "S_UPDATES", "penalty_relaxation_of"]
