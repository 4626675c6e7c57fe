"""Exact restricted least squares on a *given* Gram matrix: the kernel of the exact reference solvers.

For one layer with weight W (m x n), A = G (n x n, PSD) and B = W G (A = G*, B = C with error
correction), the restoration of row i on a kept column set S is (methods.md §1, facts 1-2)

.. math::

    \\min_{z \\in \\mathbb R^{|S|}} f_i(z) = \\tfrac12 \\big(z A_{SS} z^T - 2 z B_{i,S}^T + c_i\\big),
    \\qquad c_i = w_i G w_i^T,

whose minimisers solve A_SS z = B_{i,S}.  The *stated problem* is A and B as given (float64 numbers
are exact dyadic rationals); X is not available.  :class:`RestrictedLstsq` returns the minimum-norm
exact minimiser, rounded to float64, and its error f_i.

Why not ``lstsq(A_SS, B_S, rcond=1e-12)``
-----------------------------------------
G = X X^T squares the condition number of the data: cond(X) ~ 1e8 gives cond(G_SS) ~ 1e16, and an
SVD cut at 1e-12 (or at k eps, numpy's default) discards directions the optimum needs.  Measured on
2:4 brute force, m = 4, n = 8, 6 tokens, worst of 12 seeds, objective of the chosen weights over the
exact optimum:

==========================================  ========  =========  ==========  ==========  ===========
inputs                                      rcond     rcond      eig, cut    eig, every  this module
                                            1e-12     None       at k eps    lambda > 0
==========================================  ========  =========  ==========  ==========  ===========
columns scaled by logspace(-8, 0)           73x       61x        1 + 4e-13   1 + 4e-13   1 + 9e-12
integer, x_j = x_i + e_t (G exact, cond     6.0x      6.0x       6.0x        1.7x        1 + 1e-16
(X_S) ~ 3e7)
duplicated columns / all-zero columns       exact     exact      exact       exact       exact
==========================================  ========  =========  ==========  ==========  ===========

(the eigen-solves are on the Jacobi-equilibrated matrix; float64 Cholesky with long-double iterative
refinement reached 2.2x on the collinear family).  Equilibration fixes diagonal ill-conditioning; for
collinear columns the failure is information, not method: at cond(A_SS) ~ 1e16 no float64
factorisation resolves the small direction, so the stated problem needs exact arithmetic there.

What this module does instead (each step exact or certified)
------------------------------------------------------------
1. Columns with A_jj = 0 get weight 0 (for a PSD A the whole row and column vanish, and so does B_j).
2. *Fast path*: Jacobi equilibration by exact powers of two, D A_SS D with unit-order diagonal, then a
   float64 symmetric eigendecomposition.  If its smallest eigenvalue exceeds 1e-8 of the largest
   (equilibrated condition <= 1e8, so the eigenvalues are certified positive: their absolute error is
   about k eps lambda_max), the solve plus two steps of iterative refinement with residuals in
   ``numpy.longdouble`` (eps 1.1e-19 on x86) gives z with relative forward error ~ max(eps, 1e8 eps_ld)
   ~ 1e-11, and f_i in long double.  Diagonal scaling (the usual ill-conditioning of activations,
   cond(X) ~ 1e8 and more) lands here after equilibration.
3. *Exact path* (everything else: near-collinear or duplicated kept columns, exactly singular blocks):
   exact arithmetic on the float64 entries held as integers times a power of two -- integer-preserving
   (Bareiss) Gauss-Jordan elimination with symmetric pivoting on the largest remaining diagonal, exact
   rank, then (rank-deficient blocks only, with :class:`fractions.Fraction`) projection of the basic
   solution onto the orthogonal complement of the null space: the minimum-norm minimiser, as ``lstsq``
   returns for exact duplicates; f_i = (c_i - B_{i,S} z^T) / 2 exactly, reported as max(f_i, 0).  If
   A_SS is not PSD in exact arithmetic (a rounded singular G), elimination stops at the first
   non-positive remaining diagonal and the rest of the Schur complement is treated as zero (those
   directions become null directions instead of making the problem unbounded).  Cost: about
   k^2 (k + m) big-integer operations, ~2 ms for k = 8 and tens of ms for k = 16.

Where ``numpy.longdouble`` is plain float64 (not x86), the fast path's refinement is float64 only and
its forward error ~ 1e-8 (objective excess ~ 1e-16 relative); the exact path is unaffected.

:meth:`RestrictedLstsq.optimality_gap` is the certificate reference solvers check before they say
"optimal": the exact residual r_i = B_{i,S} - w_hat_i A_{:,S} and the exact suboptimality of the
returned weights for their mask, gap_i = r_i A_SS^+ r_i^T / 2 (stationarity measured in the A_SS^{-1}
norm, i.e. in objective units).  Stationarity relative to max |B| alone cannot tell a truncated solve
from rounding: on integer near-duplicate layers the rcond 1e-12 solutions at 1.4-2.3x the optimum
have max |r| / max |B| = 4e-9 .. 8e-9, the exact ones rounded to float64 (entries ~ 1e7) up to 1.7e-9,
while their gaps differ by 17 orders of magnitude (0.4-1.3 of the objective against < 1e-17).

Scope: G is taken as exact.  When G was itself rounded from near-collinear data (float inputs with
cond(X) >~ 1e7), the stated G no longer determines the data's optimum (its small eigenvalues are
rounding noise, sometimes negative); this module is then exact for the G it is given, not for X.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Optional

import numpy as np

FAST_COND = 1e8
_LD = np.longdouble
_REFINE_STEPS = 2


# ---------------------------------------------------------------------------------------------- exact dyadics
# A float64 array is held exactly as (object ndarray of Python ints, e): value = ints * 2**e.

def _dyadic(x: np.ndarray) -> tuple[np.ndarray, int]:
    """Exact integer form ``(ints, e)`` of a float64 array: ``x == ints * 2.0**e`` entrywise."""
    x = np.asarray(x, dtype=np.float64)
    mant, ex = np.frexp(x)
    ints = (mant * 2.0 ** 53).astype(np.int64)           # exact: |mant| < 1 has 53 significant bits
    exps = ex.astype(np.int64) - 53
    nz = ints != 0
    e = int(exps[nz].min()) if nz.any() else 0
    out = np.empty(x.shape, dtype=object)
    flat = out.reshape(-1)
    for i, (v, ee) in enumerate(zip(ints.reshape(-1).tolist(), exps.reshape(-1).tolist())):
        flat[i] = v << (ee - e) if v else 0
    return out, e


def _align(a: np.ndarray, ea: int, b: np.ndarray, eb: int) -> tuple[np.ndarray, np.ndarray, int]:
    """The same two dyadic arrays over one common exponent."""
    e = min(ea, eb)
    return a * (1 << (ea - e)), b * (1 << (eb - e)), e


def _pow2(e: int) -> Fraction:
    return Fraction(1 << e) if e >= 0 else Fraction(1, 1 << -e)


def _to_float(num: int, den: int, e: int) -> float:
    """Correctly rounded float of num / den * 2**e (huge ints allowed)."""
    if num == 0:
        return 0.0
    if e >= 0:
        num <<= e
    else:
        den <<= -e
    return num / den


def _ipge(a: np.ndarray, rhs: np.ndarray) -> tuple[list, list, list[int], list[int], int]:
    """Integer-preserving symmetric-pivoted Gauss-Jordan elimination of ``a z = rhs_r`` (all rows r).

    ``a`` (k, k) and ``rhs`` (m, k) are object arrays of Python ints.  Pivots on the largest remaining
    diagonal, stops at the first non-positive one.  Returns ``(rows, rhs_cols, piv, free, det)``: for a
    pivot p, ``det * z_p + sum_{j free} rows[p][j] z_j = rhs_cols[p]`` exactly.  Every division is exact
    (entries are minors of ``[a | rhs^T]``), so no rational normalisation is ever needed.
    """
    k = a.shape[0]
    rows = [np.array(a[i], dtype=object) for i in range(k)]
    cols = [np.array(rhs[:, i], dtype=object) for i in range(k)]
    free, piv, prev = list(range(k)), [], 1
    while free:
        p = max(free, key=lambda i: rows[i][i])
        d = rows[p][p]
        if d <= 0:
            break
        free.remove(p)
        piv.append(p)
        for i in range(k):
            if i != p:
                f = rows[i][p]
                rows[i] = (d * rows[i] - f * rows[p]) // prev
                cols[i] = (d * cols[i] - f * cols[p]) // prev
        prev = d
    return rows, cols, piv, free, prev


def min_norm_solve_exact(a: np.ndarray, rhs: np.ndarray) -> tuple[np.ndarray, int]:
    """Minimum-norm solution of ``a z = rhs_r`` for every row ``rhs_r``, in exact arithmetic.

    Parameters
    ----------
    a : object ndarray (k, k) of Python ints
        Symmetric, expected PSD (scale it by a power of two to make a float matrix integral, see
        ``_dyadic``).  Elimination pivots on the largest remaining diagonal and stops at the first
        non-positive one; the remaining Schur complement is treated as zero (it is exactly zero for a
        PSD ``a``).
    rhs : object ndarray (m, k) of Python ints

    Returns
    -------
    (z, rank) : object ndarray (m, k) of Fraction, int
        z = a^+ rhs when ``a`` is PSD and every rhs lies in range(a) (components off range(a) are
        dropped); ``rank`` is the exact rank.
    """
    k, m = a.shape[0], rhs.shape[0]
    z = np.empty((m, k), dtype=object)
    z[...] = Fraction(0)
    if k == 0:
        return z, 0
    rows, cols, piv, free, det = _ipge(a, rhs)
    for p in piv:
        z[:, p] = [Fraction(int(v), det) for v in cols[p]]
    if free and piv:
        # null basis of the (Schur-completed) matrix: n_j = e_j - sum_p (rows[p][j] / det) e_p, j free
        nb = np.empty((k, len(free)), dtype=object)
        nb[...] = Fraction(0)
        for c, j in enumerate(free):
            nb[j, c] = Fraction(1)
            for p in piv:
                nb[p, c] = Fraction(-int(rows[p][j]), det)
        alpha = _solve_pd_rational(nb.T @ nb, z @ nb)
        z = z - alpha @ nb.T
    return z, len(piv)


def _solve_pd_rational(a: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    """x with ``a x_r = rhs_r`` for a positive definite matrix of Fractions (Gauss-Jordan, exact)."""
    k = a.shape[0]
    mat = [np.array(a[i], dtype=object) for i in range(k)]
    rt = [np.array(rhs[:, i], dtype=object) for i in range(k)]
    for p in range(k):
        d = mat[p][p]
        mat[p] = mat[p] / d
        rt[p] = rt[p] / d
        for i in range(k):
            f = mat[i][p]
            if i != p and f != 0:
                mat[i] = mat[i] - f * mat[p]
                rt[i] = rt[i] - f * rt[p]
    return np.stack(rt, axis=1)


class RestrictedLstsq:
    """The restricted least-squares problems of one layer, solved exactly (see the module docstring).

    Parameters
    ----------
    w : ndarray (m, n)
        Dense weights W.
    a : ndarray (n, n)
        A = G, or G* with error correction; symmetric PSD.
    b : ndarray (m, n), optional
        B = C with error correction; None means B = W A, formed exactly.
    g : ndarray (n, n), optional
        The Gram G of c_i = w_i G w_i^T (default ``a``).

    All arrays are taken as float64; every result is float64.
    """

    def __init__(self, w: np.ndarray, a: np.ndarray, b: Optional[np.ndarray] = None,
                 g: Optional[np.ndarray] = None):
        self.w = np.ascontiguousarray(w, dtype=np.float64)
        self.a = np.ascontiguousarray(a, dtype=np.float64)
        self.m, self.n = self.w.shape
        self._b_given = None if b is None else np.ascontiguousarray(b, dtype=np.float64)
        self._g = self.a if g is None else np.ascontiguousarray(g, dtype=np.float64)
        w_ld, g_ld = self.w.astype(_LD), self._g.astype(_LD)
        self.a_ld = self.a.astype(_LD)
        self.b_ld = w_ld @ self.a_ld if b is None else self._b_given.astype(_LD)
        self.c_ld = np.einsum("ij,jk,ik->i", w_ld, g_ld, w_ld)
        self._exact_cache: Optional[tuple] = None
        self.exact_solves = 0

    @classmethod
    def from_layer(cls, layer) -> "RestrictedLstsq":
        """The problems of a :class:`~prunekit.formulations.layer.LayerData` (undamped, float64)."""
        w = layer.weight.detach().double().cpu().numpy()
        g = layer.gram.detach().double().cpu().numpy()
        if layer.has_error_correction:
            return cls(w, layer.gram_star.detach().double().cpu().numpy(),
                       layer.cross.detach().double().cpu().numpy(), g)
        return cls(w, g)

    # ------------------------------------------------------------------ exact data
    def _exact(self) -> tuple[np.ndarray, int, np.ndarray, int, np.ndarray, int]:
        """(A, e_A, B, e_B, c, e_c) as exact dyadic integers (computed once): A = ints * 2**e_A, ..."""
        if self._exact_cache is None:
            a, ea = _dyadic(self.a)
            w, ew = _dyadic(self.w)
            if self._b_given is None:
                b, eb = w @ a, ew + ea
            else:
                b, eb = _dyadic(self._b_given)
            g, eg = (a, ea) if self._g is self.a else _dyadic(self._g)
            c = np.einsum("ij,ij->i", w @ g, w) if self.m else np.zeros(0, dtype=object)
            self._exact_cache = (a, ea, b, eb, c, 2 * ew + eg)
        return self._exact_cache

    @property
    def dense_energy(self) -> float:
        """1/2 sum_i c_i = 1/2 ||W X||^2 (float64)."""
        return float(0.5 * self.c_ld.sum())

    # ------------------------------------------------------------------ solves
    def restore(self, kept: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Exact restoration on the shared kept columns ``kept`` (int indices).

        Returns ``(W_hat (m, n), errors (m,))``: W_hat is the minimum-norm minimiser rounded to float64
        (zero off ``kept``), errors_i = f_i(W_hat_i) >= 0 (exact path: the exact optimum value).
        """
        kept = np.asarray(kept, dtype=np.int64)
        w_hat = np.zeros_like(self.w)
        if kept.size == 0:
            return w_hat, np.maximum(0.5 * self.c_ld, 0).astype(np.float64)
        z = self._fast(kept)
        if z is None:
            z, errs = self._exact_restore(kept)
            w_hat[:, kept] = z
            return w_hat, errs
        w_hat[:, kept] = z
        zl = z.astype(_LD)
        a_ss = self.a_ld[kept][:, kept]
        errs = 0.5 * (self.c_ld - 2 * np.sum(zl * self.b_ld[:, kept], axis=1) + np.sum((zl @ a_ss) * zl, axis=1))
        return w_hat, np.maximum(errs, 0).astype(np.float64)

    def _fast(self, kept: np.ndarray) -> Optional[np.ndarray]:
        """Equilibrated float64 eigen-solve with long-double refinement, or None when not certified."""
        a_ss = self.a[kept][:, kept]
        d = a_ss.diagonal().copy()
        if np.any(d < 0):
            return None
        zero = d == 0
        if zero.any():
            if np.any(a_ss[zero] != 0) or np.any(self.b_ld[:, kept[zero]] != 0):
                return None
        live = np.nonzero(~zero)[0]
        z = np.zeros((self.m, kept.size))
        if live.size == 0:
            return z
        s = np.ldexp(1.0, -(np.frexp(d[live])[1] // 2))         # exact powers of two: s^2 d in [1/2, 2)
        a_eq = (a_ss if live.size == kept.size else a_ss[live][:, live]) * s[:, None] * s[None, :]
        lam, vec = np.linalg.eigh(a_eq)
        if not lam[0] > lam[-1] / FAST_COND:
            return None
        rhs = self.b_ld[:, kept[live]] * s.astype(_LD)
        a_eq_ld = a_eq.astype(_LD)

        def apply_inv(r):
            return ((np.asarray(r, dtype=np.float64) @ vec) / lam) @ vec.T

        y = apply_inv(rhs)
        for _ in range(_REFINE_STEPS):
            y = y + apply_inv(rhs - y.astype(_LD) @ a_eq_ld)
        z[:, live] = y * s
        return z

    def _exact_restore(self, kept: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self.exact_solves += 1
        a, ea, b, eb, c, ec = self._exact()
        bk = b[:, kept]
        z, _ = min_norm_solve_exact(a[np.ix_(kept, kept)], bk)            # A_SS z = B_S in units 2**(eb - ea)
        bz = np.einsum("ij,ij->i", bk, z)                                  # units 2**(2 eb - ea)
        errs = np.array([max(float(_pow2(ec) * ci - _pow2(2 * eb - ea) * v), 0.0) / 2 for ci, v in zip(c, bz)])
        zf = np.array([_to_float(v.numerator, v.denominator, eb - ea) for v in z.reshape(-1)]).reshape(z.shape)
        return zf, errs

    # ------------------------------------------------------------------ certificate
    def optimality_gap(self, w_hat: np.ndarray, keep: np.ndarray) -> dict[str, float]:
        """Exact certificate of ``w_hat`` (m, n) for the keep-mask ``keep`` (m, n) bool.

        Returns a dict with ``gap`` (sum_i of r_i A_SS^+ r_i^T / 2, the exact distance in objective of
        ``w_hat`` from the restored optimum of its own mask), ``objective`` (sum_i f_i(w_hat_i), exact),
        ``stationarity`` (max |r| / max |B|) and ``pruned_max_abs`` (max |w_hat| off ``keep``); all
        computed in rational arithmetic and rounded to float at the end.
        """
        keep = np.asarray(keep, dtype=bool)
        a, ea, b, eb, c, ec = self._exact()
        wh, ew = _dyadic(w_hat)
        wa = wh @ a                                                       # units 2**(ew + ea)
        grad_b, grad_wa, eg = _align(b, eb, wa, ew + ea)
        grad = grad_b - grad_wa                                           # B - W_hat A, exact, units 2**eg
        obj = sum((_pow2(ec) * ci - 2 * _pow2(eb + ew) * bw + _pow2(2 * ew + ea) * q) / 2
                  for ci, bw, q in zip(c, np.einsum("ij,ij->i", b, wh), np.einsum("ij,ij->i", wa, wh)))
        gap = Fraction(0)
        r_max = 0
        for kept, rows in _row_groups(keep).items():
            if not kept:
                continue
            idx = np.array(kept, dtype=np.int64)
            r = grad[np.ix_(rows, idx)]
            r_max = max(r_max, max(abs(int(v)) for v in r.reshape(-1)))
            y, _ = min_norm_solve_exact(a[np.ix_(idx, idx)], r)          # units 2**(eg - ea)
            gap += np.einsum("ij,ij->", r, y) * _pow2(2 * eg - ea) / 2
        b_max = max((abs(int(v)) for v in b.reshape(-1)), default=0)
        stat = _to_float(r_max, b_max, eg - eb) if b_max else _to_float(r_max, 1, eg)
        pruned = float(np.abs(w_hat[~keep]).max()) if (~keep).any() else 0.0
        return {"gap": float(gap), "objective": max(float(obj), 0.0), "stationarity": stat,
                "pruned_max_abs": pruned}

    def certified(self, w_hat: np.ndarray, keep: np.ndarray, rtol: float = 1e-9,
                  atol: float = 1e-15) -> tuple[bool, dict[str, float]]:
        """Whether ``w_hat`` is the restored optimum of ``keep`` within ``rtol * objective + atol * dense
        energy`` (and exactly zero off ``keep``), with the certificate of :meth:`optimality_gap`."""
        cert = self.optimality_gap(w_hat, keep)
        ok = cert["pruned_max_abs"] == 0.0 and cert["gap"] <= rtol * cert["objective"] + atol * self.dense_energy
        return bool(ok), cert


def _row_groups(keep: np.ndarray) -> dict[tuple[int, ...], np.ndarray]:
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, row in enumerate(keep):
        groups.setdefault(tuple(np.nonzero(row)[0].tolist()), []).append(i)
    return {k: np.array(v, dtype=np.int64) for k, v in groups.items()}


__all__ = ["FAST_COND", "RestrictedLstsq", "min_norm_solve_exact"]
