"""Block-level performance recovery of a channel-pruned GLU MLP (SPAP's optional ``recover_up``, methods.md §3.3).

.. warning::
   [derived] The SPAP abstract mentions weight updates that recover performance but gives no detail; this
   alternation (closed-form W_down, least-squares or gradient W_up) is a reconstruction, kept optional.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch

from ..errors import FormulationError, ShapeError
from .base import Formulation, Guarantee
from .form import ProblemForm
from .layer import LayerData

METHODS = ("lstsq", "gradient")


def silu(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(x)


@dataclass(frozen=True, eq=False)
class GLURecovery(Formulation):
    r"""Recover a GLU MLP after removing intermediate neurons, on the block's calibration inputs.

    Shapes: inputs ``X0`` (N x d) (tokens as rows), ``W_gate, W_up`` (f x d), ``W_down`` (d x f) =
    ``layer.weight``, kept neurons ``S`` (``kept``, k indices).  With ``A = SiLU(X0 W_gate[S]^T)`` (N x k, fixed):

    .. math::

        \min_{U \in R^{k x d},\, V \in R^{d x k}}\; \tfrac12 \big\lVert (A \odot X_0 U^T) V^T - Y \big\rVert_F^2,
        \qquad Y = \big(\mathrm{SiLU}(X_0 W_{gate}^T) \odot X_0 W_{up}^T\big) W_{down}^T ,

    started from ``U = W_up[S]``, ``V = W_down[:, S]``.  The output is linear in V for fixed U (the
    closed-form restricted least squares on S) and linear in U for fixed V, so the solver alternates exact
    (``method="lstsq"``: per kept neuron, a d x d normal-equation solve, block Gauss-Seidel) or exact-line-search
    gradient (``"gradient"``) updates of U with the W_down step; ``iterations`` alternations.  Every accepted
    step is a block minimization or a descent step, so the block objective never increases.

    ``layer`` is the LayerData of W_down with G = Z^T Z of the dense activations Z (build it with
    :meth:`from_block`).  The solution's ``weights`` are the new W_down (d x f, zero off S);
    ``extras["w_up"]`` is the new W_up (f x d, rows off S zero: those neurons are deleted).
    Guarantee: HEURISTIC (a non-convex bilinear least squares; monotone descent only).
    """

    inputs: torch.Tensor = None
    w_gate: torch.Tensor = None
    w_up: torch.Tensor = None
    kept: torch.Tensor = None
    iterations: int = 5
    method: Literal["lstsq", "gradient"] = "lstsq"

    guarantee: ClassVar[Guarantee] = Guarantee.HEURISTIC
    paper: ClassVar[str] = "SPAP (Hu & Yuan, arXiv 2505.03373): performance recovery, rules derived (methods.md §3.3)"

    @classmethod
    def from_block(cls, inputs, w_gate, w_up, w_down, kept, *, iterations: int = 5, method: str = "lstsq",
                   damping: float = 0.01) -> "GLURecovery":
        """Build the formulation from the block's inputs X0 (N x d) and its three weights."""
        d, f = tuple(w_down.shape) if w_down.dim() == 2 else (-1, -1)
        for name, t, shape in (("w_down", w_down, (d, f)), ("w_gate", w_gate, (f, d)), ("w_up", w_up, (f, d))):
            if t.dim() != 2 or tuple(t.shape) != shape or d <= 0:
                raise ShapeError(f"{name} has shape {tuple(t.shape)}; expected W_down (d x f) = {tuple(w_down.shape)}, "
                                 f"W_gate and W_up (f x d).")
        if inputs.dim() != 2 or inputs.shape[1] != d:
            raise ShapeError(f"inputs must be N x {d} (tokens x hidden), got {tuple(inputs.shape)}.")
        with torch.no_grad():
            z = silu(inputs.double() @ w_gate.double().T) * (inputs.double() @ w_up.double().T)
        layer = LayerData.from_inputs(w_down, z, damping=damping)
        return cls(layer, inputs=inputs, w_gate=w_gate, w_up=w_up, kept=torch.as_tensor(kept).long().flatten(),
                   iterations=iterations, method=method)

    def validate(self) -> None:
        super().validate()
        d, f = self.layer.shape
        for name in ("inputs", "w_gate", "w_up", "kept"):
            if not isinstance(getattr(self, name), torch.Tensor):
                raise FormulationError(f"GLURecovery needs the tensor {name}. Fix: use GLURecovery.from_block(...).")
        if self.inputs.dim() != 2 or self.inputs.shape[1] != d:
            raise ShapeError(f"inputs must be N x {d} (tokens x hidden), got {tuple(self.inputs.shape)}.")
        for name in ("w_gate", "w_up"):
            if tuple(getattr(self, name).shape) != (f, d):
                raise ShapeError(f"{name} must be {f} x {d} (intermediate x hidden), got {tuple(getattr(self, name).shape)}.")
        for name in ("inputs", "w_gate", "w_up"):
            if not torch.isfinite(getattr(self, name)).all():
                raise FormulationError(f"{name} contains NaN/Inf.")
        k = self.kept
        if k.dim() != 1 or k.numel() == 0 or k.dtype not in (torch.int32, torch.int64):
            raise FormulationError("kept must be a non-empty 1-D integer tensor of neuron indices.")
        if int(k.min()) < 0 or int(k.max()) >= f or k.unique().numel() != k.numel():
            raise FormulationError(f"kept must hold distinct indices in [0, {f}), got {k.tolist()}.")
        if isinstance(self.iterations, bool) or not isinstance(self.iterations, int) or self.iterations < 1:
            raise FormulationError(f"iterations must be an int >= 1, got {self.iterations!r}.")
        if self.method not in METHODS:
            raise FormulationError(f"method must be one of {METHODS}, got {self.method!r}.")

    def _form(self) -> ProblemForm:
        return self._base_form(is_mixed_integer=False, is_convex=False, row_separable=False)

    def keep_vector(self) -> torch.Tensor:
        keep = torch.zeros(self.layer.in_features, dtype=torch.bool)
        keep[self.kept.cpu()] = True
        return keep

    def dense_output(self, dtype=torch.float64, device=None) -> torch.Tensor:
        """Y = MLP_dense(X0) without the down-projection bias, (N x d)."""
        x = self.inputs.detach().to(device=device, dtype=dtype)
        z = silu(x @ self.w_gate.detach().to(x).T) * (x @ self.w_up.detach().to(x).T)
        return z @ self.layer.weight.detach().to(x).T

    def block_objective(self, w_up: torch.Tensor, w_down: torch.Tensor) -> float:
        """1/2 ||MLP_pruned(X0) - MLP_dense(X0)||_F^2 in float64 (neurons off S removed)."""
        x = self.inputs.detach().double()
        s = self.kept.to(x.device)
        a = silu(x @ self.w_gate.detach().double()[s].T)
        out = (a * (x @ w_up.detach().double().to(x.device)[s].T)) @ w_down.detach().double().to(x.device)[:, s].T
        return float(0.5 * torch.sum((out - self.dense_output()) ** 2))

    def residuals(self, solution) -> dict[str, float]:
        out = super().residuals(solution)
        w_up = solution.extras.get("w_up", self.w_up)
        obj = self.block_objective(w_up, solution.weights)
        dense = float(0.5 * torch.sum(self.dense_output() ** 2))
        out["objective"] = obj
        out["relative_error"] = obj / dense if dense > 0 else obj
        out["kept_mismatch"] = float((solution.mask.bool()[0].cpu() != self.keep_vector()).sum())
        return out

    @classmethod
    def example(cls, rng) -> "GLURecovery":
        d, f = int(rng.integers(3, 7)), int(rng.integers(5, 10))
        x = torch.from_numpy(rng.standard_normal((8 * f, d)))
        wg, wu = (torch.from_numpy(rng.standard_normal((f, d)) / d ** 0.5) for _ in range(2))
        wd = torch.from_numpy(rng.standard_normal((d, f)) / f ** 0.5)
        kept = torch.from_numpy(rng.choice(f, f - max(1, f // 3), replace=False)).sort().values
        return cls.from_block(x, wg, wu, wd, kept, iterations=3, method=METHODS[int(rng.integers(0, 2))])


__all__ = ["GLURecovery", "METHODS", "silu"]
