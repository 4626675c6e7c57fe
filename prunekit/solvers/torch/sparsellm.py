"""Torch solver for :class:`~prunekit.formulations.sparsellm.SparseLLMSplit`: the SparseLLM loop.

Per epoch (methods.md §7.2; ``e`` = epoch index)::

    if e > 0:  W1 <- (z - b1) X^+   (X^+ cached)            LLaMA: W_up <- z X^+, W_gate <- s X^+
               W2 <- OPT: gradient steps on mean ||p W2^T + b2 - Y||^2;   LLaMA: W_down <- Y p^+
    prune every matrix (inner pruner; W2's Gram rebuilt from the current p)
        -- structured (StructPrune, [derived]): one neuron set from W2's column scores, W2 restored on it
           by least squares, pruned rows of W1 (W_up, W_gate) zeroed
    p-step (linear system), z-step (OPT: two-candidate ReLU rule; LLaMA: closed form), LLaMA s-step (GD)

The step functions are pure and public here (claim C18).  The inner pruner is a callable
``inner(weight (out, in), gram (in, in), num_tokens, spec) -> (pruned weight, keep-mask)``; :func:`inner_pruner` maps the
formulation's ``inner_pruner`` name to one ("sparsegpt" imports the SparseGPT solver lazily).
"""

from __future__ import annotations

from typing import Callable

import torch

from ...formulations.sparsellm import SparseLLMSplit
from ...formulations.sparsity import SparsitySpec
from ..iterative import IterationStats, IterativeSolver
from ..registry import register_solver
from ..solution import Solution
from ._sparsellm_steps import (  # noqa: F401  (public re-exports)
    neuron_scores,
    p_step,
    relu_z_objective,
    restore_columns_lstsq,
    s_step,
    w2_gradient_steps,
    z_step_relu,
    z_step_swiglu,
)

InnerPruner = Callable[[torch.Tensor, torch.Tensor, int, SparsitySpec], tuple[torch.Tensor, torch.Tensor]]


def prune_magnitude(weight, gram, num_tokens, spec):
    """Keep the largest |W_ij| subject to ``spec``."""
    mask = spec.project(weight.double().abs())
    return weight * mask, mask


def prune_wanda(weight, gram, num_tokens, spec):
    """Keep the largest |W_ij| ||X_j|| (||X_j|| = sqrt(G_jj)) subject to ``spec``."""
    norms = gram.double().diagonal().clamp_min(0).sqrt()
    mask = spec.project(weight.double().abs() * norms.unsqueeze(0))
    return weight * mask, mask


def prune_sparsegpt(weight, gram, num_tokens, spec, *, dtype: str = "float32"):
    """SparseGPT on (weight, gram) through prunekit's registered torch solver (imported lazily)."""
    from ...formulations.layer import LayerData
    from ...formulations.sparsegpt import SparseGPTPruning  # the SparseGPT formulation (another module)
    from .. import solve

    g = 0.5 * (gram + gram.T)
    layer = LayerData(weight=weight, gram=g, num_tokens=int(num_tokens), check_psd=False)
    sol = solve(SparseGPTPruning(layer, sparsity=spec), backend="torch", dtype=dtype)
    return sol.weights, sol.mask.bool()


def inner_pruner(name: str, dtype: str = "float32") -> InnerPruner:
    if name == "magnitude":
        return prune_magnitude
    if name == "wanda":
        return prune_wanda
    return lambda w, g, n, s: prune_sparsegpt(w, g, n, s, dtype=dtype)


