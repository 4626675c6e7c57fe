"""Claim-checker helpers: assertions that raise :class:`~prunekit.errors.VerificationError` with a message
that names the quantity, the observed error and the tolerance.

They judge solutions only through the formulation's own certificates (``Formulation.residuals``) and
objective, so the same helper checks torch, CVXPY, SciPy and brute-force output alike (design principle 6).

* :func:`assert_spec_obeyed`          -- the mask is feasible for the spec and the weights vanish off it;
* :func:`assert_kkt`                  -- feasibility plus every stationarity certificate under tolerance;
* :func:`assert_matches_reference`    -- objective (and mask, weights) agree with a reference solution;
* :func:`assert_relaxation_bound`     -- a relaxation's optimum bounds the original optimum;
* :func:`assert_reduction_equivalent` -- a reduction keeps the promise of its ``guarantee``.
"""

from __future__ import annotations

import math
from typing import Any, Optional, Union

import torch

from ..errors import VerificationError
from ..formulations.base import Formulation, Guarantee
from ..formulations.sparsity import SparsitySpec
from ..solvers.solution import Solution
from .tolerances import Tolerance, for_dtype, objective_error, objectives_close, weights_error

TolLike = Union[Tolerance, float, None]


def _tol(tol: TolLike, dtype: str = "float64") -> Tolerance:
    if tol is None:
        return for_dtype(dtype)
    if isinstance(tol, Tolerance):
        return tol
    return Tolerance(atol=float(tol), rtol=float(tol), kkt=float(tol))


def _value(x: Union[Solution, float]) -> float:
    return float(x.objective) if isinstance(x, Solution) else float(x)


def _label(sol: Solution) -> str:
    prov = sol.provenance or {}
    return f"{prov.get('solver', '?')}[{prov.get('backend', '?')}]"


def assert_spec_obeyed(spec: Union[SparsitySpec, Formulation], solution: Union[Solution, torch.Tensor],
                       weights: Optional[torch.Tensor] = None) -> None:
    """Assert that a mask is feasible for ``spec`` and that the weights are exactly zero off the mask.

    Parameters
    ----------
    spec : SparsitySpec or Formulation
        The spec, or a formulation whose ``sparsity_spec`` is used (a fixed-mask formulation has none:
        only the zero-off-mask rule is checked).
    solution : Solution or Tensor
        A solution, or a keep-mask (bool, (m, n)).
    weights : Tensor, optional
        The weights to check against the mask (default: ``solution.weights``).
    """
    if isinstance(spec, Formulation):
        spec = spec.sparsity_spec
    mask = solution.mask if isinstance(solution, Solution) else solution
    if weights is None and isinstance(solution, Solution):
        weights = solution.weights
    if mask.dtype != torch.bool:
        raise VerificationError(f"mask must be a bool keep-mask, got dtype {mask.dtype}.")
    if spec is not None:
        bad = spec.violations(mask)
        if bad:
            raise VerificationError(
                f"mask violates {spec.describe()}: {bad} structural unit(s) with the wrong pruned count "
                f"(pruned {int((~mask).sum())} of {mask.numel()}, expected {spec.num_pruned(tuple(mask.shape))})."
            )
    if weights is not None:
        if tuple(weights.shape) != tuple(mask.shape):
            raise VerificationError(f"weights shape {tuple(weights.shape)} != mask shape {tuple(mask.shape)}.")
        off = weights.detach()[~mask.to(weights.device)]
        if off.numel() and bool((off != 0).any()):
            raise VerificationError(
                f"weights are not zero off the mask: {int((off != 0).sum())} pruned entries are non-zero "
                f"(max |w| = {float(off.abs().max()):.3g}). Solvers must return exactly zero pruned weights."
            )


_VARIANT_SUFFIXES = ("_undamped", "_damped")


def stationarity_keys(residuals: dict) -> list[str]:
    """Residual names that certify optimality (contain "stationarity" or "kkt")."""
    return sorted(k for k in residuals if "stationarity" in k.lower() or "kkt" in k.lower())


def stationarity_groups(residuals: dict) -> dict[str, list[str]]:
    """Stationarity keys grouped by certificate: ``x`` and ``x_undamped``/``x_damped`` are one certificate
    stated under two damping conventions (e.g. the MIP's undamped optimum and the damped restoration), of
    which a solution must satisfy at least one."""
    groups: dict[str, list[str]] = {}
    for k in stationarity_keys(residuals):
        base = k
        for suffix in _VARIANT_SUFFIXES:
            if base.endswith(suffix):
                base = base[: -len(suffix)]
        groups.setdefault(base, []).append(k)
    return groups


