"""SparseLLMSplit: SparseLLM's auxiliary-variable split of one MLP block (and StructPrune's structured option).

Block-level problem over calibration inputs X (N x d, one token per row) and the dense output Y (N x d).
OPT (fc1 + ReLU + fc2, with biases), z = pre-activation, p = input of fc2:

.. math::

    \\min_{W_1, W_2, z, p}\\; \\alpha \\lVert z - X W_1^T - b_1 \\rVert^2
      + \\gamma \\lVert p - \\mathrm{ReLU}(z) \\rVert^2 + \\beta \\lVert p W_2^T + b_2 - Y \\rVert^2
      \\quad\\text{s.t. } W_1, W_2 \\text{ obey } \\texttt{sparsity}.

LLaMA (SwiGLU: gate/up/down), z = up output, s = gate output, p = input of down:

.. math::

    \\alpha \\lVert z - X W_{up}^T \\rVert^2 + \\alpha \\lVert s - X W_{gate}^T \\rVert^2
      + \\gamma \\lVert p - \\mathrm{SiLU}(s) \\odot z \\rVert^2 + \\beta \\lVert p W_{down}^T - Y \\rVert^2 .

Shapes: W_1 / W_up / W_gate are (h, d), W_2 / W_down is (d, h).  The loop (methods.md §7.2, exact from
BaiTheBest/SparseLLM ``model_utils.py``) is in ``prunekit.solvers.torch.sparsellm``.  ``layer`` is the *last*
projection (fc2 / down, (d, h)) with the Gram of its dense inputs p, so a Channels spec on ``layer`` is exactly
the neuron (column) structure; the solution's ``weights``/``mask`` are that matrix, and
``extras["weights"]``/``extras["masks"]`` hold every matrix.  ``objective`` reports the
block reconstruction error 1/2 ||f(X; W_hat) - Y||_F^2.

``structured=True`` is StructPrune's option (methods.md §7.3, **[derived]**, a reconstruction not confirmed
from the paper): ``sparsity`` must then be ``Channels`` over the h hidden neurons and one shared neuron mask
prunes the rows of W_1 (W_up, W_gate) and the columns of W_2 (W_down); the neurons kept each epoch are those
with the largest ``projection_score`` of W_2's columns ("wanda_l1": ||W_{2,:,j}||_1 ||p_j||_2; "frobenius":
||W_{2,:,j}||_2^2), and W_2 is restored by least squares on them.

``inner_pruner`` names the per-matrix pruner of the unstructured loop: "sparsegpt" (the published method),
"magnitude" or "wanda" (cheap stand-ins, also the ones the float64 reference twin implements).

Guarantee: HEURISTIC (block-coordinate descent on a non-convex problem with mask constraints).
Source: SparseLLM (Bai et al., NeurIPS 2024); StructPrune (arXiv 2510.03246) for ``structured``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Mapping, Optional

import torch

from ..errors import FormulationError, ShapeError
from .base import Formulation, Guarantee
from .form import ProblemForm
from .layer import LayerData
from .sparsity import NM, Channels, SparsitySpec, Unstructured

FAMILIES = ("opt", "llama")
INNER_PRUNERS = ("sparsegpt", "magnitude", "wanda")


def mlp_forward(family: str, x: torch.Tensor, weights: Mapping[str, torch.Tensor],
                biases: Mapping[str, Optional[torch.Tensor]]) -> torch.Tensor:
    """Output (N, d) of the MLP block for inputs x (N, d); weights keyed fc1/fc2 or gate/up/down."""
    if family == "opt":
        z = x @ weights["fc1"].T
        if biases.get("fc1") is not None:
            z = z + biases["fc1"]
        out = torch.relu(z) @ weights["fc2"].T
        return out + biases["fc2"] if biases.get("fc2") is not None else out
    act = torch.nn.functional.silu(x @ weights["gate"].T) * (x @ weights["up"].T)
    return act @ weights["down"].T


def _check_first(inputs: torch.Tensor, weight: torch.Tensor, name: str) -> None:
    if inputs.dim() != 2 or weight.dim() != 2 or inputs.shape[1] != weight.shape[1]:
        raise ShapeError(f"inputs must be (N, d) with d = {name}.shape[1]; got inputs {tuple(inputs.shape)} "
                         f"and {name} {tuple(weight.shape)}.")


@dataclass(frozen=True, eq=False)
class SparseLLMSplit(Formulation):
    """SparseLLM split of one MLP block (see the module docstring).

    Build with :meth:`opt` or :meth:`llama`.  ``layer`` is the last projection (fc2 / down, (d, h), bias b2)
    with the Gram of its dense inputs p; ``up`` is fc1 / up (h, d) with ``up_bias`` (OPT's b1);
    ``gate`` (h, d) only for LLaMA.
    """

    inputs: torch.Tensor = None  # type: ignore[assignment]
    up: torch.Tensor = None  # type: ignore[assignment]
    sparsity: SparsitySpec = None  # type: ignore[assignment]
    family: str = "opt"
    up_bias: Optional[torch.Tensor] = None
    gate: Optional[torch.Tensor] = None
    target: Optional[torch.Tensor] = None
    alpha: float = 0.1
    beta: float = 0.1
    gamma: float = 0.1
    epochs: int = 4
    structured: bool = False
    inner_pruner: str = "sparsegpt"
    projection_score: str = "wanda_l1"
    w2_steps: int = 10
    w2_lr: float = 0.01
    s_epochs: int = 2
    s_lr: float = 0.01
    s_batch: int = 1000

    guarantee = Guarantee.HEURISTIC
    paper = "SparseLLM (Bai et al., NeurIPS 2024); structured option: StructPrune arXiv 2510.03246 [derived]"

    # ------------------------------------------------------------------ constructors
    @classmethod
    def opt(cls, fc1_weight, fc1_bias, fc2_weight, fc2_bias, inputs, sparsity, *, damping: float = 0.01,
            **kwargs: Any) -> "SparseLLMSplit":
        """OPT block: fc1 (h, d) + bias, ReLU, fc2 (d, h) + bias; inputs (N, d). Defaults alpha=beta=gamma=0.1."""
        _check_first(inputs, fc1_weight, "fc1_weight")
        z = inputs.detach() @ fc1_weight.detach().T + (fc1_bias.detach() if fc1_bias is not None else 0.0)
        layer = LayerData.from_inputs(fc2_weight, torch.relu(z), bias=fc2_bias, damping=damping, with_mean=False)
        return cls(layer, inputs=inputs, up=fc1_weight, up_bias=fc1_bias, sparsity=sparsity, family="opt", **kwargs)

    @classmethod
    def llama(cls, gate_weight, up_weight, down_weight, inputs, sparsity, *, damping: float = 0.01,
              **kwargs: Any) -> "SparseLLMSplit":
        """LLaMA block: gate/up (h, d), down (d, h); code defaults alpha=beta=gamma=5.0."""
        kwargs = {"alpha": 5.0, "beta": 5.0, "gamma": 5.0, **kwargs}
        _check_first(inputs, up_weight, "up_weight")
        _check_first(inputs, gate_weight, "gate_weight")
        x = inputs.detach()
        p = torch.nn.functional.silu(x @ gate_weight.detach().T) * (x @ up_weight.detach().T)
        layer = LayerData.from_inputs(down_weight, p, damping=damping, with_mean=False)
        return cls(layer, inputs=inputs, up=up_weight, gate=gate_weight, sparsity=sparsity, family="llama", **kwargs)

    # ------------------------------------------------------------------ rules
    def validate(self) -> None:
        if self.sparsity is None or self.inputs is None or self.up is None:
            raise FormulationError("SparseLLMSplit needs inputs=, up= and sparsity= (use .opt(...) or .llama(...)).")
        if not isinstance(self.sparsity, SparsitySpec):
            raise TypeError(f"sparsity must be a SparsitySpec, got {type(self.sparsity).__name__}.")
        super().validate()  # the spec fits fc2 / down (d, h)
        if self.family not in FAMILIES:
            raise FormulationError(f"family must be one of {FAMILIES}, got {self.family!r}.")
        d, h = self.layer.shape
        x = self.inputs
        if tuple(self.up.shape) != (h, d):
            raise ShapeError(f"up/fc1 weight must be ({h}, {d}) to match fc2/down ({d} x {h}), got {tuple(self.up.shape)}.")
        if x.dim() != 2 or x.shape[1] != d:
            raise ShapeError(f"inputs must be (N, {d}) to match fc1/up ({h} x {d}), got {tuple(x.shape)}.")
        if self.family == "llama":
            if self.gate is None or tuple(self.gate.shape) != (h, d):
                raise ShapeError(f"LLaMA needs gate of shape ({h}, {d}).")
            if self.layer.bias is not None or self.up_bias is not None:
                raise ShapeError("the LLaMA MLP has no biases; pass none.")
        elif self.gate is not None:
            raise ShapeError("gate= is only for family='llama'.")
        if self.up_bias is not None and tuple(self.up_bias.shape) != (h,):
            raise ShapeError(f"up_bias must be ({h},), got {tuple(self.up_bias.shape)}.")
        if self.target is not None and tuple(self.target.shape) != tuple(x.shape):
            raise ShapeError(f"target must have the shape of inputs {tuple(x.shape)}, got {tuple(self.target.shape)}.")
        for name, t in (("inputs", x), ("up", self.up), ("gate", self.gate), ("target", self.target)):
            if t is not None and not torch.isfinite(t).all():
                raise FormulationError(f"{name} contains NaN/Inf.")
        if self.structured:
            if not isinstance(self.sparsity, Channels):
                raise FormulationError("structured=True needs sparsity=Channels(...) over the hidden neurons.")
            self.sparsity.validate_for((d, h))
        else:
            if not isinstance(self.sparsity, (Unstructured, NM)):
                raise FormulationError("the unstructured SparseLLM loop takes Unstructured or NM; "
                                       "for Channels set structured=True (StructPrune option).")
            self.sparsity.validate_for((h, d))
            self.sparsity.validate_for((d, h))
        for name in ("alpha", "beta", "gamma", "w2_lr", "s_lr"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise FormulationError(f"{name} must be a finite number > 0, got {v!r}.")
        for name in ("epochs", "w2_steps", "s_epochs", "s_batch"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < (1 if name in ("epochs", "s_batch") else 0):
                raise FormulationError(f"{name} must be a non-negative int (epochs, s_batch >= 1), got {v!r}.")
        if self.inner_pruner not in INNER_PRUNERS:
            raise FormulationError(f"inner_pruner must be one of {INNER_PRUNERS}, got {self.inner_pruner!r}.")
        if self.projection_score not in ("wanda_l1", "frobenius"):
            raise FormulationError(f"projection_score must be 'wanda_l1' or 'frobenius', got {self.projection_score!r}.")

    def _form(self) -> ProblemForm:
        d, h = self.layer.shape
        return ProblemForm(is_mixed_integer=True, has_bilinear=False, is_convex=False, row_separable=False,
                           structured=self.structured, num_weights=(3 if self.family == "llama" else 2) * h * d,
                           in_features=h)

    # ------------------------------------------------------------------ block data
    def dense_weights(self) -> dict[str, torch.Tensor]:
        if self.family == "opt":
            return {"fc1": self.up, "fc2": self.layer.weight}
        return {"gate": self.gate, "up": self.up, "down": self.layer.weight}

    def biases(self) -> dict[str, Optional[torch.Tensor]]:
        return {"fc1": self.up_bias, "fc2": self.layer.bias} if self.family == "opt" else {}

    def dense_target(self, dtype=torch.float64, device=None) -> torch.Tensor:
        """Y: ``target`` if given, else the dense block output on ``inputs``."""
        if self.target is not None:
            return self.target.detach().to(device=device or self.target.device, dtype=dtype)
        cast = lambda t: None if t is None else t.detach().to(device=device or self.inputs.device, dtype=dtype)  # noqa: E731
        return mlp_forward(self.family, cast(self.inputs), {k: cast(v) for k, v in self.dense_weights().items()},
                           {k: cast(v) for k, v in self.biases().items()})

    @cached_property
    def _target64(self) -> torch.Tensor:
        """Y in float64 on the CPU, computed once (the formulation is immutable)."""
        return self.dense_target(dtype=torch.float64, device="cpu")

    def block_error(self, weights: Mapping[str, torch.Tensor]) -> float:
        """1/2 ||f(X; weights) - Y||_F^2 in float64."""
        d64 = lambda t: None if t is None else t.detach().double().cpu()  # noqa: E731
        out = mlp_forward(self.family, d64(self.inputs), {k: d64(v) for k, v in weights.items()},
                          {k: d64(v) for k, v in self.biases().items()})
        return float(0.5 * ((out - self._target64) ** 2).sum())

    # ------------------------------------------------------------------ certificates
    def residuals(self, solution) -> dict[str, float]:
        """Feasibility of every pruned matrix, block objective and relative error (1/2||Y||^2 scale)."""
        weights = solution.extras.get("weights")
        masks = solution.extras.get("masks")
        if weights is None or masks is None:
            raise ShapeError("a SparseLLMSplit solution carries extras['weights'] and extras['masks'].")
        out: dict[str, float] = {"mask_violations": 0.0, "pruned_max_abs": 0.0, "nonfinite": 0.0}
        for name, w in weights.items():
            mask = masks[name].bool()
            if self.structured:
                # first projections: whole rows; down: Channels over its columns; all share one neuron set
                neurons = mask.all(dim=0) if name in ("fc2", "down") else mask.all(dim=1)
                partial = (mask.any(dim=0) & ~mask.all(dim=0)) if name in ("fc2", "down") else (mask.any(dim=1) & ~mask.all(dim=1))
                ref = masks["fc2" if self.family == "opt" else "down"].bool().all(dim=0)
                bad = int(partial.sum()) + int((neurons != ref).sum())
                if name in ("fc2", "down"):
                    bad += self.sparsity.violations(mask)
            else:
                bad = self.sparsity.violations(mask)
            out["mask_violations"] += float(bad)
            pruned = w.detach()[~mask]
            out["pruned_max_abs"] = max(out["pruned_max_abs"], float(pruned.abs().max()) if pruned.numel() else 0.0)
            out["nonfinite"] += float((~torch.isfinite(w)).sum())
        obj = self.block_error(weights) if out["nonfinite"] == 0 else float("nan")
        out["objective"] = obj
        energy = float(0.5 * (self._target64 ** 2).sum())
        out["relative_error"] = obj / energy if energy > 0 else obj
        return out

    @classmethod
    def example(cls, rng) -> "SparseLLMSplit":
        """Tiny random OPT or LLaMA block (d=8, h=16, N=48), cheap inner pruner (the reference implements it)."""
        d, h, n_tok = 8, 16, 48
        t = lambda *s: torch.from_numpy(rng.standard_normal(s) / math.sqrt(s[-1]))  # noqa: E731
        x = torch.from_numpy(rng.standard_normal((n_tok, d)))
        structured = bool(rng.integers(0, 3) == 0)
        spec = Channels(ratio=0.25) if structured else (Unstructured(0.5), NM(2, 4))[int(rng.integers(0, 2))]
        common = dict(epochs=int(rng.integers(1, 4)), structured=structured,
                      inner_pruner=str(rng.choice(["magnitude", "wanda"])),
                      projection_score=str(rng.choice(["wanda_l1", "frobenius"])))
        if rng.integers(0, 2) == 0:
            return cls.opt(t(h, d), t(h), t(d, h), t(d), x, spec, **common)
        return cls.llama(t(h, d), t(h, d), t(d, h), x, spec, alpha=1.0, beta=1.0, gamma=1.0, s_batch=16, **common)