def sparsellm_loop(f: SparseLLMSplit, inner: InnerPruner, *, dtype=torch.float64, device="cpu") -> dict:
    """Run the SparseLLM loop on ``f``; returns {"weights", "masks", "stats"} (weights in ``dtype``)."""
    cast = lambda t: None if t is None else t.detach().to(device=device, dtype=dtype)  # noqa: E731
    x = cast(f.inputs)
    y = f.dense_target(dtype=dtype, device=device)
    n_tok = x.shape[0]
    a, b, c = f.alpha, f.beta, f.gamma
    llama = f.family == "llama"
    w1, w2 = cast(f.up), cast(f.layer.weight)
    b1, b2 = cast(f.up_bias), cast(f.layer.bias)
    wg = cast(f.gate) if llama else None
    x_pinv = torch.linalg.pinv(x)  # (d, N), cached
    gram_x = x.T @ x
    if llama:
        s = x @ wg.T
        z = x @ w1.T
        p = torch.nn.functional.silu(s) * z
    else:
        z = x @ w1.T + (b1 if b1 is not None else 0.0)
        p = torch.relu(z)
    target = y - b2 if b2 is not None else y
    masks: dict = {}
    keep = None
    for epoch in range(f.epochs):
        if epoch > 0:
            w1 = ((x_pinv @ (z - b1 if b1 is not None else z)).T).contiguous()
            if llama:
                wg = (x_pinv @ s).T.contiguous()
                w2 = (torch.linalg.pinv(p) @ y).T.contiguous()
            else:
                w2 = w2_gradient_steps(w2, b2, p, y, steps=f.w2_steps, lr=f.w2_lr)
        if f.structured:
            keep = f.sparsity.project(neuron_scores(w2, p, f.projection_score))[0]
            w2 = restore_columns_lstsq(p, target, keep)
            w1 = w1 * keep.unsqueeze(1)
            if llama:
                wg = wg * keep.unsqueeze(1)
        else:
            w1, masks["up" if llama else "fc1"] = inner(w1, gram_x, n_tok, f.sparsity)
            if llama:
                wg, masks["gate"] = inner(wg, gram_x, n_tok, f.sparsity)
            w2, masks["down" if llama else "fc2"] = inner(w2, p.T @ p, n_tok, f.sparsity)
        if llama:
            p = p_step(w2, None, y, torch.nn.functional.silu(s) * z, b, c)
            z = z_step_swiglu(x @ w1.T, s, p, a, c)
            s = s_step(s, x @ wg.T, p, z, a, c, lr=f.s_lr, epochs=f.s_epochs, batch=f.s_batch)
        else:
            p = p_step(w2, b2, y, torch.relu(z), b, c)
            z = z_step_relu(p, x @ w1.T + (b1 if b1 is not None else 0.0), a, c)
    if llama:
        weights = {"gate": wg, "up": w1, "down": w2}
    else:
        weights = {"fc1": w1, "fc2": w2}
    if f.structured:
        masks = {k: (keep.unsqueeze(0).expand(v.shape[0], -1) if k in ("fc2", "down")
                     else keep.unsqueeze(1).expand(-1, v.shape[1])).clone() for k, v in weights.items()}
    return {"weights": weights, "masks": masks, "keep": keep, "stats": {"epochs": f.epochs}}


@register_solver(SparseLLMSplit, backend="torch")
class TorchSparseLLM(IterativeSolver):
    """The SparseLLM alternating loop (exact steps from the code; structured option [derived]).

    A scheduled loop: the formulation's ``epochs`` (SparseLLM has no convergence test; status "heuristic").
    """

    def run(self, formulation: SparseLLMSplit, options) -> Solution:
        device = options.resolve_device(formulation.layer.weight)
        inner = inner_pruner(formulation.inner_pruner, options.dtype)
        out = sparsellm_loop(formulation, inner, dtype=options.torch_dtype, device=device)
        dev, dt = formulation.layer.weight.device, formulation.layer.weight.dtype
        weights = {k: v.to(device=dev, dtype=dt) for k, v in out["weights"].items()}
        masks = {k: v.to(dev) for k, v in out["masks"].items()}
        first = "fc2" if formulation.family == "opt" else "down"
        keep = out["keep"]
        return self.solution(
            IterationStats.schedule(formulation.epochs),
            weights=weights[first], mask=masks[first],
            kept_columns=keep.nonzero().squeeze(1).to(dev) if keep is not None else None,
            stats=out["stats"],
            extras={"weights": weights, "masks": masks},
        )
