"""Canonical toy problems with analytic optima (design principle 9; cvxpy's ``lp_0 ... lp_7``).

Each case is a function ``case(kind=..., seed=0) -> (formulation, expected)``; ``expected`` holds the
analytic answer, computed from closed forms (never by a solver):

* ``"weights"`` -- W_hat (float64, (m, n)); ``"mask"`` -- keep-mask; ``"objective"`` -- f*;
* ``"bias"`` -- the new bias where the case changes it; ``"pruned"`` -- the pruned indices.

Cases (``kind`` picks the formulation that states the problem; layers have ``damping = 0`` so the optimum of
the stated problem is the textbook one):

* :func:`diagonal_g_mrp` -- G = diag(g): OBS saliency is ``w_ij^2 g_j``, Solution M = Solution S leaves the kept
  weights unchanged, ``f* = 1/2 sum_P w_ij^2 g_j`` (methods.md §6.2, C13);
* :func:`single_weight_obs` -- one weight of a 1 x n row with correlated G: ``p = argmin w_j^2 / [G^-1]_jj``,
  ``dw = -w_p / [G^-1]_pp G^-1_{p,:}``, ``f* = w_p^2 / (2 [G^-1]_pp)`` (OBS; also the exact MIP optimum);
* :func:`nm_identity` -- 2:4 with G = I: keep the two largest |w| of every group, no compensation,
  ``f* = 1/2 sum_P w^2`` (also the exact MIP optimum);
* :func:`flap_single_channel` -- FLAP removes the channel j with the smallest WIFV, ``b_new = b + W_:,j mu_j``,
  ``f* = 1/2 N Var(x_j) ||W_:,j||^2`` (methods.md §8.4, C17).

:func:`check_case` solves a case on a backend and compares with the expectation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

import numpy as np
import torch

from ..errors import VerificationError
from ..formulations.layer import LayerData
from ..formulations.sparsity import NM, Channels, Unstructured
from .tolerances import Tolerance, for_dtype, objectives_close, weights_close


def _diag_inputs(g: np.ndarray) -> np.ndarray:
    """Tokens (2n, n) = +-sqrt(g_j / 2) e_j: G = diag(g) exactly, zero mean."""
    half = np.diag(np.sqrt(g / 2.0))
    return np.concatenate([half, -half], axis=0)


def _layer(w: np.ndarray, x: np.ndarray, bias: Optional[np.ndarray] = None) -> LayerData:
    b = torch.from_numpy(bias) if bias is not None else None
    return LayerData.from_inputs(torch.from_numpy(w), torch.from_numpy(x), bias=b, damping=0.0)


def _formulation(kind: str, layer: LayerData, spec, mask: torch.Tensor):
    if kind == "mrp":
        from ..formulations.mrp import MultipleRemoval

        return MultipleRemoval(layer, spec)
    if kind == "mip":
        from ..formulations.mip import MaskedReconstructionMIP

        return MaskedReconstructionMIP(layer, spec)
    if kind == "restoration":
        from ..formulations.restoration import FixedMaskRestoration

        return FixedMaskRestoration(layer, mask)
    raise ValueError(f"unknown kind {kind!r}; use 'mrp', 'mip' or 'restoration'.")


def diagonal_g_mrp(kind: str = "mrp", seed: int = 0, m: int = 3, n: int = 8) -> tuple[Any, dict]:
    """Diagonal Gram, unstructured 50%: the OBS mask and no compensation (``kind``: mrp | restoration | mip)."""
    rng = np.random.default_rng(seed)
    g = rng.uniform(0.5, 4.0, n)
    w = rng.standard_normal((m, n))
    layer = _layer(w, _diag_inputs(g))
    spec = Unstructured(0.5)
    saliency = torch.from_numpy(w**2 * g)
    mask = spec.project(saliency)
    expected_w = torch.from_numpy(w) * mask
    f_star = 0.5 * float((saliency * ~mask).sum())
    pruned = [torch.nonzero(~mask[i]).flatten().tolist() for i in range(m)]
    return _formulation(kind, layer, spec, mask), {"weights": expected_w, "mask": mask, "objective": f_star,
                                                   "pruned": pruned}


def single_weight_obs(kind: str = "mrp", seed: int = 0, n: int = 6) -> tuple[Any, dict]:
    """One weight removed from a 1 x n row with correlated G: the OBS update (``kind``: mrp | restoration | mip)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((4 * n, n)) @ (np.eye(n) + 0.5 * rng.standard_normal((n, n)) / np.sqrt(n))
    w = rng.standard_normal((1, n))
    layer = _layer(w, x)
    g = layer.gram.numpy()
    ginv = np.linalg.inv(g)
    saliency = w[0] ** 2 / np.diag(ginv)
    p = int(np.argmin(saliency))
    wh = w[0] - w[0, p] / ginv[p, p] * ginv[p]
    wh[p] = 0.0
    mask = torch.ones(1, n, dtype=torch.bool)
    mask[0, p] = False
    spec = Unstructured(1.0 / n)
    return _formulation(kind, layer, spec, mask), {"weights": torch.from_numpy(wh[None, :]), "mask": mask,
                                                   "objective": 0.5 * float(saliency[p]), "pruned": [p]}


