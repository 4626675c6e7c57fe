"""Per-row masked least squares: the one restoration kernel of the torch solvers (methods.md §1 facts 2-3).

Problem
-------
Given an SPD ``H = H0 + lambda I`` (n x n), a keep-mask K (m x n, True = kept) and, per row i, a target t_i
(or a cross term ``b_i = t_i H``), find for every row

.. math::

    \\hat w_i = \\arg\\min_{w:\\, w_j = 0 \\,\\forall j \\in P_i} \\tfrac12 (w - t_i) H (w - t_i)^T
    \\quad\\Longrightarrow\\quad \\hat w_{i,S} = b_{i,S} H_{SS}^{-1} = t_{i,S} + t_{i,P} H_{PS} H_{SS}^{-1},
    \\quad \\hat w_{i,P} = 0,

with S_i the kept and P_i the pruned columns of row i.  FixedMaskRestoration, MRP's Solution M, ADMM's final
step, FISTA's refit (``t = U``, ``H = G* + delta I``), SPAP's and FASP's restorations and SparseLLM's structured
W2 regression are all this problem.

Damping convention (one for every caller): ``H0`` is the Gram matrix with dead inputs (``G_jj = 0``) set to
``G_jj = 1`` and ``lambda = damping * mean(diag G)`` of the raw diagonal (``damping`` when that mean is 0) --
exactly :meth:`LayerData.damped_gram`; :func:`damped_parts` applies it to any Gram (G, or G* for FISTA's refit).
Every path factorizes ``H0 + lambda I`` through :func:`factor_hessian` (:func:`~._linalg.damped_cholesky`, which
also rejects factors of numerically singular matrices), so a failed factorization escalates lambda x10 and
every path reports the lambda it actually used.

Paths (:func:`masked_lstsq` picks one; all return exact zeros off the mask)
----------------------------------------------------------------------------
``"columns"``  all rows share S: one |S| x |S| Cholesky serves every row (exact).
``"exact"``    per-row direct solve, rows grouped by their kept count: the primal ``H_SS`` Cholesky, or, where
               ``|P| < |S|`` and ``H^{-1}`` is at hand, the Lagrange form ``(H^{-1})_{PP}`` (same optimum, smaller
               system; with a caller's ``H^{-1}``, the Lagrange form for every row).  :func:`masked_lstsq_exact`
               (primal only) is the reference twin the tests use.
``"cg"``       the fast path: conjugate gradients on the Lagrange dual, all rows at once.  With multipliers
               ``mu`` supported on P, ``w(mu) = t - mu H^{-1}`` is stationary on S for every ``mu``, and
               feasibility ``w(mu)_P = 0`` is the SPD system ``mu (H^{-1})_{PP} = t_P``.  CG solves it for every
               row at once (one (rows x n) @ (n x n) product per iteration), preconditioned by
               ``diag (H^{-1})_{PP}`` and started from the OBS single-removal multipliers
               ``mu_0 = t_P / diag (H^{-1})_{PP}`` (MRP's Solution S).  The returned point is ``P_S w(mu)``.

Certificate of the fast path.  With the infeasibility ``s = w(mu)_P``, weak duality gives for every row

.. math::

    f(P_S w(\\mu)) - f^\\star \\;\\le\\; f(P_S w(\\mu)) - D(\\mu) = \\tfrac12\\, s H_{PP} s^T,
    \\qquad D(\\mu) = \\tfrac12\\, \\mu \\cdot (t + w(\\mu)) \\;\\le\\; f^\\star,

(the KKT residual of the dual in the H norm), so a row is accepted only when ``1/2 s H s^T <= tol * D(mu)``:
its objective is then within ``tol`` relative of the exact optimum (after 8 iterations a row is also accepted
when the bound is below ``eps`` times its dense energy ``1/2 t H t^T``, the float resolution of its objective;
the bound reported is then above ``tol``).  The bound is cheap to evaluate (one
product ``s @ H``), checked when the CG residual predicts convergence, and tight in practice (measured ratio
bound / true gap ~ 1.1).  Rows that are not certified after ``max_iter`` iterations are re-solved by the exact
path (counted in :attr:`LstsqInfo.fallback_rows`): no unconverged row is returned.  The bound is exact in
exact arithmetic; in float32 it is as accurate as the float32 ``H^{-1}`` (as is every float32 path).

Why this design (measured on a 1024 x 2816 layer, 4096 correlated tokens, float32, 2 CPU threads): the exact
per-row solve costs sum_i |S_i|^3 / 3 flops in small batched factorizations (~7-10x the fast path's time,
``benchmarks/RESTORATION.md``); primal CG preconditioned by ``(H^{-1})_SS`` and dual CG preconditioned by ``H_PP``
need two (rows x n) @ (n x n) products per iteration and converged slower; Jacobi dual CG needs one and certifies
every row at tol = 1e-4 in 7-9 iterations for 50 % unstructured, 2:4 and random masks (~10 at 1e-6, ~20 at 90 %
sparsity); the certificate is tight (bound / true gap ~ 1.1).  With little damping (cond(H) > 1e6) the iteration
slows and rows fall back to the exact path: always correct, no longer fast.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch

from ...errors import NumericalError
from ._linalg import damped_cholesky

MAX_BATCH_ELEMENTS = 1 << 27  # elements of batched k x k blocks of the exact path when row_batch is None
METHODS = ("auto", "cg", "exact")
CG_ITERATIONS_ESTIMATE = 12  # iterations the auto cost model assumes for the fast path
CG_MIN_WIDTH = 256  # method="auto" keeps the exact path below this n (small layers: exact is cheap anyway)
EXACT_FLOP_COST = 8.0  # measured: a batched per-row Cholesky flop costs 4-30 GEMM flops (CPU, n 512-2048)


@dataclass(frozen=True)
class LstsqInfo:
    """How :func:`masked_lstsq` solved a problem.

    Attributes
    ----------
    path : {"columns", "exact", "cg"}
        The path taken (see the module docstring).
    damping_used : float
        Absolute damping actually added to ``H0`` (escalated above the requested one if a Cholesky failed).
    iterations : int
        CG iterations run on the slowest row (0 for the direct paths).
    fallback_rows : int
        Rows the fast path did not certify within ``max_iter`` and re-solved exactly.
    gap_bound : float
        Largest certified relative objective gap ``(f - f*) / f*`` bound over the rows the fast path returned
        (0.0 for the direct paths).
    checks : int
        Certificate evaluations of the fast path (each costs about one CG iteration).
    """

    path: str
    damping_used: float
    iterations: int = 0
    fallback_rows: int = 0
    gap_bound: float = 0.0
    checks: int = 0

    def as_stats(self) -> dict:
        """The record as ``Solution.stats`` entries (``restore_path``, ``cg_iterations``, ...)."""
        return {"restore_path": self.path, "cg_iterations": self.iterations, "cg_fallback_rows": self.fallback_rows,
                "cg_gap_bound": self.gap_bound, "cg_checks": self.checks}


# ----------------------------------------------------------------------------------------------- damping
def damped_parts(gram: torch.Tensor, damping: float, dtype: torch.dtype = torch.float64,
                 device=None) -> tuple[torch.Tensor, float]:
    """``(H0, lambda)`` of the damping convention: ``H0`` = ``gram`` with dead inputs set to 1, ``lambda`` absolute.

    ``lambda = damping * mean(diag gram)`` (raw diagonal; ``damping`` when the mean is 0), so that
    ``H0 + lambda I`` equals :meth:`LayerData.damped_gram` for ``gram = layer.gram, damping = layer.damping``.
    A dead input (zero row and column) decouples from the others, so setting its diagonal changes no solution.
    """
    g = gram.detach().to(device=device or gram.device, dtype=dtype).clone()
    mean_diag = float(gram.detach().diagonal().double().mean()) if g.numel() else 0.0
    lam = float(damping) * (mean_diag if mean_diag > 0 else 1.0)
    dead = g.diagonal() == 0
    if bool(dead.any()):
        g.diagonal()[dead] = 1.0
    return g, lam


def layer_parts(layer, dtype: torch.dtype = torch.float64, device=None) -> tuple[torch.Tensor, float]:
    """``(H0, lambda)`` with ``H0 + lambda I = layer.damped_gram(dtype, device)`` (plain objective)."""
    return damped_parts(layer.gram, layer.damping, dtype=dtype, device=device or layer.weight.device)


def objective_rows(weight: torch.Tensor, target: torch.Tensor, hessian: torch.Tensor) -> torch.Tensor:
    """Per-row ``1/2 (w_i - t_i) H (w_i - t_i)^T`` (``hessian`` = the damped H)."""
    d = weight - target
    return 0.5 * torch.sum((d @ hessian) * d, dim=1)


# ----------------------------------------------------------------------------------------------- kernels
def factor_hessian(hessian0: torch.Tensor, damping: float, *, max_tries: int = 8) -> tuple[torch.Tensor, float]:
    """Lower Cholesky factor of ``H0 + lambda I`` and the lambda used, escalating lambda x10 on failure.

    As :func:`~._linalg.damped_cholesky`; in addition, when lambda is below the rounding level
    ``tau = 100 eps max diag H0`` (typically no damping), a factorization whose smallest pivot^2 is below ``tau``
    counts as a failure: it succeeded only by rounding on a numerically singular matrix (e.g. duplicated inputs),
    and its principal blocks and inverse would be meaningless.  Damped matrices (lambda >= tau, positive
    definite by construction) are accepted as :func:`~._linalg.damped_cholesky` accepts them.
    """
    n = hessian0.shape[0]
    tau = 100.0 * torch.finfo(hessian0.dtype).eps * (float(hessian0.diagonal().abs().max()) if n else 0.0)
    scale = float(hessian0.diagonal().abs().mean()) if n else 1.0
    lam = float(damping)
    for _ in range(max_tries + 1):
        factor, used = damped_cholesky(hessian0, lam, max_tries=max_tries)
        if n == 0 or used >= tau or float(factor.diagonal().min()) ** 2 >= tau:
            return factor, used
        lam = max(10.0 * used, 1e-8 * (scale if scale > 0 else 1.0))
    raise NumericalError(
        f"the {n} x {n} Hessian stays numerically singular even with damping {lam:.3g}. Fix: raise "
        f"LayerData.damping (e.g. 0.01) or use dtype='float64'."
    )


def batched_spd_solve(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Solve ``a z = b`` for a batch of SPD matrices a (k, q, q), b (k, q); LU where Cholesky fails."""
    factor, info = torch.linalg.cholesky_ex(a)
    z = torch.cholesky_solve(b.unsqueeze(-1), factor).squeeze(-1)
    bad = info != 0
    if bool(bad.any()):
        z[bad] = torch.linalg.solve(a[bad], b[bad])
    if not bool(torch.isfinite(z).all()):
        raise NumericalError(
            "a principal block of the (inverse) Hessian is numerically singular. "
            "Fix: raise LayerData.damping or use dtype='float64'."
        )
    return z


