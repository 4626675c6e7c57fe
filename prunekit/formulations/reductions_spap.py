"""SPAP's [0, 1] relaxation of the binary channel selection, and its exact inverse (methods.md §3.2, C4).

The relaxed problem (:class:`RelaxedChannelMIP`), with W (m x n), G = X X^T (n x n), column groups
g = 1..n_g (single columns by default) and k = number of groups to remove:

.. math::

    \\min_{\\hat W, s} \\tfrac12 \\lVert \\hat W X - W X \\rVert_F^2
    \\quad \\text{s.t.} \\quad \\hat W_{:,g} = 0 \\text{ whenever } s_g > 0, \\;
    \\mathbf 1^T s = k, \\; s \\in [0,1]^{n_g}.

Relaxation theorem (C4): opt(relaxed) = opt(binary model (P)).  supp(s) has at least k elements (since
sum s = k and s <= 1) and W vanishes on all of it, so the indicator of any k groups of supp(s) is binary
feasible with the *same* W, hence the same objective.  :class:`SPAPRelaxation` is that EXACT reduction;
its ``invert`` rounds (k groups of supp(s), largest s first) and then, optionally, restores the weights on
the kept set by exact least squares, which can only lower the objective.

The SPAP method is the chain :func:`spap_chain`::

    MaskedReconstructionMIP --SPAPRelaxation (EXACT)--> RelaxedChannelMIP --RelaxedToPenalty (HEURISTIC)-->
    PenaltyRelaxation

whose guarantee for the MIP is HEURISTIC (the weakest step): the relaxation loses nothing, the penalty method
returns a feasible kept set without an optimality proof.

Paper: SPAP, arXiv 2505.03373 (the relaxation theorem, as reconstructed in methods.md §3.2).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Mapping

import torch

from ..errors import FormulationError
from .base import Formulation, Guarantee
from .form import ProblemForm
from .mip import MaskedReconstructionMIP
from .reductions import Chain, Reduction
from .sparsity import Channels

_S_TOL = 1e-9


@dataclass(frozen=True, eq=False)
class RelaxedChannelMIP(Formulation):
    """SPAP's model (P) with s relaxed to [0, 1] (see the module docstring). Guarantee EXACT (C4).

    A solution carries ``extras["s"]`` (shape (n_groups,), float64); without it, s is taken uniform
    (k / |T|) on the set T of fully pruned groups.
    """

    sparsity: Channels = None

    guarantee: ClassVar[Guarantee] = Guarantee.EXACT
    paper: ClassVar[str] = "SPAP arXiv 2505.03373 (relaxation theorem, methods.md §3.2)"

    def validate(self) -> None:
        if not isinstance(self.sparsity, Channels):
            raise FormulationError(
                f"RelaxedChannelMIP relaxes SPAP's channel selection and needs a Channels spec, got "
                f"{type(self.sparsity).__name__}. Fix: Channels(count=k) or Channels(ratio=p)."
            )
        super().validate()

    @property
    def num_groups(self) -> int:
        return self.sparsity.num_groups(self.layer.in_features)

    @property
    def k(self) -> int:
        return self.sparsity.groups_pruned(self.layer.in_features)

    def _form(self) -> ProblemForm:
        return self._base_form(is_mixed_integer=False, has_bilinear=True, is_convex=False, row_separable=False)

    def s_of(self, solution) -> torch.Tensor:
        """The relaxed selection vector of ``solution`` (float64, (n_groups,))."""
        s = solution.extras.get("s") if solution.extras else None
        if s is not None:
            return torch.as_tensor(s, dtype=torch.float64).cpu()
        pruned = self._pruned_groups(solution.mask)
        s = torch.zeros(self.num_groups, dtype=torch.float64)
        if pruned:
            s[pruned] = self.k / len(pruned)
        return s

    def _pruned_groups(self, mask: torch.Tensor) -> list[int]:
        col_pruned = (~mask.bool()).all(dim=0).cpu()
        index = self.sparsity.group_index(self.layer.in_features)
        return [g for g, cols in enumerate(index) if bool(col_pruned[cols].all())]

    def residuals(self, solution) -> dict[str, float]:
        """Base certificates, with ``mask_violations`` judged against the *relaxed* feasible set.

        ``binary_mask_violations`` keeps the binary spec's count; ``bilinear_residual`` is
        max |W_hat_{:,g}| over groups with s_g > 0.
        """
        out = super().residuals(solution)
        out["binary_mask_violations"] = out["mask_violations"]
        s = self.s_of(solution)
        index = self.sparsity.group_index(self.layer.in_features)
        w = solution.weights.detach().double().cpu()
        bad = int(((s < -_S_TOL) | (s > 1 + _S_TOL)).sum()) + int(abs(float(s.sum()) - self.k) > 1e-7)
        bil = 0.0
        for g, cols in enumerate(index):
            if float(s[g]) > _S_TOL:
                bil = max(bil, float(w[:, cols].abs().max()))
        bad += int(bil > 0)
        col_kept = solution.mask.bool().all(dim=0)
        col_pruned = (~solution.mask.bool()).all(dim=0)
        bad += int((~(col_kept | col_pruned)).sum())
        out["mask_violations"] = float(bad)
        out["bilinear_residual"] = bil
        return out

    def _extra_residuals(self, solution) -> Mapping[str, float]:
        return {}

    @classmethod
    def example(cls, rng) -> "RelaxedChannelMIP":
        from ..verification.toy import CONDITIONINGS, random_layer

        n = int(rng.integers(5, 9))
        layer = random_layer(rng, int(rng.integers(2, 5)), n, conditioning=CONDITIONINGS[int(rng.integers(0, 4))])
        return cls(layer, Channels(count=int(rng.integers(1, n // 2 + 1))))


def exact_restore(layer, keep: torch.Tensor) -> torch.Tensor:
    """Exact (undamped) least-squares weights (float64, cpu) on the kept columns ``keep`` (n,) bool (C1).

    Solves W_S A_SS = B_S with A = G, B = W G (A = G*, B = C with error correction) exactly on the stated
    (A, B) and returns the minimum-norm minimiser rounded to float64 (zero off ``keep``): a singular
    G_SS (duplicated or all-zero inputs) gives the minimum-norm optimum, and an ill-conditioned one
    (cond(X) ~ 1e8, cond(G_SS) ~ 1e16) keeps every direction with a positive eigenvalue.  See
    :mod:`prunekit.solvers.reference.exact_lstsq` for the method and the measurements that chose it
    (the former ``lstsq(G_SS, rcond=1e-12)`` discarded directions the optimum needs).
    """
    from ..solvers.reference.exact_lstsq import RestrictedLstsq

    keep = keep.bool().cpu()
    if tuple(keep.shape) != (layer.in_features,):
        raise FormulationError(
            f"exact_restore needs one keep flag per input column, shape ({layer.in_features},), got "
            f"{tuple(keep.shape)}. Fix: pass a (n,) bool vector (row i of a per-row mask: mask[i])."
        )
    prob = RestrictedLstsq.from_layer(layer)
    w_hat, _ = prob.restore(torch.nonzero(keep).flatten().numpy())
    return torch.from_numpy(w_hat)


class SPAPRelaxation(Reduction):
    """MaskedReconstructionMIP (Channels)  ->  RelaxedChannelMIP, EXACT (claim C4).

    Parameters
    ----------
    restore : bool
        After rounding, replace the weights by the exact least-squares restoration on the kept set when
        that lowers the objective (it never raises it).
    """

    guarantee: ClassVar[Guarantee] = Guarantee.EXACT

    def __init__(self, restore: bool = True):
        self.restore = bool(restore)

    def accepts(self, formulation: Formulation) -> bool:
        return isinstance(formulation, MaskedReconstructionMIP) and formulation.is_channel_model

    def apply(self, formulation: Formulation) -> tuple[Formulation, Any]:
        if not self.accepts(formulation):
            raise FormulationError(
                f"SPAPRelaxation applies to MaskedReconstructionMIP with a Channels spec, got "
                f"{type(formulation).__name__}"
                f"{' with ' + type(formulation.sparsity_spec).__name__ if formulation.sparsity_spec else ''}."
            )
        return RelaxedChannelMIP(formulation.layer, formulation.sparsity), formulation

    def invert(self, solution, inverse_data: Any):
        """Round a relaxed feasible point: prune k groups of supp(s) (largest s first), keep W, restore."""
        from ..solvers.solution import Solution

        original: MaskedReconstructionMIP = inverse_data
        relaxed = RelaxedChannelMIP(original.layer, original.sparsity)
        layer, spec = original.layer, original.sparsity
        n = layer.in_features
        s = relaxed.s_of(solution)
        k = relaxed.k
        support = torch.nonzero(s > _S_TOL).flatten()
        if support.numel() < k:
            raise FormulationError(
                f"cannot round: supp(s) has {support.numel()} groups < k = {k}, so the point is not feasible "
                f"for the relaxed problem (1^T s = k with s <= 1 forces |supp(s)| >= k)."
            )
        order = torch.sort(s[support], descending=True, stable=True).indices
        chosen = support[order[:k]]
        s_bin = torch.zeros_like(s)
        s_bin[chosen] = 1.0
        keep = torch.ones(n, dtype=torch.bool)
        for g in chosen.tolist():
            keep[spec.group_index(n)[g]] = False
        w = solution.weights.detach().double().cpu().clone()
        w[:, ~keep] = 0.0
        rounded_obj = original.objective(w)
        restored = False
        if self.restore:
            w_r = exact_restore(layer, keep)
            if original.objective(w_r) <= rounded_obj:
                w, restored = w_r, True
        weights = w.to(dtype=layer.weight.dtype, device=layer.weight.device)
        mask = keep.unsqueeze(0).expand(layer.out_features, n).clone().to(layer.weight.device)
        out = Solution(
            weights=weights, mask=mask, status=solution.status,
            kept_columns=torch.nonzero(keep).flatten().to(layer.weight.device),
            stats=dict(solution.stats),
            provenance={**dict(solution.provenance), "reduction": "SPAPRelaxation"},
            extras={"s": s_bin, "relaxed_s": s, "rounded_objective": rounded_obj, "restored": restored},
        )
        residuals = original.residuals(out)
        return out.replace(objective=residuals["objective"], residuals=residuals)

    def __repr__(self) -> str:
        return f"SPAPRelaxation(restore={self.restore}, guarantee=exact)"


class RelaxedToPenalty(Reduction):
    """``RelaxedChannelMIP`` -> ``PenaltyRelaxation``: the bilinear constraint moved into the penalty (HEURISTIC).

    ``apply`` states ``target(layer, sparsity, **options)`` (``target`` = PenaltyRelaxation or a subclass;
    ``options`` are its fields, e.g. ``s_update="momentum"``).  ``invert`` maps the penalty solution to a point of
    the relaxed problem: ``extras["s"]`` = the binary indicator of the pruned groups (the weights vanish on them,
    so the point is relaxed-feasible), the soft s of the momentum update kept as ``extras["soft_s"]``.
    """

    guarantee: ClassVar[Guarantee] = Guarantee.HEURISTIC

    def __init__(self, target: type = None, **options) -> None:
        from .penalty import PenaltyRelaxation

        self.target = PenaltyRelaxation if target is None else target
        if not (isinstance(self.target, type) and issubclass(self.target, PenaltyRelaxation)):
            raise FormulationError(f"RelaxedToPenalty builds a PenaltyRelaxation (or a subclass), got {target!r}.")
        self.options = dict(options)

    def accepts(self, formulation: Formulation) -> bool:
        return isinstance(formulation, RelaxedChannelMIP)

    def apply(self, formulation: Formulation) -> tuple[Formulation, Any]:
        return self.target(formulation.layer, formulation.sparsity, **self.options), formulation

    def invert(self, solution, inverse_data: Any):
        relaxed: RelaxedChannelMIP = inverse_data
        extras = dict(solution.extras or {})
        pruned = relaxed._pruned_groups(solution.mask)
        s = torch.zeros(relaxed.num_groups, dtype=torch.float64)
        s[pruned] = 1.0
        if "s" in extras:
            extras["soft_s"] = extras["s"]
        extras["s"] = s
        provenance = {**dict(solution.provenance), "reduction": f"RelaxedToPenalty ({self.guarantee.value})"}
        out = solution.replace(extras=extras, provenance=provenance)
        residuals = relaxed.residuals(out)
        return out.replace(objective=residuals["objective"], residuals=residuals)

    def __repr__(self) -> str:
        shown = ", ".join(f"{k}={v!r}" for k, v in sorted(self.options.items()))
        return f"RelaxedToPenalty({shown}{', ' if shown else ''}guarantee=heuristic)"


def spap_chain(restore: bool = False, target: type = None, **options) -> Chain:
    """SPAP as a chain of reductions: ``[SPAPRelaxation(restore), RelaxedToPenalty(target, **options)]``.

    ``Chain.solve(mip)`` solves the penalty problem and maps its solution back to the MIP (the rounding of
    SPAPRelaxation keeps the penalty's pruned groups; ``restore=True`` then replaces the method's damped restoration
    by the exact undamped one where that lowers the MIP objective).  ``Chain.reduce(mip)`` returns the penalty
    problem carrying the chain (what the ``spap`` method solves).  Guarantee: HEURISTIC.
    """
    return Chain([SPAPRelaxation(restore=restore), RelaxedToPenalty(target, **options)])


__all__ = ["RelaxedChannelMIP", "RelaxedToPenalty", "SPAPRelaxation", "exact_restore", "spap_chain"]