def nm_identity(kind: str = "mrp", seed: int = 0, m: int = 3, n: int = 8) -> tuple[Any, dict]:
    """2:4 on G = I: magnitude within each group is optimal (``kind``: mrp | restoration | mip)."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((m, n))
    layer = _layer(w, _diag_inputs(np.ones(n)))
    spec = NM(2, 4)
    mask = spec.project(torch.from_numpy(np.abs(w)))
    expected_w = torch.from_numpy(w) * mask
    f_star = 0.5 * float((torch.from_numpy(w) ** 2 * ~mask).sum())
    return _formulation(kind, layer, spec, mask), {"weights": expected_w, "mask": mask, "objective": f_star}


def flap_single_channel(kind: str = "flap", seed: int = 0, m: int = 4, n: int = 6) -> tuple[Any, dict]:
    """FLAP removes one channel (WIFV) and compensates the bias with W_:,j mu_j (``kind``: flap)."""
    if kind != "flap":
        raise ValueError(f"flap_single_channel is stated by FLAPRemoval only (kind='flap'), got {kind!r}.")
    from ..formulations.flap import FLAPRemoval

    rng = np.random.default_rng(seed)
    x = rng.standard_normal((5 * n, n)) * rng.uniform(0.3, 2.0, n) + rng.standard_normal(n)
    w, b = rng.standard_normal((m, n)), rng.standard_normal(m)
    layer = _layer(w, x, b)
    tokens = x.shape[0]
    var = x.var(axis=0)  # population variance = G_jj / N - mu_j^2
    wifv = var * (w**2).sum(axis=0)
    j = int(np.argmin(wifv))
    mask = torch.ones(m, n, dtype=torch.bool)
    mask[:, j] = False
    expected = {
        "weights": torch.from_numpy(w) * mask,
        "mask": mask,
        "bias": torch.from_numpy(b + w[:, j] * x.mean(axis=0)[j]),
        "objective": 0.5 * tokens * float(wifv[j]),
        "pruned": [j],
    }
    return FLAPRemoval(layer, Channels(count=1), metric="wifv", bias_compensation=True), expected


@dataclass(frozen=True)
class Case:
    """A named canonical problem: ``build(kind=..., seed=...) -> (formulation, expected)``."""

    name: str
    build: Callable[..., tuple[Any, dict]]
    kinds: tuple[str, ...]


CASES = {
    "diagonal_g_mrp": Case("diagonal_g_mrp", diagonal_g_mrp, ("mrp", "restoration", "mip")),
    "single_weight_obs": Case("single_weight_obs", single_weight_obs, ("mrp", "restoration", "mip")),
    "nm_identity": Case("nm_identity", nm_identity, ("mrp", "restoration", "mip")),
    "flap_single_channel": Case("flap_single_channel", flap_single_channel, ("flap",)),
}


def all_cases() -> list[Case]:
    """Every canonical case."""
    return list(CASES.values())


def get_case(name: str) -> Case:
    try:
        return CASES[name]
    except KeyError:
        raise KeyError(f"unknown case {name!r}; known: {sorted(CASES)}") from None


def check_case(name: str, kind: Optional[str] = None, backend: str = "auto", seed: int = 0,
               tol: Optional[Tolerance] = None, **options: Any) -> float:
    """Solve case ``name`` (formulation ``kind``) on ``backend`` and compare with the analytic answer.

    Returns the relative objective error; raises VerificationError on any mismatch (objective, mask,
    weights, bias).
    """
    from ..solvers import solve

    case = get_case(name)
    kind = kind or case.kinds[0]
    f, exp = case.build(kind=kind, seed=seed)
    sol = solve(f, backend=backend, **options)
    used = sol.provenance.get("options", {}).get("dtype", "float64")
    t = tol or for_dtype(used, backend=sol.provenance.get("backend", backend))
    scale = f.layer.dense_energy() or 1.0
    where = f"case {name} [{kind}, {sol.provenance.get('solver')}]"
    if not objectives_close(sol.objective, exp["objective"], t, scale):
        raise VerificationError(f"{where}: objective {sol.objective:.12g} != analytic {exp['objective']:.12g}.")
    if not torch.equal(sol.mask.cpu(), exp["mask"]):
        raise VerificationError(f"{where}: mask differs from the analytic one in "
                                f"{int((sol.mask.cpu() != exp['mask']).sum())} entries.")
    wt = Tolerance(t.atol * 10, t.rtol * 10, t.kkt)
    if not weights_close(sol.weights, exp["weights"], wt):
        raise VerificationError(f"{where}: weights differ from the analytic optimum.")
    if "bias" in exp and (sol.bias is None or not weights_close(sol.bias, exp["bias"], wt)):
        raise VerificationError(f"{where}: bias {sol.bias} != analytic {exp['bias']}.")
    return abs(sol.objective - exp["objective"]) / scale


__all__ = ["CASES", "Case", "all_cases", "check_case", "diagonal_g_mrp", "flap_single_channel", "get_case",
           "nm_identity", "single_weight_obs"]
