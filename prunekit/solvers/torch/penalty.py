"""Torch solver for :class:`~prunekit.formulations.penalty.PenaltyRelaxation` (SPAP, methods.md §3.3).

Alternating minimization of (P_rho) with continuation [derived reconstruction, see the formulation]:

1. s-update: ``s_hat`` = the k channel groups with the smallest ``c_g(W) = sum_{j in g} omega_j ||W_{:,j}||^2``,
   the exact binary optimum of the LP over ``{0 <= s <= 1, 1^T s = k}`` (C6); ``s = s_hat`` (``"exact_lp"``) or
   ``s <- alpha s + (1 - alpha) s_hat`` from ``s = k / n_g`` (``"momentum"``); the selection is the k groups with
   the largest s;
2. W-step: ``W = W0 G (G + rho D)^{-1}``, ``D = diag(s * omega)`` (s expanded to columns), through ONE Cholesky
   factor of ``G + rho D`` shared by all d rows (C5);
3. ``rho <- kappa rho``; stop once the selection is unchanged for ``stable_rounds`` rounds and
   ``||W_{:,sel}||_F / ||W||_F < eps``;
4. project onto the selection and apply the exact damped restoration (C1).

``extras``: ``pruned`` (final selection, float (f,)), ``s`` (final s per group, float64), ``first_pruned`` (the
first round's selection, float (f,)), ``rho_trace``, ``objective_trace`` (P_rho after each W-step, at that round's
rho and s), ``s_step_trace`` (P_rho after each s-update, before the W-step), ``ratio_trace``, ``s_history`` (s per
group after each s-update, float64 (rounds, n_g); momentum only), ``rounds``, ``converged``, ``set_changes``
(rounds whose selection differs from the previous round's), ``target_changes`` (likewise for ``s_hat``),
``s_update``, ``penalty_weight``, ``t``.
"""

from __future__ import annotations

import torch

from ...formulations.penalty import PenaltyRelaxation
from ...formulations.penalty_refit import RefitPenaltyRelaxation
from ..iterative import IterationLoop, IterativeSolver
from ..options import SolverOptions
from ..registry import register_solver
from ..solution import Solution
from ._linalg import damped_cholesky
from .closed_form import restore_columns
from .masked_lstsq import columns_lstsq


def s_step(cost: torch.Tensor, spec, n: int) -> torch.Tensor:
    """Pruned indicator (f,) bool: the groups with the smallest summed cost (ties: the higher index is pruned)."""
    keep = spec.keep_columns_from_group_scores(spec.group_scores(cost), n)
    return ~keep


def w_step(w0_gram: torch.Tensor, gram: torch.Tensor, rho: float, d_diag: torch.Tensor, *,
           max_tries: int = 8, row_batch=None) -> tuple[torch.Tensor, float]:
    """``W = (W0 G) (G + rho diag(d_diag))^{-1}`` with one Cholesky factor for all rows."""
    a = gram + torch.diag(rho * d_diag)
    factor, used = damped_cholesky(a, 0.0, max_tries=max_tries)
    rows = w0_gram.shape[0]
    step = row_batch or rows
    out = torch.empty_like(w0_gram)
    for start in range(0, rows, step):
        out[start:start + step] = torch.cholesky_solve(w0_gram[start:start + step].T, factor).T
    return out, used


def restore_kept_columns(w0: torch.Tensor, gram: torch.Tensor, keep: torch.Tensor, *,
                         max_tries: int = 8) -> tuple[torch.Tensor, float]:
    """Exact restoration on the kept columns: ``W_S = W0 G_{:,S} G_SS^{-1}``, ``W_P = 0`` (``gram`` damped).

    One |S| x |S| Cholesky through the shared kernel; returns the weights and the extra damping an
    escalation needed (0.0 normally).
    """
    return columns_lstsq(gram, 0.0, keep, target=w0, max_tries=max_tries)


def final_restoration(layer, w0, gram, keep, max_tries) -> tuple[torch.Tensor, float]:
    """Exact damped restoration on ``keep`` (:func:`~.closed_form.restore_columns`, ``LayerData.damped_gram``).

    Returns the weights and the absolute damping on top of G (layer damping plus any escalation).
    """
    cols = torch.nonzero(keep, as_tuple=False).flatten()
    return restore_columns(layer, cols, dtype=w0.dtype, device=w0.device, max_tries=max_tries)


def penalized_value(w: torch.Tensor, w0: torch.Tensor, gram: torch.Tensor, omega: torch.Tensor,
                    pruned: torch.Tensor, rho: float) -> float:
    """(P_rho) at ``w``: ``pruned`` is the bool (f,) selection or the fractional s expanded to columns."""
    d = w - w0
    cost = omega * (w * w).sum(dim=0)
    penalty = torch.sum(cost[pruned]) if pruned.dtype == torch.bool else torch.sum(pruned.to(cost.dtype) * cost)
    return float(0.5 * torch.sum((d @ gram) * d) + 0.5 * rho * penalty)