def _grouped_rows(counts: torch.Tensor, width: int, extra: int, row_batch: Optional[int]):
    """Yield (k, rows) with rows of equal count k, in batches bounded by ``MAX_BATCH_ELEMENTS``."""
    for k in torch.unique(counts).tolist():
        if k == 0:
            continue
        rows_k = torch.nonzero(counts == k).squeeze(1)
        step = row_batch or max(1, MAX_BATCH_ELEMENTS // (k * k + k + extra))
        for start in range(0, rows_k.numel(), step):
            yield k, rows_k[start:start + step]


def primal_rows(hessian: torch.Tensor, keep: torch.Tensor, *, target: Optional[torch.Tensor] = None,
                cross: Optional[torch.Tensor] = None, row_batch: Optional[int] = None) -> torch.Tensor:
    """Per-row primal solve with a batched Cholesky of each kept block ``H_SS``, zero off ``keep``.

    With ``target``: ``w_S = t_S + (t_P H_PS) H_SS^{-1}`` (the correction form, accurate when H is ill-conditioned);
    with ``cross``: ``w_S = b_S H_SS^{-1}``.
    """
    ref = target if target is not None else cross
    out = torch.zeros_like(ref)
    width = ref.shape[1]
    rhs = (target.masked_fill(keep, 0.0) @ hessian) if target is not None else cross
    for k, rows in _grouped_rows(keep.sum(dim=1), width, width, row_batch):
        idx = torch.nonzero(keep[rows])[:, 1].view(rows.numel(), k)
        a = hessian[idx.unsqueeze(2), idx.unsqueeze(1)]
        z = batched_spd_solve(a, torch.gather(rhs[rows], 1, idx))
        if target is not None:
            z = torch.gather(target[rows], 1, idx) + z
        out[rows] = torch.zeros(rows.numel(), width, dtype=out.dtype, device=out.device).scatter_(1, idx, z)
    return out


def lagrange_rows(weight: torch.Tensor, prune: torch.Tensor, hinv_rows: torch.Tensor,
                  *, row_batch: Optional[int] = None) -> torch.Tensor:
    """Multiple-removal (Lagrange / Solution M) update ``w - w_P (Hinv_PP)^{-1} Hinv_{P,:}`` of every row.

    Parameters
    ----------
    weight : (r, f)
        Rows to update over the free columns F (the first ``B`` columns are the ones that may be pruned).
    prune : (r, B) bool
        Entries of the first ``B`` columns to set to zero (True = pruned).
    hinv_rows : (B, f)
        Rows of ``(H_FF)^{-1}`` for those B columns; ``hinv_rows[:, :B]`` is SPD.

    Returns a new (r, f) tensor with the pruned entries exactly 0.  Rows with equal pruned count q are solved
    together as batched q x q Cholesky systems (results do not depend on the batching).
    """
    out = weight.clone()
    width = prune.shape[1]
    hinv_pp = hinv_rows[:, :width]
    for q, rows in _grouped_rows(prune.sum(dim=1), width, hinv_rows.shape[1], row_batch):
        idx = torch.nonzero(prune[rows])[:, 1].view(rows.numel(), q)
        a = hinv_pp[idx.unsqueeze(2), idx.unsqueeze(1)]
        z = batched_spd_solve(a, torch.gather(out[rows], 1, idx))
        z_full = torch.zeros(rows.numel(), width, dtype=out.dtype, device=out.device).scatter_(1, idx, z)
        new = out[rows] - z_full @ hinv_rows
        new[:, :width] = new[:, :width].masked_fill(prune[rows], 0.0)
        out[rows] = new
    return out


def _exact_rows(target: Optional[torch.Tensor], cross: Optional[torch.Tensor], hessian: torch.Tensor,
                keep: torch.Tensor, hinv: Optional[torch.Tensor], row_batch: Optional[int],
                given_hinv: bool = False) -> torch.Tensor:
    """Exact per-row solve.  With a caller's ``hinv``: the Lagrange form with ``(H^{-1})_PP`` for every row (the
    answer is the one that ``hinv`` defines); otherwise the smaller side per row: primal ``H_SS`` where
    ``|S| <= |P|`` (or no target / H^{-1}), else the Lagrange form."""
    kept = keep.sum(dim=1)
    use_dual = hinv is not None and target is not None
    if use_dual and given_hinv:
        dual = torch.ones_like(kept, dtype=torch.bool)
    elif use_dual:
        dual = kept > keep.shape[1] - kept
    else:
        dual = torch.zeros_like(kept, dtype=torch.bool)
    out = torch.zeros_like(target if target is not None else cross)
    if bool((~dual).any()):
        rows = torch.nonzero(~dual).squeeze(1)
        out[rows] = primal_rows(hessian, keep[rows], target=None if target is None else target[rows],
                                cross=None if cross is None else cross[rows], row_batch=row_batch)
    if bool(dual.any()):
        rows = torch.nonzero(dual).squeeze(1)
        out[rows] = lagrange_rows(target[rows], ~keep[rows], hinv, row_batch=row_batch).masked_fill(~keep[rows], 0.0)
    return out


def masked_lstsq_exact(target: torch.Tensor, hessian: torch.Tensor, keep: torch.Tensor,
                       *, row_batch: Optional[int] = None) -> torch.Tensor:
    """Reference twin: row by row ``w_S = t_S + (t_P H_PS) H_SS^{-1}`` (= ``(t H)_S H_SS^{-1}``) with a Cholesky
    of each kept block, ``w_P = 0``.

    ``hessian`` is the damped, SPD H.  O(sum_i |S_i|^3): the definition the fast path is tested against.
    """
    keep = keep.to(device=target.device, dtype=torch.bool)
    return primal_rows(hessian, keep, target=target, row_batch=row_batch)


# ----------------------------------------------------------------------------------------------- fast path
def _default_max_iter(keep: torch.Tensor) -> int:
    """Break-even iteration count: past it, the exact per-row solve costs less than more CG."""
    n = keep.shape[1]
    kept = keep.sum(dim=1).double()
    side = torch.minimum(kept, n - kept)
    per_row = float((side ** 3 / 3.0).mean()) if side.numel() else 0.0
    return max(20, int(math.ceil(per_row / (2.0 * n * n))))


@dataclass(frozen=True)
class CGResult:
    """Output of :func:`cg_rows`.

    Attributes
    ----------
    weights : (m, n)
        ``P_S w(mu)`` for certified rows (exactly 0 off the mask), zero rows elsewhere.
    certified : (m,) bool
        Rows whose certificate met ``tol`` (or the float resolution of their objective).
    iterations : (m,) int64
        CG iterations each row ran.
    gap_bound : (m,) float64
        Certified relative gap bound ``(1/2 s H s^T) / D(mu)`` (NaN for rows not certified).
    checks : int
        Certificate evaluations (each one (rows x n) @ (n x n) product over the active rows).
    """

    weights: torch.Tensor
    certified: torch.Tensor
    iterations: torch.Tensor
    gap_bound: torch.Tensor
    checks: int


def cg_rows(target: torch.Tensor, hessian: torch.Tensor, hinv: torch.Tensor, keep: torch.Tensor, *,
            tol: float = 1e-4, max_iter: Optional[int] = None, first_check: int = 4,
            check_every: int = 6) -> CGResult:
    """Jacobi-preconditioned CG on the Lagrange dual of every row at once (the fast path, no fallback).

    Parameters
    ----------
    target : (m, n)
        Unconstrained minimizers t (the dense weight for restoration).
    hessian, hinv : (n, n)
        The damped H and its inverse.
    keep : (m, n) bool
        Keep-mask.
    tol : float
        Relative objective gap each returned row is certified to (see the module docstring).
    max_iter : int, optional
        Iteration limit (None: the break-even count against the exact per-row solve, at least 20).
    first_check, check_every : int
        The certificate is first evaluated after ``first_check`` iterations, then as soon as the preconditioned
        residual predicts that half of the active rows meet ``tol`` (the bound scales like it), and at the
        latest every ``check_every`` iterations and at ``max_iter``.  Certified rows leave the iteration.
    """
    m, n = target.shape
    dtype, dev = target.dtype, target.device
    tiny = torch.finfo(dtype).tiny
    keep = keep.to(device=dev, dtype=torch.bool)
    max_iter = _default_max_iter(keep) if max_iter is None else int(max_iter)
    out = torch.zeros_like(target)
    certified = torch.zeros(m, dtype=torch.bool, device=dev)
    iterations = torch.zeros(m, dtype=torch.int64, device=dev)
    gap_bound = torch.full((m,), float("nan"), dtype=torch.float64, device=dev)
    pf_all = (~keep).to(dtype)
    # rows already optimal: nothing kept (0 is the only feasible point) or nothing to remove (t_P = 0)
    trivial = ~keep.any(dim=1) | ~(target * pf_all).ne(0).any(dim=1)
    out[trivial] = target[trivial].masked_fill(~keep[trivial], 0.0)
    certified[trivial] = True
    gap_bound[trivial] = 0.0
    active = torch.nonzero(~trivial).squeeze(1)
    checks = 0
    if active.numel() == 0:
        return CGResult(out, certified, iterations, gap_bound, checks)
    diag = hinv.diagonal().clamp_min(tiny)
    t, kp, pf = target[active], keep[active], pf_all[active]
    mu = t * pf / diag  # OBS single-removal multipliers (Solution S)
    w = t - mu @ hinv
    s = w * pf
    z = s / diag
    p = z.clone()
    rz = torch.sum(s * z, dim=1)
    floor = None  # float resolution of each row's objective (eps x its dense energy), computed when first needed
    rz_check = cert_check = dual_check = None
    last_check, it = 0, 0
    while True:
        if it >= max_iter or (cert_check is None and it >= first_check) or it - last_check >= check_every:
            due = True
        elif cert_check is not None:  # the bound scales with the preconditioned residual norm
            predicted = cert_check * rz / rz_check.clamp_min(tiny)
            due = 2 * int((predicted <= tol * dual_check).sum()) >= active.numel()
        else:
            due = False
        if due:
            checks += 1
            last_check = it
            cert = 0.5 * torch.sum(s * (s @ hessian), dim=1)
            dual = 0.5 * torch.sum(mu * (t + w), dim=1)
            ok = (cert <= tol * dual) & torch.isfinite(cert)
            if it >= 2 * first_check or it >= max_iter:
                if floor is None or floor.numel() != active.numel():
                    floor = torch.finfo(dtype).eps * objective_rows(torch.zeros_like(t), t, hessian).abs()
                ok |= cert <= floor
            if bool(ok.any()):
                done = active[ok]
                out[done] = w[ok].masked_fill(~kp[ok], 0.0)
                certified[done] = True
                iterations[done] = it
                gap_bound[done] = torch.where(dual[ok] > 0, cert[ok] / dual[ok], torch.zeros_like(cert[ok])).double()
                left = ~ok
                active, t, kp, pf = active[left], t[left], kp[left], pf[left]
                mu, w, s, z, p, rz = mu[left], w[left], s[left], z[left], p[left], rz[left]
                cert, dual = cert[left], dual[left]
                floor = floor[left] if floor is not None else None
            rz_check, cert_check, dual_check = rz.clone(), cert, dual
            if active.numel() == 0 or it >= max_iter:
                break
        ph = p @ hinv
        q = ph * pf
        pq = torch.sum(p * q, dim=1)
        alpha = torch.where(pq > 0, rz / pq.clamp_min(tiny), torch.zeros_like(pq))
        mu = mu + alpha.unsqueeze(1) * p
        w = w - alpha.unsqueeze(1) * ph
        s = s - alpha.unsqueeze(1) * q
        z = s / diag
        rz_new = torch.sum(s * z, dim=1)
        beta = torch.where(rz > 0, rz_new / rz.clamp_min(tiny), torch.zeros_like(rz))
        p = z + beta.unsqueeze(1) * p
        rz = rz_new
        it += 1
    iterations[active] = it
    return CGResult(out, certified, iterations, gap_bound, checks)


# ----------------------------------------------------------------------------------------------- entry points
def _shared_columns(keep: torch.Tensor) -> bool:
    return keep.shape[0] > 0 and bool((keep == keep[:1]).all())


def _prefer_cg(keep: torch.Tensor, have_hinv: bool) -> bool:
    """Cost model of ``method="auto"``: the exact per-row solve's flops (weighted by ``EXACT_FLOP_COST``) against
    ~``CG_ITERATIONS_ESTIMATE`` CG iterations plus ``H^{-1}``; never the fast path below ``CG_MIN_WIDTH`` inputs."""
    m, n = keep.shape
    if n < CG_MIN_WIDTH:
        return False
    kept = keep.sum(dim=1).double()
    side = (n - kept) if have_hinv else kept
    exact = EXACT_FLOP_COST * float((side ** 3 / 3.0 + side * side).sum())
    cg = (CG_ITERATIONS_ESTIMATE + 2) * 2.0 * m * n * n + (0.0 if have_hinv else 2.0 * n ** 3)
    return cg < exact


def columns_lstsq(hessian0: torch.Tensor, damping: float, kept: torch.Tensor, *,
                  target: Optional[torch.Tensor] = None, cross: Optional[torch.Tensor] = None,
                  max_tries: int = 8) -> tuple[torch.Tensor, float]:
    """Shared kept columns S (bool (n,)) with ONE damped Cholesky of ``H_SS = H0_SS + lambda I``; ``W_P = 0``.

    ``W_S = T_S + T_P H0_PS H_SS^{-1}`` (target form) or ``W_S = B_S H_SS^{-1}`` (cross form).
    Returns ``(W, lambda_used)``.
    """
    ref = target if target is not None else cross
    out = torch.zeros_like(ref)
    s_idx = torch.nonzero(kept).squeeze(1)
    if s_idx.numel() == 0:
        return out, float(damping)
    factor, used = factor_hessian(hessian0[s_idx][:, s_idx], damping, max_tries=max_tries)
    if target is not None:
        p_idx = torch.nonzero(~kept).squeeze(1)
        w_s = target[:, s_idx]
        if p_idx.numel():
            w_s = w_s + torch.cholesky_solve((target[:, p_idx] @ hessian0[p_idx][:, s_idx]).T, factor).T
        out[:, s_idx] = w_s
    else:
        out[:, s_idx] = torch.cholesky_solve(cross[:, s_idx].T, factor).T
    return out, used


def masked_lstsq(hessian0: torch.Tensor, keep: torch.Tensor, *, target: Optional[torch.Tensor] = None,
                 cross: Optional[torch.Tensor] = None, damping: float = 0.0, method: str = "auto",
                 hinv: Optional[torch.Tensor] = None, damping_used: Optional[float] = None, tol: float = 1e-4,
                 max_iter: Optional[int] = None, row_batch: Optional[int] = None,
                 max_tries: int = 8) -> tuple[torch.Tensor, LstsqInfo]:
    """Solve the per-row masked least squares of the module docstring; returns ``(W, info)``.

    Parameters
    ----------
    hessian0 : (n, n)
        Symmetric PSD ``H0`` (dead inputs already set to 1, see :func:`damped_parts`); ``H = H0 + damping I``.
    keep : (m, n) bool
        Keep-mask (True = kept); the result is exactly 0 where it is False.
    target, cross : (m, n)
        Exactly one: the target T (objective ``1/2 (w - t) H (w - t)^T``), or the cross term ``B = T H``
        (objective ``1/2 w H w^T - w b^T``, e.g. ``C`` for FISTA's error correction, ``Y^T p`` for SparseLLM).
    damping : float
        Absolute lambda (escalated x10 if the Cholesky of H fails; the value used is ``info.damping_used``).
    method : {"auto", "cg", "exact"}
        ``"auto"``: the shared-columns path when all rows share S, else the fast path when its cost model wins
        (large layers), else the exact per-row solve.  ``"cg"`` forces the fast path for per-row masks,
        ``"exact"`` the direct per-row solve.
    hinv, damping_used : optional
        ``(H0 + damping_used I)^{-1}`` already computed (e.g. MRP's mask scores); H then uses ``damping_used``
        (default ``damping``).  The direct path then uses the Lagrange form with ``hinv`` for every row.
    tol, max_iter : fast-path certificate tolerance and iteration limit (see :func:`cg_rows`).
    row_batch : int, optional
        Rows solved at once (memory bound): fast-path chunks and exact-path batches (None: all rows on the fast
        path, as many as fit ``MAX_BATCH_ELEMENTS`` on the exact path).  Results do not depend on it beyond
        rounding.

    Guarantees: zero off ``keep``; the direct paths return the optimum, the fast path every row within
    ``tol`` relative objective of it (rows it cannot certify are re-solved by the exact path).
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}.")
    if (target is None) == (cross is None):
        raise ValueError("pass exactly one of target (T) or cross (B = T H).")
    ref = target if target is not None else cross
    dtype, dev = ref.dtype, ref.device
    keep = keep.to(device=dev, dtype=torch.bool)
    h0 = hessian0.to(device=dev, dtype=dtype)
    m, n = keep.shape
    if method == "auto" and _shared_columns(keep) and hinv is None:
        w, used = columns_lstsq(h0, damping, keep[0], target=target, cross=cross, max_tries=max_tries)
        return w, LstsqInfo("columns", used)
    given_hinv = hinv is not None
    if hinv is None:
        use_cg = method == "cg" or (method == "auto" and _prefer_cg(keep, have_hinv=False))
        factor, used = factor_hessian(h0, damping, max_tries=max_tries)
        if use_cg:
            hinv = torch.cholesky_solve(torch.eye(n, dtype=dtype, device=dev), factor)
            hinv = 0.5 * (hinv + hinv.T)
    else:
        used = float(damping if damping_used is None else damping_used)
        hinv = hinv.to(device=dev, dtype=dtype)
        use_cg = method == "cg" or (method == "auto" and _prefer_cg(keep, have_hinv=True))
    hessian = h0 + used * torch.eye(n, dtype=dtype, device=dev)
    if not use_cg:
        return _exact_rows(target, cross, hessian, keep, hinv, row_batch, given_hinv), LstsqInfo("exact", used)
    if target is None:
        target = cross @ hinv
    step = row_batch or m
    parts = [cg_rows(target[r:r + step], hessian, hinv, keep[r:r + step], tol=tol, max_iter=max_iter)
             for r in range(0, m, step)]
    w = torch.cat([r.weights for r in parts]) if parts else torch.zeros_like(target)
    certified = torch.cat([r.certified for r in parts]) if parts else torch.ones(0, dtype=torch.bool, device=dev)
    its = torch.cat([r.iterations for r in parts]) if parts else torch.zeros(0, dtype=torch.int64, device=dev)
    bound = torch.cat([r.gap_bound for r in parts]) if parts else torch.zeros(0, dtype=torch.float64, device=dev)
    fallback = torch.nonzero(~certified).squeeze(1)
    if fallback.numel():
        w[fallback] = _exact_rows(target[fallback], None if cross is None else cross[fallback], hessian,
                                  keep[fallback], hinv, row_batch, given_hinv)
    fin = bound[certified]
    gap = float(fin.max()) if fin.numel() else 0.0
    return w, LstsqInfo("cg", used, iterations=int(its.max()) if its.numel() else 0,
                        fallback_rows=int(fallback.numel()), gap_bound=gap, checks=sum(r.checks for r in parts))


def restore_layer(layer, keep: torch.Tensor, dtype: torch.dtype = torch.float64, device=None, *,
                  weight: Optional[torch.Tensor] = None, method: str = "auto", hinv: Optional[torch.Tensor] = None,
                  damping_used: Optional[float] = None, tol: float = 1e-4, max_iter: Optional[int] = None,
                  row_batch: Optional[int] = None, max_tries: int = 8) -> tuple[torch.Tensor, LstsqInfo]:
    """Restoration of a :class:`LayerData` on ``keep``: :func:`masked_lstsq` with ``H = layer.damped_gram()``.

    ``weight`` overrides the target (default: the layer's W).  Returns ``(W_hat in dtype on device, info)``.
    """
    device = torch.device(device) if device is not None else layer.weight.device
    h0, lam = layer_parts(layer, dtype=dtype, device=device)
    t = (layer.weight if weight is None else weight).detach().to(device=device, dtype=dtype)
    return masked_lstsq(h0, keep, target=t, damping=lam, method=method, hinv=hinv, damping_used=damping_used,
                        tol=tol, max_iter=max_iter, row_batch=row_batch, max_tries=max_tries)
