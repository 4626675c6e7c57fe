"""Contract checks run by the conformance suite on one (solver class, example formulation) pair.

Each ``check_*`` function solves through :func:`prunekit.solve` on the solver's backend and raises
:class:`~prunekit.errors.VerificationError` naming the solver and the broken contract (CONTRIBUTING.md:
"Solvers return weights in the weight's original dtype and device, zero off the mask"; formulations are
never mutated; solvers are deterministic given ``options.seed``; residuals certify the answer; torch solvers
agree with their reference twin).  A solver that declines every example because an optional dependency is
missing raises :class:`~prunekit.errors.BackendUnavailable` instead (reported as a skip, with the reason).
See :mod:`prunekit.verification.conformance` for how the checks are collected.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Optional, Sequence

import numpy as np
import torch

from ..errors import BackendUnavailable, VerificationError
from .checks import assert_matches_reference, assert_spec_obeyed, stationarity_violations
from .tolerances import for_dtype, kkt_bound

MAX_EXAMPLE_TRIES = 20
KNOWN_STATUS = ("optimal", "solved", "max_iter", "heuristic")
_UNAVAILABLE_HINTS = ("install",)


def reference_twin(solver_cls: type) -> Optional[type]:
    """The non-torch solver registered for the same formulation type (``exact=True`` first), or None."""
    from ..solvers.registry import solvers_for

    twins = [c for c in solvers_for(solver_cls.formulation_type) if c.backend != "torch" and c is not solver_cls]
    twins.sort(key=lambda c: not c.exact)  # stable: exact first, then registration order
    return twins[0] if twins else None


def find_example(formulation_type: type, seed: int, solvers: Sequence[type]) -> Any:
    """The first ``formulation_type.example(rng)`` (rng seeded by ``[seed, k]``) that every solver accepts."""
    reasons: list[str] = []
    for k in range(MAX_EXAMPLE_TRIES):
        f = formulation_type.example(np.random.default_rng([seed, k]))
        verdicts = [(cls, *cls().accepts(f)) for cls in solvers]
        if all(ok for _, ok, _ in verdicts):
            return f
        reasons.extend(f"{cls.__name__}: {why}" for cls, ok, why in verdicts if not ok)
    missing = [cls for cls in solvers if cls.missing_requirements()]
    if missing or (reasons and all(any(h in r for h in _UNAVAILABLE_HINTS) for r in reasons)):
        raise BackendUnavailable(
            f"{[c.__name__ for c in solvers]} cannot run here (optional dependency missing): "
            f"{sorted(set(reasons))[:3]}"
        )
    raise VerificationError(
        f"none of {MAX_EXAMPLE_TRIES} {formulation_type.__name__}.example instances (seed {seed}) is accepted by "
        f"{[c.__name__ for c in solvers]}; reasons: {sorted(set(reasons))[:5]}. Make example() draw instances "
        f"the solver accepts (several spec kinds across seeds)."
    )


def _solve(solver_cls: type, formulation: Any, **overrides: Any):
    from ..solvers import solve

    sol = solve(formulation, backend=solver_cls.backend, **overrides)
    used = sol.provenance.get("solver")
    if used != solver_cls.__name__:
        raise VerificationError(f"backend {solver_cls.backend!r} dispatched to {used}, not {solver_cls.__name__}.")
    return sol


def _tensors(obj: Any, prefix: str = "") -> dict[str, torch.Tensor]:
    """All tensors reachable through the dataclass fields of ``obj`` (formulation, layer, ...)."""
    out: dict[str, torch.Tensor] = {}
    if isinstance(obj, torch.Tensor):
        out[prefix or "tensor"] = obj
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        for f in dataclasses.fields(obj):
            out.update(_tensors(getattr(obj, f.name), f"{prefix}.{f.name}" if prefix else f.name))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            out.update(_tensors(v, f"{prefix}[{i}]"))
    return out


def _has_tied_scores(formulation: Any, rel: float = 1e-12) -> bool:
    """Duck-typed tie detection: a ``mask_scores()``/``scores()`` method with (nearly) equal values."""
    for name in ("mask_scores", "scores", "importance_scores"):
        fn = getattr(formulation, name, None)
        if not callable(fn):
            continue
        try:
            s = fn()
        except Exception:  # noqa: BLE001 - a score method with arguments: not our protocol
            continue
        if isinstance(s, torch.Tensor) and s.numel() > 1:
            v = torch.sort(s.detach().double().reshape(-1)).values
            gaps = v[1:] - v[:-1]
            return bool((gaps <= rel * max(float(v.abs().max()), 1e-300)).any())
    return False


# ---------------------------------------------------------------------------------------------- checks
def check_solution_contract(solver_cls: type, formulation: Any) -> None:
    from ..solvers.solution import Solution

    sol = _solve(solver_cls, formulation)
    if not isinstance(sol, Solution):
        raise VerificationError(f"{solver_cls.__name__} returned {type(sol).__name__}, not a Solution.")
    problems = []
    if sol.status not in KNOWN_STATUS:
        problems.append(f"status {sol.status!r} not in {KNOWN_STATUS}")
    if getattr(formulation, "layer", None) is None:  # not a layer problem (e.g. LayerAllocation)
        if sol.mask.dtype != torch.bool or sol.mask.shape != sol.weights.shape:
            problems.append(f"mask must be bool of the primal's shape {tuple(sol.weights.shape)}")
        if problems:
            raise VerificationError(f"{solver_cls.__name__}: " + "; ".join(problems) + ".")
        return
    w = formulation.layer.weight
    if tuple(sol.weights.shape) != tuple(w.shape):
        problems.append(f"weight shape {tuple(sol.weights.shape)} != {tuple(w.shape)}")
    if sol.weights.dtype != w.dtype:
        problems.append(f"weight dtype {sol.weights.dtype} != {w.dtype}")
    if sol.weights.device != w.device:
        problems.append(f"weight device {sol.weights.device} != {w.device}")
    if sol.mask.dtype != torch.bool or tuple(sol.mask.shape) != tuple(w.shape):
        problems.append(f"mask must be bool {tuple(w.shape)}, got {sol.mask.dtype} {tuple(sol.mask.shape)}")
    if sol.bias is not None and (tuple(sol.bias.shape) != (w.shape[0],) or sol.bias.device != w.device):
        problems.append(f"bias must be ({w.shape[0]},) on {w.device}, got {tuple(sol.bias.shape)}")
    if problems:
        raise VerificationError(f"{solver_cls.__name__}: " + "; ".join(problems) + ".")


def check_dtype_float32(solver_cls: type, formulation: Any) -> None:
    layer = formulation.layer
    layer32 = dataclasses.replace(layer, weight=layer.weight.to(torch.float32))
    f32 = dataclasses.replace(formulation, layer=layer32)
    sol = _solve(solver_cls, f32)
    if sol.weights.dtype != torch.float32:
        raise VerificationError(f"{solver_cls.__name__}: float32 weight came back as {sol.weights.dtype}.")


def to_device(formulation: Any, device: Any) -> Any:
    """A copy of ``formulation`` with every tensor of its layer and fields on ``device`` (validated again)."""
    changes = {}
    for f in dataclasses.fields(formulation):
        v = getattr(formulation, f.name)
        if isinstance(v, torch.Tensor):
            changes[f.name] = v.to(device)
        elif dataclasses.is_dataclass(v) and not isinstance(v, type) and _tensors(v):
            changes[f.name] = dataclasses.replace(v, **{k.name: getattr(v, k.name).to(device)
                                                        for k in dataclasses.fields(v)
                                                        if isinstance(getattr(v, k.name), torch.Tensor)})
    return dataclasses.replace(formulation, **changes)


def check_device_cuda(solver_cls: type, formulation: Any) -> None:
    """Solving a formulation whose tensors live on CUDA returns weights (and bias) on CUDA."""
    f = to_device(formulation, "cuda")
    sol = _solve(solver_cls, f)
    if sol.weights.device != f.layer.weight.device or sol.mask.device != f.layer.weight.device:
        raise VerificationError(f"{solver_cls.__name__}: CUDA input came back on {sol.weights.device} "
                                f"(mask on {sol.mask.device}).")


def check_mask_obeys_spec(solver_cls: type, formulation: Any) -> None:
    sol = _solve(solver_cls, formulation)
    if sol.residuals.get("mask_violations", 0.0) != 0.0:
        raise VerificationError(f"{solver_cls.__name__}: residual mask_violations = {sol.residuals['mask_violations']}.")
    assert_spec_obeyed(formulation, sol)


def check_deterministic(solver_cls: type, formulation: Any) -> None:
    a, b = _solve(solver_cls, formulation, seed=0), _solve(solver_cls, formulation, seed=0)
    same = torch.equal(a.weights, b.weights) and torch.equal(a.mask, b.mask)
    same = same and ((a.bias is None and b.bias is None) or (a.bias is not None and b.bias is not None
                                                             and torch.equal(a.bias, b.bias)))
    if not same:
        raise VerificationError(
            f"{solver_cls.__name__}: two solves with seed=0 differ (max weight diff "
            f"{float((a.weights.double() - b.weights.double()).abs().max()):.3g}, "
            f"{int((a.mask != b.mask).sum())} mask entries)."
        )


def check_input_not_mutated(solver_cls: type, formulation: Any) -> None:
    before = {k: v.detach().clone() for k, v in _tensors(formulation).items()}
    _solve(solver_cls, formulation)
    after = _tensors(formulation)
    changed = [k for k, v in before.items() if k not in after or after[k].dtype != v.dtype
               or after[k].shape != v.shape or not torch.equal(after[k], v)]
    if changed:
        raise VerificationError(f"{solver_cls.__name__} mutated its input formulation: {changed}.")


def check_residuals(solver_cls: type, formulation: Any) -> None:
    dtype = "float64"
    sol = _solve(solver_cls, formulation, dtype=dtype)
    bad = {k: v for k, v in sol.residuals.items() if not math.isfinite(float(v))}
    if bad:
        raise VerificationError(f"{solver_cls.__name__}: non-finite residuals {bad}.")
    kkt = kkt_tolerance(solver_cls, sol, dtype)
    over = stationarity_violations(dict(sol.residuals), kkt)
    if over:
        raise VerificationError(
            f"{solver_cls.__name__} (dtype={dtype}): stationarity residuals {over} exceed {kkt:.3g} "
            f"(damping used: {sol.stats.get('damping_used', 'n/a')}, iterations: {sol.stats.get('iterations', 'n/a')})."
        )


def kkt_tolerance(solver_cls: type, solution: Any, dtype: str) -> float:
    """Bound on relative KKT residuals: :func:`~prunekit.verification.tolerances.kkt_bound`.  A solver is iterative
    when its class says so (``Solver.iterative``, set by ``IterativeSolver``) -- never guessed from the spelling of
    its stats -- and is then judged against its own stopping tolerance (``stats["tol"]`` of its IterationStats,
    else ``options.tol``)."""
    if not getattr(solver_cls, "iterative", False):
        return kkt_bound(dtype, solver_cls.backend)
    tol = solution.stats.get("tol")
    if tol is None:
        tol = solution.provenance.get("options", {}).get("tol", 0.0) or 0.0
    return kkt_bound(dtype, solver_cls.backend, iterative=True, tol=float(tol))


def check_matches_reference(solver_cls: type, twin: type, formulation: Any) -> None:
    sol = _solve(solver_cls, formulation, dtype="float64")
    ref = _solve(twin, formulation)
    tol = for_dtype("float64", backend=twin.backend)
    layer = getattr(formulation, "layer", None)
    scale = (layer.dense_energy() if layer is not None else 0.0) or max(abs(ref.objective), 1.0)
    if twin.exact and not solver_cls.exact and formulation.form.is_mixed_integer:
        if sol.objective < ref.objective - tol.bound(ref.objective, scale):
            raise VerificationError(
                f"{solver_cls.__name__} objective {sol.objective:.12g} beats the exact optimum "
                f"{ref.objective:.12g} of {twin.__name__}: infeasible solution or wrong reference."
            )
        return
    ties = bool(twin.exact and formulation.form.is_mixed_integer) or _has_tied_scores(formulation)
    try:
        assert_matches_reference(sol, ref, tol, scale=scale, compare_mask=True, ties=ties)
    except VerificationError as exc:
        raise VerificationError(f"{solver_cls.__name__} vs twin {twin.__name__} on "
                                f"{formulation.describe()}: {exc}") from None


def check_example_implemented(formulation_type: type) -> None:
    try:
        formulation_type.example(np.random.default_rng(0))
    except NotImplementedError as exc:
        raise VerificationError(
            f"{formulation_type.__name__} has registered solvers but no example(rng): {exc}. Implement the "
            f"classmethod with prunekit.verification.toy.random_layer (n <= 12, several specs across seeds)."
        ) from None


def check_has_reference_twin(solver_cls: type) -> None:
    if reference_twin(solver_cls) is None:
        raise VerificationError(
            f"every torch solver has a reference twin: {solver_cls.__name__} solves "
            f"{solver_cls.formulation_type.__name__}, which has no cvxpy/scipy/bruteforce solver registered."
        )


PER_EXAMPLE_CHECKS = {
    "solution_contract": check_solution_contract,
    "dtype_float32": check_dtype_float32,
    "mask_obeys_spec": check_mask_obeys_spec,
    "deterministic": check_deterministic,
    "input_not_mutated": check_input_not_mutated,
    "residuals": check_residuals,
}
