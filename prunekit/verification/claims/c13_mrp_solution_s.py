"""C13: MRP Solution S is feasible but never better than Solution M (methods.md §6.2, §11 C13).

Solution S (summed single-removal OBS updates, then zeroing P) is feasible; its loss is >= that of Solution M
on the same mask; its estimate ``sum_p w_p^2 / (2 [H^{-1}]_pp)`` equals the true loss when ``H^{-1}_PP`` is
diagonal (then S = M) and differs from it for a generic non-diagonal ``H^{-1}_PP``.
"""

from __future__ import annotations

import numpy as np

from ...errors import VerificationError
from ...formulations.mrp import MultipleRemoval
from ...formulations.sparsity import NM, Unstructured
from ...solvers import solve
from ..toy import random_layer
from . import register_claim
from .c12_mrp_solution_m import hessian


def solution_s(w: np.ndarray, p: np.ndarray, hinv: np.ndarray) -> np.ndarray:
    """Solution S for one row: w - sum_p (w_p/Hinv_pp) Hinv_{p,:}, then w_P = 0."""
    out = w - (w[p] / np.diag(hinv)[p]) @ hinv[p, :]
    out[p] = 0.0
    return out


def solution_m(w: np.ndarray, p: np.ndarray, hinv: np.ndarray) -> np.ndarray:
    """Solution M for one row: w - w_P (Hinv_PP)^{-1} Hinv_{P,:}."""
    out = w - np.linalg.solve(hinv[np.ix_(p, p)], w[p]) @ hinv[p, :]
    out[p] = 0.0
    return out


def hinv_with_diagonal_block(rng: np.random.Generator, n: int, p: np.ndarray) -> np.ndarray:
    """A random SPD H^{-1} whose P x P block is diagonal (Schur-complement construction)."""
    q = int(p.sum())
    d = np.diag(rng.uniform(0.5, 2.0, q))
    b = rng.standard_normal((q, n - q))
    c = b.T @ np.linalg.solve(d, b) + np.eye(n - q) * rng.uniform(0.1, 1.0)
    order = np.concatenate([np.nonzero(p)[0], np.nonzero(~p)[0]])
    full = np.block([[d, b], [b.T, c]])
    out = np.empty_like(full)
    out[np.ix_(order, order)] = full
    return out


def diagonal_block_inverse(g: np.ndarray, p: np.ndarray) -> np.ndarray:
    """An SPD H^{-1} whose P x P block is diagonal, built from any SPD ``g``: with ``g = [[A, B], [B^T, C]]``
    (P first), ``[[D, B], [B^T, C + B^T D^{-1} B]]`` where ``D = diag(A)``; its Schur complement is ``C``."""
    order = np.concatenate([np.nonzero(p)[0], np.nonzero(~p)[0]])
    q = int(p.sum())
    a = g[np.ix_(order, order)]
    d = np.diag(np.diag(a[:q, :q]))
    b = a[:q, q:]
    full = np.block([[d, b], [b.T, a[q:, q:] + b.T @ np.linalg.solve(d, b)]])
    out = np.empty_like(full)
    out[np.ix_(order, order)] = full
    return out


def estimate_gap_for(w: np.ndarray, p: np.ndarray, hinv: np.ndarray) -> tuple[float, float, float]:
    """(Solution-S estimate, true S loss, true M loss) for row ``w``, pruned mask ``p`` and SPD ``hinv``."""
    h = np.linalg.inv(hinv)
    est = float(np.sum(w[p] ** 2 / (2 * np.diag(hinv)[p])))
    ds, dm = solution_s(w, p, hinv) - w, solution_m(w, p, hinv) - w
    return est, 0.5 * float(ds @ h @ ds), 0.5 * float(dm @ h @ dm)


