"""Layer data: the weight of one linear layer and the calibration statistics of its inputs.

Notation (methods.md §1)::

    W  in R^{m x n}   weight, PyTorch layout (out_features x in_features)
    X  in R^{n x N}   calibration inputs of the layer, one token per column
    G  = X X^T        n x n Gram matrix (a *sum* over the N tokens, not an average)
    X*                inputs through the already-pruned operators of the same block (FISTAPruner §5.4)
    G* = X* X*^T      n x n;   C = W X X*^T   m x n

The reconstruction error of a candidate weight ``W_hat`` is

.. math::

    F(\\hat W) = \\tfrac12 \\lVert \\hat W X - W X \\rVert_F^2
              = \\tfrac12 \\operatorname{tr}\\big((\\hat W - W) G (\\hat W - W)^T\\big),

and, with error-correction terms (``gram_star`` and ``cross`` given),

.. math::

    F(\\hat W) = \\tfrac12 \\lVert \\hat W X^* - W X \\rVert_F^2
              = \\tfrac12 \\big[\\operatorname{tr}(\\hat W G^* \\hat W^T) - 2 \\operatorname{tr}(\\hat W C^T)
                + \\operatorname{tr}(W G W^T)\\big].

Rows separate (methods.md §1, fact 1): every row is an independent problem sharing the same G.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

import torch

from ..errors import GramError, NonFiniteError, ShapeError

_PSD_CHECK_MAX_N = 4096


def _require_finite(name: str, tensor: torch.Tensor) -> None:
    if not torch.isfinite(tensor).all():
        bad = int((~torch.isfinite(tensor)).sum())
        raise NonFiniteError(
            f"{name} contains {bad} NaN/Inf value(s); prunekit cannot prune from non-finite numbers. "
            f"Fix: check the checkpoint for corrupted weights or the calibration run for overflow "
            f"(accumulate statistics in float32/float64)."
        )


def _require_float(name: str, tensor: torch.Tensor) -> None:
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}.")
    if not tensor.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {tensor.dtype}.")


@dataclass(frozen=True, eq=False)
class LayerData:
    """Weight and calibration statistics of one linear layer (immutable).

    Parameters
    ----------
    weight : Tensor, shape (m, n)
        Dense weight W, PyTorch layout.
    gram : Tensor, shape (n, n) or (n,)
        G = X X^T summed over the ``num_tokens`` calibration tokens; symmetric PSD. Accumulate in
        float32 or float64 (see :class:`prunekit.formulations.statistics.GramAccumulator`).
        A vector of shape (n,) states *diagonal statistics*: only diag G = (||X_j||^2)_j is known (what Wanda,
        FLAP and the column scores read).  The layer then stands for the diagonal model G := diag(g): objectives
        and energies are computed under it (``is_diagonal`` says so), and formulations that declare the full
        Gram among their ``statistics`` refuse such a layer.
    num_tokens : int
        N, the number of calibration tokens summed into ``gram``.
    bias : Tensor, shape (m,), optional
        The layer's bias (kept; FLAP adds its compensation to it).
    input_mean : Tensor, shape (n,), optional
        Token mean of the inputs mu = X 1 / N (FLAP's bias compensation and fluctuation metric).
    gram_star : Tensor, shape (n, n), optional
        G* = X* X*^T for intra-layer error correction (FISTAPruner). Requires ``cross``.
    cross : Tensor, shape (m, n), optional
        C = W X X*^T, the cross term of the error-corrected objective. Requires ``gram_star``.
    damping : float
        Relative damping: solvers add ``damping * mean(diag G) * I`` to G before factorizing
        (SparseGPT's ``percdamp``, default 0.01), escalating it if a Cholesky fails.
    check_psd : bool
        Verify at construction that G (and G*) is positive semidefinite, with one Cholesky of
        ``G + 1e-6 mean(diag G) I`` in float64. Skipped automatically for n > 4096, where solvers
        detect an indefinite G through their damped Cholesky instead.

    Raises
    ------
    ShapeError, NonFiniteError, GramError
        On mismatched shapes, NaN/Inf values, or a Gram matrix that is not symmetric PSD.
    """

    weight: torch.Tensor
    gram: torch.Tensor
    num_tokens: int
    bias: Optional[torch.Tensor] = None
    input_mean: Optional[torch.Tensor] = None
    gram_star: Optional[torch.Tensor] = None
    cross: Optional[torch.Tensor] = None
    damping: float = 0.01
    check_psd: bool = field(default=True, repr=False)

    def __post_init__(self) -> None:
        _require_float("weight", self.weight)
        _require_float("gram", self.gram)
        if self.weight.dim() != 2:
            raise ShapeError(
                f"weight must be 2-D (out_features x in_features), got shape {tuple(self.weight.shape)}. "
                f"Fix: pass the nn.Linear weight (transpose GPT-2 Conv1D weights first)."
            )
        m, n = self.weight.shape
        if tuple(self.gram.shape) not in ((n, n), (n,)):
            raise ShapeError(
                f"gram must be {n} x {n} (or its diagonal, ({n},)) to match weight of shape {m} x {n}, got {tuple(self.gram.shape)}. "
                f"Fix: accumulate G = X X^T over the layer's *inputs* (in_features = {n})."
            )
        if isinstance(self.num_tokens, bool) or not isinstance(self.num_tokens, int) or self.num_tokens <= 0:
            raise ShapeError(
                f"num_tokens must be a positive int, got {self.num_tokens!r}. "
                f"Fix: pass N, the number of calibration tokens summed into gram."
            )
        if not (isinstance(self.damping, (int, float)) and math.isfinite(self.damping) and self.damping >= 0):
            raise GramError(f"damping must be a finite number >= 0, got {self.damping!r}. Fix: use e.g. 0.01.")
        _require_finite("weight", self.weight)
        _require_finite("gram", self.gram)
        for name, vec, size in (("bias", self.bias, m), ("input_mean", self.input_mean, n)):
            if vec is not None:
                _require_float(name, vec)
                if tuple(vec.shape) != (size,):
                    raise ShapeError(f"{name} must have shape ({size},), got {tuple(vec.shape)}.")
                _require_finite(name, vec)
        if (self.gram_star is None) != (self.cross is None):
            raise ShapeError(
                "gram_star and cross come together (G* = X* X*^T and C = W X X*^T). "
                "Fix: pass both, or neither for the plain objective."
            )
        if self.gram_star is not None:
            if self.is_diagonal:
                raise ShapeError("error-correction terms need the full Gram G, not its diagonal. "
                                 "Fix: accumulate the full G = X X^T (GramAccumulator(diagonal=False)).")
            _require_float("gram_star", self.gram_star)
            _require_float("cross", self.cross)
            if tuple(self.gram_star.shape) != (n, n):
                raise ShapeError(f"gram_star must be {n} x {n}, got {tuple(self.gram_star.shape)}.")
            if tuple(self.cross.shape) != (m, n):
                raise ShapeError(f"cross must be {m} x {n} (C = W X X*^T), got {tuple(self.cross.shape)}.")
            _require_finite("gram_star", self.gram_star)
            _require_finite("cross", self.cross)
        self._check_gram("gram", self.gram)
        if self.gram_star is not None:
            self._check_gram("gram_star", self.gram_star)

    def _check_gram(self, name: str, gram: torch.Tensor) -> None:
        if gram.dim() == 1:  # diagonal statistics: PSD iff every entry is >= 0
            if gram.numel() and float(gram.min()) < 0:
                raise GramError(f"{name} (the diagonal of G) has a negative entry ({float(gram.min()):.3g}), so it is "
                                f"not a sum of squares. Fix: pass diag(X X^T) of real inputs.")
            return
        g = gram.detach().to(torch.float64)
        scale = float(g.diagonal().abs().mean()) if g.numel() else 0.0
        scale = max(scale, 1e-300)
        asym = float((g - g.T).abs().max()) if g.numel() else 0.0
        if asym > 1e-5 * scale:
            raise GramError(
                f"{name} is not symmetric (max |G - G^T| = {asym:.3g}, mean diag {scale:.3g}). "
                f"Fix: accumulate G = X X^T (e.g. with GramAccumulator), or symmetrize with (G + G^T)/2."
            )
        if float(g.diagonal().min()) < -1e-8 * scale:
            raise GramError(
                f"{name} has a negative diagonal entry ({float(g.diagonal().min()):.3g}), so it is not PSD. "
                f"Fix: G must be X X^T of real inputs."
            )
        if self.check_psd and g.shape[0] <= _PSD_CHECK_MAX_N and g.shape[0] > 0:
            shifted = g + (1e-6 * scale) * torch.eye(g.shape[0], dtype=g.dtype, device=g.device)
            _, info = torch.linalg.cholesky_ex(shifted)
            if int(info) != 0:
                min_eig = float(torch.linalg.eigvalsh(g).min())
                raise GramError(
                    f"{name} is not positive semidefinite (smallest eigenvalue {min_eig:.3g}, "
                    f"mean diag {scale:.3g}). Fix: G must be X X^T of real calibration inputs; "
                    f"accumulate it in float32/float64, not half precision."
                )

    # ------------------------------------------------------------------ shapes
    @property
    def shape(self) -> tuple[int, int]:
        """(m, n) = (out_features, in_features)."""
        return (int(self.weight.shape[0]), int(self.weight.shape[1]))

    @property
    def out_features(self) -> int:
        return int(self.weight.shape[0])

    @property
    def in_features(self) -> int:
        return int(self.weight.shape[1])

    @property
    def is_diagonal(self) -> bool:
        """True when only diag G is known (``gram`` of shape (n,)); G is then the diagonal matrix diag(g)."""
        return self.gram.dim() == 1

    def gram_diagonal(self) -> torch.Tensor:
        """diag G = (||X_j||^2)_j, shape (n,), in the statistics' dtype and device."""
        return self.gram.detach() if self.is_diagonal else self.gram.detach().diagonal()

    def gram_matrix(self) -> torch.Tensor:
        """G as an (n, n) matrix (diag(g) for diagonal statistics)."""
        return torch.diag(self.gram.detach()) if self.is_diagonal else self.gram

    @property
    def has_error_correction(self) -> bool:
        """True when the objective uses X* (``gram_star`` and ``cross``)."""
        return self.gram_star is not None

    # ------------------------------------------------------------------ derived statistics
    def damping_value(self, gram: Optional[torch.Tensor] = None) -> float:
        """Absolute damping lambda = damping * mean(diag G) (1.0 * damping when diag G is all zero)."""
        g = self.gram if gram is None else gram
        diag = g if g.dim() == 1 else g.diagonal()
        mean_diag = float(diag.double().mean()) if g.numel() else 0.0
        return self.damping * (mean_diag if mean_diag > 0 else 1.0)

    def damped_gram(self, dtype: torch.dtype = torch.float64, device=None, extra: float = 0.0) -> torch.Tensor:
        """Return ``G + (lambda + extra) I`` in ``dtype`` on ``device`` (a new tensor).

        Dead inputs (G_jj = 0) get G_jj := 1 first, as in SparseGPT, so the damped matrix is PD.
        """
        g = self.gram_matrix().detach().to(device=device or self.gram.device, dtype=dtype).clone()
        dead = g.diagonal() == 0
        if dead.any():
            g.diagonal()[dead] = 1.0
        g.diagonal().add_(self.damping_value() + extra)
        return g

    def input_variance(self) -> torch.Tensor:
        """Per-channel token variance Var_t(x_j) = G_jj / N - mu_j^2 (needs ``input_mean``), float64."""
        if self.input_mean is None:
            raise ShapeError(
                "input_variance needs input_mean. Fix: build LayerData with input_mean "
                "(GramAccumulator tracks it) for FLAP."
            )
        mu = self.input_mean.detach().double()
        var = self.gram_diagonal().double() / self.num_tokens - mu * mu
        return var.clamp_min(0.0)

    def input_norms(self) -> torch.Tensor:
        """Per-channel input norms ||X_j||_2 = sqrt(G_jj), float64 (the Wanda/FASP feature norm)."""
        return self.gram_diagonal().double().clamp_min(0.0).sqrt()

    # ------------------------------------------------------------------ objective
    def reconstruction_error(self, weight_hat: torch.Tensor, bias_hat: Optional[torch.Tensor] = None) -> float:
        """F(W_hat) = 1/2 ||W_hat X(*) - W X||_F^2 computed from the statistics in float64.

        With ``bias_hat`` (a new bias, shape (m,)) the outputs are compared including the bias change
        db = bias_hat - bias, using the input mean: F = 1/2 sum_t ||dW x_t + db||^2
        = 1/2 [tr(dW G dW^T) + 2 N db^T dW mu + N ||db||^2].
        """
        if tuple(weight_hat.shape) != self.shape:
            raise ShapeError(f"weight_hat must have shape {self.shape}, got {tuple(weight_hat.shape)}.")
        w = self.weight.detach().double()
        wh = weight_hat.detach().to(device=w.device, dtype=torch.float64)
        g = self.gram.detach().to(device=w.device, dtype=torch.float64)
        if self.is_diagonal:
            d = wh - w
            value = 0.5 * torch.sum(d * d * g.unsqueeze(0))
        elif self.has_error_correction:
            gs = self.gram_star.detach().to(device=w.device, dtype=torch.float64)
            c = self.cross.detach().to(device=w.device, dtype=torch.float64)
            value = 0.5 * (
                torch.sum((wh @ gs) * wh) - 2.0 * torch.sum(wh * c) + torch.sum((w @ g) * w)
            )
        else:
            d = wh - w
            value = 0.5 * torch.sum(self.error_gram(weight_hat) * d)
        if bias_hat is not None:
            if self.has_error_correction:
                raise ShapeError("bias changes are not supported with error-correction terms.")
            if self.input_mean is None:
                raise ShapeError("scoring a bias change needs input_mean. Fix: build LayerData with input_mean.")
            b0 = self.bias.detach().double() if self.bias is not None else torch.zeros(self.out_features, dtype=torch.float64)
            db = bias_hat.detach().double().to(w.device) - b0.to(w.device)
            mu = self.input_mean.detach().double().to(w.device)
            d = wh - w
            n_tok = float(self.num_tokens)
            value = value + n_tok * torch.dot(db, d @ mu) + 0.5 * n_tok * torch.dot(db, db)
        return float(value.clamp_min(0.0))

    def dense_energy(self) -> float:
        """1/2 ||W X||_F^2: the error of pruning everything; the natural scale for relative errors."""
        return self._dense_products()[0]

    # ------------------------------------------------------------------ shared float64 products
    def _memo(self) -> dict:
        """Per-instance cache of float64 products (not a dataclass field: ``replace``, ``describe`` ignore it)."""
        memo = self.__dict__.get("_float64_products")
        if memo is None:
            memo = {}
            object.__setattr__(self, "_float64_products", memo)
        return memo

    def damping_delta(self, device=None) -> torch.Tensor:
        """(n,) float64 ``delta_j = lambda + [G_jj = 0]``: ``damped_gram() = G + diag(delta)`` (dead inputs get
        G_jj := 1 before the damping, as in SparseGPT)."""
        g = self.gram.detach()
        diag = (g if g.dim() == 1 else g.diagonal()).double().to(device or g.device)
        return self.damping_value() + (diag == 0).double()

    def _dense_products(self) -> tuple[float, float]:
        """``(1/2 tr(W G W^T), max |W (G + diag delta)|)`` from one float64 product W G, computed once per layer
        (W and G never change: the layer is immutable): the dense energy and the scale of
        :func:`~prunekit.formulations.base.restoration_stationarity`."""
        memo = self._memo()
        if "dense" not in memo:
            w = self.weight.detach().double()
            g = self.gram.detach().double().to(w.device)
            wg = w * g.unsqueeze(0) if self.is_diagonal else w @ g
            energy = float(0.5 * torch.sum(wg * w))
            damped = wg + w * self.damping_delta(w.device).unsqueeze(0)
            memo["dense"] = (energy, float(damped.abs().max()) if damped.numel() else 0.0)
        return memo["dense"]

    def damped_weight_gram_max(self) -> float:
        """``max |W (G + diag delta)|`` (the damped Gram of :meth:`damped_gram`): the scale of
        :func:`~prunekit.formulations.base.restoration_stationarity`, computed once with the dense energy."""
        return self._dense_products()[1]

    def error_gram(self, weight_hat: torch.Tensor) -> torch.Tensor:
        """``(W_hat - W) G`` in float64 on the weight's device, (m, n) (``G := diag g`` for diagonal statistics).

        The last product is kept with a reference to ``weight_hat`` itself and its version counter (a reference,
        not its ``id``: a freed tensor's id and memory are reused by the next one), so the certificates of one
        solution (its objective and the restoration stationarity) share one O(m n^2) product and an in-place
        change is seen; :meth:`forget_products` drops both (``Formulation.residuals`` does, when it is done).
        """
        memo = self._memo()
        if memo.get("error_of") is not weight_hat or memo.get("error_version") != weight_hat._version:
            w = self.weight.detach().double()
            d = weight_hat.detach().to(device=w.device, dtype=torch.float64) - w
            g = self.gram.detach().double().to(w.device)
            memo["error"] = d * g.unsqueeze(0) if self.is_diagonal else d @ g
            memo["error_of"], memo["error_version"] = weight_hat, weight_hat._version
        return memo["error"]

    def forget_products(self) -> None:
        """Drop the kept ``(W_hat - W) G`` (the dense products are small and stay)."""
        memo = self._memo()
        for key in ("error", "error_of", "error_version"):
            memo.pop(key, None)

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_inputs(
        cls,
        weight: torch.Tensor,
        inputs: torch.Tensor,
        *,
        inputs_star: Optional[torch.Tensor] = None,
        bias: Optional[torch.Tensor] = None,
        damping: float = 0.01,
        dtype: torch.dtype = torch.float64,
        with_mean: bool = True,
    ) -> "LayerData":
        """Build layer data from calibration inputs of shape (..., n) (tokens in the leading dims).

        ``inputs_star`` (same shape) are the error-corrected inputs X*; when given, ``gram_star`` and
        ``cross`` are filled in and the objective becomes 1/2 ||W* X* - W X||^2.
        """
        from .statistics import GramAccumulator

        acc = GramAccumulator(int(weight.shape[1]), dtype=dtype, track_star=inputs_star is not None)
        acc.update(inputs, inputs_star)
        return acc.layer_data(weight, bias=bias, damping=damping, with_mean=with_mean)
