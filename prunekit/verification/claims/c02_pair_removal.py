"""C2: coupled pair removal is exact (methods.md §3.2, §4.2).

Deleting rows P of W_up/W_gate (or of fc1 and b1) and columns P of W_down gives the same MLP output as
zeroing columns P of W_down; deleting rows P of W_V (and b_V) and columns P of W_O gives the same causal
single-head attention output as zeroing columns P of W_O.  Tiny float64 torch modules built here.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from torch import nn

from . import register_claim


def linear_from_arrays(weight: np.ndarray, bias: Optional[np.ndarray] = None) -> nn.Linear:
    """A float64 ``nn.Linear`` with the given weight (out, in) and optional bias (out,)."""
    lin = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, dtype=torch.float64)
    with torch.no_grad():
        lin.weight.copy_(torch.from_numpy(np.asarray(weight, dtype=np.float64)))
        if bias is not None:
            lin.bias.copy_(torch.from_numpy(np.asarray(bias, dtype=np.float64)))
    return lin


def _linear(rng, out_f: int, in_f: int, bias: bool) -> nn.Linear:
    w = rng.standard_normal((out_f, in_f))
    return linear_from_arrays(w, rng.standard_normal(out_f) if bias else None)


def _sliced(lin: nn.Linear, rows=None, cols=None) -> nn.Linear:
    """A new Linear keeping ``rows`` of the output and ``cols`` of the input (physical removal)."""
    w = lin.weight.detach()
    w = w[rows] if rows is not None else w
    w = w[:, cols] if cols is not None else w
    out = nn.Linear(w.shape[1], w.shape[0], bias=lin.bias is not None, dtype=w.dtype)
    with torch.no_grad():
        out.weight.copy_(w)
        if lin.bias is not None:
            out.bias.copy_(lin.bias.detach()[rows] if rows is not None else lin.bias.detach())
    return out


def _zero_cols(lin: nn.Linear, pruned) -> nn.Linear:
    out = _sliced(lin)
    with torch.no_grad():
        out.weight[:, pruned] = 0.0
    return out


def glu_mlp(gate, up, down, x):
    """LLaMA MLP: down(SiLU(gate x) * up x)."""
    return down(torch.nn.functional.silu(gate(x)) * up(x))


def opt_mlp(fc1, fc2, x):
    """OPT MLP: fc2(ReLU(fc1 x + b1)) + b2."""
    return fc2(torch.relu(fc1(x)))


def causal_attention(q, k, v, o, x):
    """Single-head causal attention over tokens x (T, d)."""
    t = x.shape[0]
    scores = q(x) @ k(x).T / np.sqrt(q.out_features)
    scores = scores.masked_fill(torch.triu(torch.ones(t, t, dtype=torch.bool), 1), float("-inf"))
    return o(torch.softmax(scores, dim=-1) @ v(x))


def _split(rng, f: int):
    pruned = np.sort(rng.choice(f, size=int(rng.integers(1, f)), replace=False))
    kept = np.setdiff1d(np.arange(f), pruned)
    return torch.from_numpy(pruned), torch.from_numpy(kept)


def _rel(new: torch.Tensor, ref: torch.Tensor) -> float:
    return float((new - ref).abs().max() / ref.abs().max().clamp_min(1e-300))


def _kept(pruned, size: int) -> torch.Tensor:
    return torch.from_numpy(np.setdiff1d(np.arange(size), np.asarray(pruned, dtype=np.int64)))


def pair_removal_errors_for(x: torch.Tensor, glu, opt, attention, pruned_mlp, pruned_heads) -> dict[str, float]:
    """Max |removed - zeroed| / max|zeroed| for the given modules (call under ``torch.no_grad()``).

    Parameters
    ----------
    x : Tensor, shape (T, d)
        Input tokens.
    glu : (gate, up, down) Linear modules of a LLaMA MLP with f channels.
    opt : (fc1, fc2) Linear modules (with biases) of an OPT MLP with f channels.
    attention : (q, k, v, o) Linear modules of a single head of width dh.
    pruned_mlp, pruned_heads : int index arrays
        The removed MLP channels (of f) and head dimensions (of dh).
    """
    gate, up, down = glu
    fc1, fc2 = opt
    q, k, v, o = attention
    pm, ph = torch.as_tensor(np.asarray(pruned_mlp, dtype=np.int64)), torch.as_tensor(np.asarray(pruned_heads, dtype=np.int64))
    km, kh = _kept(pm, down.in_features), _kept(ph, o.in_features)
    out = {"glu_mlp": _rel(glu_mlp(_sliced(gate, rows=km), _sliced(up, rows=km), _sliced(down, cols=km), x),
                           glu_mlp(gate, up, _zero_cols(down, pm), x)),
           "opt_mlp": _rel(opt_mlp(_sliced(fc1, rows=km), _sliced(fc2, cols=km), x), opt_mlp(fc1, _zero_cols(fc2, pm), x)),
           "attention": _rel(causal_attention(q, k, _sliced(v, rows=kh), _sliced(o, cols=kh), x),
                             causal_attention(q, k, v, _zero_cols(o, ph), x))}
    return out


def pair_removal_errors(rng: np.random.Generator) -> dict[str, float]:
    """:func:`pair_removal_errors_for` on random modules and pruned sets drawn from ``rng``."""
    d, f, t = int(rng.integers(3, 7)), int(rng.integers(3, 9)), int(rng.integers(2, 7))
    x = torch.from_numpy(rng.standard_normal((t, d)))
    pruned_mlp, _ = _split(rng, f)
    glu = (_linear(rng, f, d, False), _linear(rng, f, d, False), _linear(rng, d, f, False))
    opt = (_linear(rng, f, d, True), _linear(rng, d, f, True))
    dh = int(rng.integers(2, 6))
    pruned_heads, _ = _split(rng, dh)
    bias = bool(rng.integers(0, 2))
    attention = (_linear(rng, dh, d, bias), _linear(rng, dh, d, bias), _linear(rng, dh, d, bias), _linear(rng, d, dh, bias))
    return pair_removal_errors_for(x, glu, opt, attention, pruned_mlp, pruned_heads)


@register_claim(
    "C2",
    "Pair removal is exact: deleting rows P of W_up/W_gate (fc1, b1) and columns P of W_down equals zeroing "
    "columns P of W_down; likewise V rows / O columns in causal single-head attention.",
    tolerance=1e-12,
    source="methods.md §3.2, §4.2, §11 C2",
)
def check(rng: np.random.Generator) -> float:
    with torch.no_grad():
        return max(pair_removal_errors(rng).values())