def estimate_gap(rng: np.random.Generator, n: int = 8, q: int = 3, diagonal: bool = True) -> tuple[float, float, float]:
    """(Solution-S estimate, true S loss, true M loss) for a random row and H^{-1}."""
    p = rng.permutation(n) < q
    if diagonal:
        hinv = hinv_with_diagonal_block(rng, n, p)
    else:
        a = rng.standard_normal((n, n))
        hinv = a @ a.T + 0.5 * np.eye(n)
    return estimate_gap_for(rng.standard_normal(n), p, hinv)


def solution_s_vs_m(layer, spec) -> None:
    """Raise unless MRP Solution S on ``layer``/``spec`` is feasible, shares Solution M's mask, and has a
    damped loss >= Solution M's."""
    sol_s = solve(MultipleRemoval(layer, spec, update="solution_s"), backend="torch", dtype="float64")
    sol_m = solve(MultipleRemoval(layer, spec, update="solution_m"), backend="torch", dtype="float64")
    if not bool((sol_s.mask == sol_m.mask).all()):
        raise VerificationError("Solution S and M chose different masks for the same mask rule")
    if sol_s.residuals["mask_violations"] or sol_s.residuals["pruned_max_abs"] > 0:
        raise VerificationError("Solution S is infeasible")
    h = hessian(layer)
    w = layer.weight.numpy()
    loss = lambda wh: 0.5 * float(np.sum(((wh - w) @ h) * (wh - w)))  # noqa: E731
    l_s, l_m = loss(sol_s.weights.numpy()), loss(sol_m.weights.numpy())
    if l_s < l_m - 1e-9 * max(1.0, l_m):
        raise VerificationError(f"Solution S ({l_s}) beat Solution M ({l_m})")


def estimate_error(w: np.ndarray, p: np.ndarray, hinv_diagonal: np.ndarray, hinv_generic: np.ndarray) -> float:
    """Relative error of the S estimate (and of S vs M) for a diagonal ``H^{-1}_PP``; raises if, for the generic
    ``hinv_generic`` (non-diagonal P x P block), the estimate is exact or S matches M."""
    est, true_s, true_m = estimate_gap_for(w, p, hinv_diagonal)
    err = max(abs(est - true_s), abs(true_s - true_m)) / max(1e-12, true_m)
    est_g, true_sg, true_mg = estimate_gap_for(w, p, hinv_generic)
    if abs(est_g - true_mg) <= 1e-9 * true_mg or true_sg <= true_mg * (1 + 1e-12):
        raise VerificationError("non-diagonal H^{-1}_PP: the S estimate matched the true loss / S matched M")
    return err


def check_instance(layer, spec, w: np.ndarray, p: np.ndarray, g: np.ndarray) -> float:
    """C13's error: :func:`solution_s_vs_m` on ``layer``/``spec``, then :func:`estimate_error` for row ``w``,
    pruned mask ``p`` (``|P| >= 2``) with ``H^{-1} = diagonal_block_inverse(g, p)`` and the generic ``H^{-1} = g``."""
    solution_s_vs_m(layer, spec)
    return estimate_error(w, p, diagonal_block_inverse(g, p), g)


@register_claim("C13", "MRP Solution S is feasible but never better than Solution M; its estimate sum w_p^2/(2[H^-1]_pp) "
                "equals the true loss iff H^{-1}_PP is diagonal.", tolerance=1e-8, source="methods.md §6.2, §11 C13")
def check(rng: np.random.Generator) -> float:
    m, n = int(rng.integers(2, 6)), int(rng.choice([4, 8, 12]))
    layer = random_layer(rng, m, n, conditioning=str(rng.choice(["well", "correlated", "ill"])))
    spec = [Unstructured(0.5), NM(2, 4), Unstructured(0.4, scope="layer")][int(rng.integers(0, 3))]
    solution_s_vs_m(layer, spec)
    p = rng.permutation(8) < 3
    w = rng.standard_normal(8)
    a = rng.standard_normal((8, 8))
    return estimate_error(w, p, hinv_with_diagonal_block(rng, 8, p), a @ a.T + 0.5 * np.eye(8))
