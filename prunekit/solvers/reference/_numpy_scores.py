"""Independent float64 numpy twins of the column scores and the group selection (reference solvers only)."""

from __future__ import annotations

import numpy as np


def layer_arrays(layer):
    """(W (m, n), G (n, n), mu (n,) or None, N) as float64 numpy arrays."""
    w = layer.weight.detach().double().cpu().numpy()
    g = layer.gram.detach().double().cpu().numpy()
    mu = None if layer.input_mean is None else layer.input_mean.detach().double().cpu().numpy()
    return w, g, mu, int(layer.num_tokens)


def column_score(name: str, w: np.ndarray, g: np.ndarray, mu, n_tok: int) -> np.ndarray:
    """The named column score (higher = kept), computed from scratch."""
    norms = np.sqrt(np.clip(np.diag(g), 0.0, None))
    if name in ("fasp", "wanda_l1"):
        return np.abs(w).sum(axis=0) * norms
    if name == "wifn":
        return np.abs(w).mean(axis=0) * norms
    if name == "frobenius":
        return (w ** 2).sum(axis=0)
    var = np.clip(np.diag(g) / n_tok - mu ** 2, 0.0, None)
    if name == "ifv":
        return var
    if name == "wifv":
        return var * (w ** 2).sum(axis=0)
    raise ValueError(f"unknown score {name!r}")


def keep_columns(spec, group_scores: np.ndarray, n: int) -> np.ndarray:
    """Boolean (n,) kept columns: drop the lowest-scoring groups (ties: the higher index is dropped)."""
    index = spec.group_index(n)
    n_keep = len(index) - spec.groups_pruned(n)
    order = np.argsort(-group_scores, kind="stable")
    keep = np.ones(n, dtype=bool)
    for gi in order[n_keep:]:
        keep[index[gi]] = False
    return keep


def damped_gram(layer, g: np.ndarray) -> np.ndarray:
    """G with dead inputs set to 1 plus damping * mean(diag G) * I (mean of the raw diagonal)."""
    mean_diag = float(np.mean(np.diag(g))) if g.size else 0.0
    lam = layer.damping * (mean_diag if mean_diag > 0 else 1.0)
    gd = g.copy()
    d = np.diag(gd).copy()
    d[d == 0] = 1.0
    np.fill_diagonal(gd, d + lam)
    return gd