def stationarity_violations(residuals: dict, kkt_tol: float) -> dict[str, float]:
    """Certificates none of whose variants is finite and ``<= kkt_tol``: ``{key: value}`` of the best variant."""
    bad = {}
    for keys in stationarity_groups(residuals).values():
        best = min(keys, key=lambda k: residuals[k] if math.isfinite(residuals[k]) else math.inf)
        if not (math.isfinite(residuals[best]) and residuals[best] <= kkt_tol):
            bad[best] = residuals[best]
    return bad


def assert_kkt(formulation: Formulation, solution: Solution, tol: TolLike = None,
               require_certificate: bool = True) -> dict[str, float]:
    """Assert primal feasibility and that every stationarity certificate of ``solution`` is below ``tol``.

    Parameters
    ----------
    formulation : Formulation
        The problem; its ``residuals`` are recomputed here (never trusted from the solution).
    solution : Solution
    tol : Tolerance or float, optional
        ``tol.kkt`` bounds the relative stationarity residuals (default: float64 tolerance).  Variants of
        one certificate (``stationarity`` / ``stationarity_undamped``) pass when one of them does.
    require_certificate : bool
        Fail when the formulation reports no stationarity/KKT residual at all.

    Returns
    -------
    dict
        The recomputed residuals.
    """
    t = _tol(tol)
    res = dict(formulation.residuals(solution))
    bad = {k: res[k] for k in ("mask_violations", "nonfinite") if res.get(k, 0.0) != 0.0}
    if bad:
        raise VerificationError(f"{type(formulation).__name__}: solution is infeasible: {bad}.")
    if res.get("pruned_max_abs", 0.0) != 0.0:
        raise VerificationError(
            f"{type(formulation).__name__}: pruned weights are not zero (max |w| = {res['pruned_max_abs']:.3g})."
        )
    keys = stationarity_keys(res)
    if not keys and require_certificate:
        raise VerificationError(
            f"{type(formulation).__name__} reports no stationarity/KKT residual (residuals: {sorted(res)}); "
            f"implement _extra_residuals, or call assert_kkt(..., require_certificate=False)."
        )
    over = stationarity_violations(res, t.kkt)
    if over:
        raise VerificationError(
            f"{type(formulation).__name__}: KKT residual(s) {over} exceed tolerance {t.kkt:.3g}."
        )
    return res


def assert_matches_reference(solution: Solution, reference: Solution, tol: TolLike = None, *,
                             scale: Optional[float] = None, compare_mask: bool = True,
                             compare_weights: bool = False, ties: bool = False) -> float:
    """Assert that ``solution`` reaches the reference objective (and mask) within ``tol``.

    Parameters
    ----------
    solution, reference : Solution
        Solutions of the same formulation (``objective`` filled in by ``prunekit.solve``).
    tol : Tolerance or float, optional
    scale : float, optional
        Problem scale for the absolute part of the tolerance (the dense energy); default ``|f_ref|``.
    compare_mask : bool
        Require identical masks unless ``ties`` is True; entries where both solutions' weights are
        numerically zero (``<= max(atol, rtol) * max|W_ref|``) may differ.
    compare_weights : bool
        Also require the weights to agree (``tol.atol * max|W_ref| + tol.rtol * |W_ref|`` entrywise).
    ties : bool
        The problem has tied scores or several optima (e.g. an exact reference on a rank-deficient layer):
        masks may legitimately differ, the objective decides.

    Returns
    -------
    float
        The relative objective error.
    """
    t = _tol(tol)
    f, f_ref = _value(solution), _value(reference)
    s = abs(f_ref) if scale is None else scale
    err = objective_error(f, f_ref, s)
    if not objectives_close(f, f_ref, t, s):
        raise VerificationError(
            f"objective of {_label(solution)} = {f:.12g} differs from reference {_label(reference)} = {f_ref:.12g} "
            f"(|diff| = {abs(f - f_ref):.3g} > {t.bound(f_ref, s):.3g}; relative error {err:.3g})."
        )
    differ = solution.mask.cpu() != reference.mask.cpu()
    if compare_mask and not ties and bool(differ.any()):
        # Entries where both weights are numerically zero (|w| <= tol * max |W_ref|) carry no decision:
        # e.g. a lasso support entry that one solver returns as 2e-8 and the other as exactly 0.
        w, w_ref = solution.weights.detach().cpu().double(), reference.weights.detach().cpu().double()
        zero = max(t.atol, t.rtol) * max(float(w_ref.abs().max()) if w_ref.numel() else 0.0, 1e-300)
        meaningful = differ & ((w.abs() > zero) | (w_ref.abs() > zero))
        diff = int(meaningful.sum())
    else:
        diff = 0
    if diff:
        raise VerificationError(
            f"mask of {_label(solution)} differs from reference {_label(reference)} in {diff} entries although "
            f"the objectives agree ({f:.12g} vs {f_ref:.12g}); pass ties=True if the scores tie or the problem "
            f"has several optima."
        )
    if compare_weights:
        werr = weights_error(solution.weights, reference.weights)
        if not werr <= max(t.atol, t.rtol):
            raise VerificationError(
                f"weights of {_label(solution)} differ from reference {_label(reference)}: "
                f"relative max error {werr:.3g} > {max(t.atol, t.rtol):.3g}."
            )
    return err


