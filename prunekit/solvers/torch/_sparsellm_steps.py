"""Pure update steps of the SparseLLM loop (methods.md §7.2, from BaiTheBest/SparseLLM ``model_utils.py``).

Row layout: tokens are rows.  X (N, d), z / s / p (N, h), Y (N, d), W_1 (h, d), W_2 (d, h).
Every function returns new tensors and leaves its arguments untouched.  Claim C18 checks that the p-step,
the ReLU z-step and the SwiGLU z-step are exact block minimizers.

The step counts and learning rates of the W2- and s-steps (10 steps / lr 0.01; 2 epochs / lr 0.01 / batches of
1000 tokens) are the code's (methods.md §7.2); the optimizer form -- plain gradient descent on the mean squared
loss -- is **[derived]**: methods.md does not fix it, so it is a documented assumption.  The formulation fields
``w2_steps``, ``w2_lr``, ``s_epochs``, ``s_lr`` and ``s_batch`` set these knobs.
"""

from __future__ import annotations

from typing import Optional

import torch

from .masked_lstsq import columns_lstsq


def p_step(w2: torch.Tensor, b2: Optional[torch.Tensor], y: torch.Tensor, act: torch.Tensor,
           beta: float, gamma: float) -> torch.Tensor:
    """argmin_p  beta ||p W2^T + b2 - Y||^2 + gamma ||p - act||^2  (a linear system, h x h).

    p = (beta (Y - b2) W2 + gamma act) (beta W2^T W2 + gamma I)^{-1}.
    """
    h = w2.shape[1]
    target = y - b2 if b2 is not None else y
    lhs = beta * (w2.T @ w2) + gamma * torch.eye(h, dtype=w2.dtype, device=w2.device)
    rhs = beta * (target @ w2) + gamma * act
    return torch.linalg.solve(lhs, rhs.T).T  # lhs symmetric


def relu_z_objective(z: torch.Tensor, p: torch.Tensor, m: torch.Tensor, alpha: float, gamma: float) -> torch.Tensor:
    """Elementwise gamma (p - ReLU(z))^2 + alpha (z - m)^2."""
    return gamma * (p - torch.relu(z)) ** 2 + alpha * (z - m) ** 2


def z_step_relu(p: torch.Tensor, m: torch.Tensor, alpha: float, gamma: float) -> torch.Tensor:
    """OPT z-step, elementwise exact: the better of z1 = max(0, (gamma p + alpha m)/(gamma + alpha)) and z2 = min(0, m)."""
    z1 = torch.clamp_min((gamma * p + alpha * m) / (gamma + alpha), 0.0)
    z2 = torch.clamp_max(m, 0.0)
    f1 = relu_z_objective(z1, p, m, alpha, gamma)
    f2 = relu_z_objective(z2, p, m, alpha, gamma)
    return torch.where(f1 <= f2, z1, z2)


def z_step_swiglu(m: torch.Tensor, s: torch.Tensor, p: torch.Tensor, alpha: float, gamma: float) -> torch.Tensor:
    """LLaMA z-step: argmin_z alpha (z - m)^2 + gamma (p - SiLU(s) z)^2 = (alpha m + gamma a p)/(alpha + gamma a^2).

    With alpha = gamma (the code's setting) this is the code's ``(m + SiLU(s) p) / (SiLU(s)^2 + 1)``.
    """
    a = torch.nn.functional.silu(s)
    return (alpha * m + gamma * a * p) / (alpha + gamma * a * a)


def s_step(s: torch.Tensor, m_gate: torch.Tensor, p: torch.Tensor, z: torch.Tensor, alpha: float, gamma: float,
           *, lr: float = 0.01, epochs: int = 2, batch: int = 1000) -> torch.Tensor:
    """LLaMA s-step: ``epochs`` passes of gradient descent over token minibatches of ``batch`` rows on
    alpha ||s - m_gate||^2 + gamma ||p - SiLU(s) z||^2 (mean over the minibatch's elements; plain GD, lr ``lr``).
    """
    s = s.clone()
    n = s.shape[0]
    for _ in range(epochs):
        for start in range(0, n, batch):
            sl = slice(start, min(start + batch, n))
            sb, zb = s[sl], z[sl]
            sig = torch.sigmoid(sb)
            silu = sb * sig
            dsilu = sig * (1.0 + sb * (1.0 - sig))
            grad = 2.0 * alpha * (sb - m_gate[sl]) - 2.0 * gamma * (p[sl] - silu * zb) * zb * dsilu
            s[sl] = sb - lr * grad / sb.numel()
    return s


def w2_gradient_steps(w2: torch.Tensor, b2: Optional[torch.Tensor], p: torch.Tensor, y: torch.Tensor,
                      *, steps: int = 10, lr: float = 0.01) -> torch.Tensor:
    """OPT W2-step: ``steps`` plain gradient steps (lr ``lr``) on mean ||p W2^T + b2 - Y||^2 (mean over N d)."""
    w2 = w2.clone()
    scale = 2.0 / y.numel()
    for _ in range(steps):
        resid = p @ w2.T - y
        if b2 is not None:
            resid = resid + b2
        w2 = w2 - lr * scale * (resid.T @ p)
    return w2


def neuron_scores(w2: torch.Tensor, p: torch.Tensor, score: str) -> torch.Tensor:
    """Per-neuron importance of W2's columns: "wanda_l1" ||W2_{:,j}||_1 ||p_j||_2, "frobenius" ||W2_{:,j}||_2^2."""
    if score == "frobenius":
        return (w2.double() ** 2).sum(dim=0)
    return w2.double().abs().sum(dim=0) * torch.linalg.norm(p.double(), dim=0)


def restore_columns_lstsq(p: torch.Tensor, target: torch.Tensor, keep: torch.Tensor, damping: float = 0.01) -> torch.Tensor:
    """W2 (d, h) minimizing ||p_K W2_K^T - target||^2 (damped by ``damping`` mean diag), zero off the kept neurons.

    The cross form of the shared kernel (:func:`~.masked_lstsq.columns_lstsq`): ``W2_K = (target^T p_K)
    (p_K^T p_K + lambda I)^{-1}`` with one Cholesky.  ``lambda = damping * mean diag(p_K^T p_K)`` (1e-12 when
    that is 0) is the SparseLLM code's convention, which its reference twin mirrors.
    """
    pk = p[:, keep]
    g = pk.T @ pk
    lam = damping * float(g.diagonal().mean()) if g.numel() else 0.0
    lam = lam if lam > 0 else 1e-12
    w2 = torch.zeros(target.shape[1], p.shape[1], dtype=p.dtype, device=p.device)
    if g.numel():
        kept = torch.ones(g.shape[0], dtype=torch.bool, device=p.device)
        w2[:, keep] = columns_lstsq(g, lam, kept, cross=target.T @ pk)[0]
    return w2
