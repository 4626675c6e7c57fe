"""Pure importance scores (higher = more important = kept).  No weight updates, no state.

Shapes: W is (m, n); per-weight scores are (m, n); per-column scores are (n,).  All scores are computed in
float64 from the layer statistics, so ties and tiny differences are judged consistently across backends.

* magnitude         S_ij = |W_ij|                                                   (methods.md §8.1)
* wanda             S_ij = |W_ij| ||X_j||_2,  ||X_j||_2 = sqrt(G_jj)                (§8.2, Sun et al. 2023)
* obs_saliency      S_ij = W_ij^2 / [H^{-1}]_jj with H = G + lambda I              (§6.2 Solution S, OBS)
* fasp_column       S_j  = ||W_{:,j}||_1 ||X_j||_2  (Wanda summed over the column)   (§4.2, FASP)
* flap_wifv         S_j  = Var_t(x_j) ||W_{:,j}||_2^2                               (§8.4, FLAP)
* flap_ifv          S_j  = Var_t(x_j)
* flap_wifn         S_j  = mean_i |W_ij| ||X_j||_2
* frobenius_column  S_j  = ||W_{:,j}||_2^2                                           (§7.3 projection score)
"""

from __future__ import annotations

import torch

from .layer import LayerData


def _w(layer: LayerData) -> torch.Tensor:
    return layer.weight.detach().double()


def magnitude(layer: LayerData) -> torch.Tensor:
    """|W_ij|, shape (m, n)."""
    return _w(layer).abs()


def wanda(layer: LayerData) -> torch.Tensor:
    """|W_ij| * ||X_j||_2, shape (m, n)."""
    return _w(layer).abs() * layer.input_norms().to(layer.weight.device).unsqueeze(0)


def obs_saliency(layer: LayerData, hinv_diag: torch.Tensor) -> torch.Tensor:
    """W_ij^2 / [H^{-1}]_jj for a given diagonal of the (damped) inverse Hessian, shape (m, n)."""
    return _w(layer) ** 2 / hinv_diag.double().to(layer.weight.device).unsqueeze(0)


def fasp_column(layer: LayerData) -> torch.Tensor:
    """||W_{:,j}||_1 * ||X_j||_2, shape (n,)."""
    return _w(layer).abs().sum(dim=0) * layer.input_norms().to(layer.weight.device)


def flap_wifv(layer: LayerData) -> torch.Tensor:
    """Var_t(x_j) * ||W_{:,j}||_2^2, shape (n,) (needs ``input_mean``)."""
    return layer.input_variance().to(layer.weight.device) * (_w(layer) ** 2).sum(dim=0)


def flap_ifv(layer: LayerData) -> torch.Tensor:
    """Var_t(x_j), shape (n,) (needs ``input_mean``)."""
    return layer.input_variance().to(layer.weight.device)


def flap_wifn(layer: LayerData) -> torch.Tensor:
    """mean_i |W_ij| * ||X_j||_2, shape (n,)."""
    return _w(layer).abs().mean(dim=0) * layer.input_norms().to(layer.weight.device)


def frobenius_column(layer: LayerData) -> torch.Tensor:
    """||W_{:,j}||_2^2, shape (n,)."""
    return (_w(layer) ** 2).sum(dim=0)


COLUMN_SCORES = {
    "fasp": fasp_column,
    "wanda_l1": fasp_column,
    "wifv": flap_wifv,
    "ifv": flap_ifv,
    "wifn": flap_wifn,
    "frobenius": frobenius_column,
}