def assert_relaxation_bound(relaxed: Union[Solution, float], exact: Union[Solution, float],
                            tol: TolLike = None, *, scale: float = 1.0, sense: str = "min") -> float:
    """Assert that a relaxation's optimum bounds the original optimum.

    For a minimization (``sense="min"``) ``relaxed <= exact + tol``; for ``"max"`` the reverse.

    Returns
    -------
    float
        The gap ``exact - relaxed`` (>= -tolerance for a minimization).
    """
    if sense not in ("min", "max"):
        raise ValueError(f"sense must be 'min' or 'max', got {sense!r}.")
    t = _tol(tol)
    r, e = _value(relaxed), _value(exact)
    if not (math.isfinite(r) and math.isfinite(e)):
        raise VerificationError(f"relaxation bound needs finite values, got relaxed={r}, exact={e}.")
    gap = (e - r) if sense == "min" else (r - e)
    if gap < -t.bound(e, scale):
        word = "above" if sense == "min" else "below"
        raise VerificationError(
            f"relaxation value {r:.12g} lies {word} the original optimum {e:.12g} by {-gap:.3g} "
            f"(tolerance {t.bound(e, scale):.3g}): it is not a valid bound."
        )
    return gap


def assert_reduction_equivalent(formulation: Formulation, reduction: Any, *, backend: str = "auto",
                                reference_backend: str = "auto", tol: TolLike = None,
                                options: Any = None) -> dict[str, float]:
    """Assert that ``reduction`` (a Reduction or Chain) keeps the promise of its ``guarantee``.

    The original problem is solved on ``reference_backend`` (its optimum ``f*``) and the reduced problem on
    ``backend``; the reduced solution is mapped back with ``invert``.

    * EXACT: the inverted solution is feasible for the original problem and reaches ``f*`` within ``tol``;
    * RELAXATION: the reduced optimum is ``<= f*`` (a lower bound) and the inverted solution is feasible;
    * HEURISTIC: the inverted solution is feasible and no better than ``f*`` (beyond tolerance).

    Returns
    -------
    dict
        ``{"original": f*, "reduced": f', "inverted": f(invert(x'))}``.
    """
    from ..formulations.reductions import Chain
    from ..solvers import solve

    t = _tol(tol)
    scale = formulation.layer.dense_energy() or 1.0
    original = solve(formulation, backend=reference_backend)
    if isinstance(reduction, Chain):
        reduced_f, inverse = reduction.apply(formulation)
    else:
        if not reduction.accepts(formulation):
            raise VerificationError(f"{reduction!r} does not accept {type(formulation).__name__}.")
        reduced_f, inverse = reduction.apply(formulation)
    reduced = solve(reduced_f, backend=backend, options=options)
    inverted = reduction.invert(reduced, inverse)
    f_inv = formulation.objective(inverted.weights, inverted.bias)
    assert_spec_obeyed(formulation, inverted)
    out = {"original": original.objective, "reduced": reduced.objective, "inverted": f_inv}
    if reduction.guarantee is Guarantee.EXACT:
        if not objectives_close(f_inv, original.objective, t, scale):
            raise VerificationError(
                f"EXACT reduction {reduction!r}: inverted solution has objective {f_inv:.12g}, the original "
                f"optimum is {original.objective:.12g} (tolerance {t.bound(original.objective, scale):.3g})."
            )
    elif reduction.guarantee is Guarantee.RELAXATION:
        assert_relaxation_bound(reduced.objective, original.objective, t, scale=scale)
    if f_inv < original.objective - t.bound(original.objective, scale):
        raise VerificationError(
            f"{reduction!r}: inverted solution ({f_inv:.12g}) beats the reference optimum "
            f"({original.objective:.12g}) of {type(formulation).__name__}: the reference is not exact, or the "
            f"inverse is infeasible."
        )
    return out


__all__ = [
    "assert_kkt", "assert_matches_reference", "assert_reduction_equivalent", "assert_relaxation_bound",
    "assert_spec_obeyed", "stationarity_groups", "stationarity_keys", "stationarity_violations",
]