class GroupMap:
    """Column <-> group bookkeeping of a Channels spec over n columns (groups partition a subset of columns).

    ``to_columns(v)`` expands a per-group vector to columns (0 on columns in no group); ``group_any(mask)`` says
    which groups have a True column.
    """

    def __init__(self, spec, n: int, device) -> None:
        index = spec.group_index(n)
        self.num_groups = len(index)
        self.n = n
        self.cols = torch.tensor([c for g in index for c in g], dtype=torch.long, device=device)
        self.owner = torch.tensor([gi for gi, g in enumerate(index) for _ in g], dtype=torch.long, device=device)

    def to_columns(self, values: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(self.n, dtype=values.dtype, device=values.device)
        out[self.cols] = values[self.owner]
        return out

    def group_any(self, mask: torch.Tensor) -> torch.Tensor:
        hits = torch.zeros(self.num_groups, dtype=torch.float64, device=mask.device)
        hits.index_add_(0, self.owner, mask[self.cols].to(torch.float64))
        return hits > 0


def soft_selection(s: torch.Tensor, spec, groups: GroupMap) -> torch.Tensor:
    """Pruned columns (bool (n,)) of the k groups with the largest soft s (ties: the higher index is pruned)."""
    keep = spec.keep_columns_from_group_scores(-s, groups.n)
    return ~keep


SPAP_CERTIFICATE = ("||W diag(s_sel)||_F / ||W||_F < tol (s_sel: the selected groups) with the selection unchanged "
                    "for stable_rounds rounds")


@register_solver(PenaltyRelaxation, backend="torch")
class TorchPenalty(IterativeSolver):
    """SPAP alternating minimization with rho continuation (exact-LP or momentum s-update), on any torch device.

    A certified loop: ``max_iter = max_rounds``, ``tol = eps``, certificate :data:`SPAP_CERTIFICATE`.
    """

    options_type = SolverOptions

    def run(self, formulation: PenaltyRelaxation, options: SolverOptions) -> Solution:
        f = formulation
        layer = f.layer
        dtype, device = options.torch_dtype, options.resolve_device(layer.weight)
        n = layer.in_features
        w0 = layer.weight.detach().to(device=device, dtype=dtype)
        gram = f.gram(dtype=dtype, device=device)
        omega = f.omega(dtype=dtype, device=device)
        w0_gram = w0 @ gram
        rho = f.initial_rho()
        w = w0.clone()
        soft = f.s_update == "momentum"
        groups = GroupMap(f.sparsity, n, device)
        s = torch.full((groups.num_groups,), f.num_removed() / groups.num_groups, dtype=torch.float64, device=device)
        prev, prev_target, first, stable, damping_used = None, None, None, 0, layer.damping_value()
        rho_trace, obj_trace, s_trace, ratio_trace, s_history = [], [], [], [], []
        set_changes = target_changes = 0
        loop = IterationLoop(f.max_rounds, f.eps, SPAP_CERTIFICATE)
        for _ in loop:
            target = s_step(omega * (w * w).sum(dim=0), f.sparsity, n)
            if soft:
                s = f.alpha * s + (1.0 - f.alpha) * groups.group_any(target).to(torch.float64)
                s_history.append(s.detach().cpu().clone())
                pruned = soft_selection(s, f.sparsity, groups)
                weight_cols = groups.to_columns(s).to(dtype)
            else:
                pruned = target
                weight_cols = target.to(dtype)
            in_penalty = weight_cols if soft else pruned  # the s of (P_rho), on columns
            s_trace.append(penalized_value(w, w0, gram, omega, in_penalty, rho))
            w, used = w_step(w0_gram, gram, rho, weight_cols * omega,
                             max_tries=options.max_damping_tries, row_batch=options.row_batch)
            damping_used = max(damping_used, layer.damping_value() + used)
            if not torch.isfinite(w).all():
                from ...errors import NumericalError

                raise NumericalError(f"SPAP W-step produced NaN/Inf at rho={rho:.3g}. Fix: use dtype='float64'.")
            obj_trace.append(penalized_value(w, w0, gram, omega, in_penalty, rho))
            rho_trace.append(rho)
            total = float(torch.linalg.norm(w))
            ratio = float(torch.linalg.norm(w[:, pruned])) / total if total > 0 else 0.0
            ratio_trace.append(ratio)
            first = pruned if first is None else first
            target_changes += int(prev_target is not None and not torch.equal(prev_target, target))
            prev_target = target
            same = prev is not None and torch.equal(prev, pruned)
            set_changes += int(prev is not None and not same)
            stable = stable + 1 if same else 1
            prev = pruned
            if loop.check(ratio, done=stable >= f.stable_rounds and ratio < f.eps):
                break
            rho *= f.kappa
        it = loop.stats()
        rounds, converged = it.iterations, it.converged
        keep = ~prev
        if f.final_restore:
            w_hat, used = final_restoration(layer, w0, gram, keep, options.max_damping_tries)
            damping_used = max(damping_used, used)
        else:
            w_hat = w * keep.to(dtype).unsqueeze(0)
        weight = layer.weight
        mask = keep.to(weight.device).unsqueeze(0).expand(layer.out_features, n).clone()
        s_final = (s if soft else groups.group_any(prev).to(torch.float64)).detach().cpu()
        extras = {"pruned": prev.to(torch.float64).cpu(), "first_pruned": first.to(torch.float64).cpu(),
                  "s": s_final, "rho_trace": rho_trace, "objective_trace": obj_trace, "s_step_trace": s_trace,
                  "ratio_trace": ratio_trace, "rounds": rounds, "set_changes": set_changes,
                  "target_changes": target_changes, "converged": converged, "penalty_weight": f.penalty_weight,
                  "s_update": f.s_update, "t": f.exponent}
        if soft:
            extras["s_history"] = torch.stack(s_history)
        return self.solution(
            it,
            weights=w_hat.to(device=weight.device, dtype=weight.dtype),
            mask=mask,
            kept_columns=torch.nonzero(keep, as_tuple=False).flatten().to(weight.device),
            stats={"rounds": rounds, "damping_used": damping_used, "final_rho": rho_trace[-1]},
            extras=extras,
        )


@register_solver(RefitPenaltyRelaxation, backend="torch")
class TorchRefitPenalty(TorchPenalty):
    """The same loop for ``spap_refit`` (its layer problem is SPAP's; the registry does not follow inheritance)."""
