"""C2 — coupled pair removal is exact (methods.md §3.2, §4.2, §11 C2).

Statement: deleting rows P of W_up and W_gate (OPT: rows P of fc1 and entries P of b1) together with
columns P of W_down gives exactly the MLP output obtained by zeroing columns P of W_down; deleting rows P
of W_V (and b_V) and columns P of W_O gives exactly the causal single-head attention output obtained by
zeroing columns P of W_O.
Assumptions: channel j of the intermediate activation feeds only column j of the downstream weight (the
nonlinearity is elementwise; the softmax weights do not depend on V).
Citation: SPAP (arXiv 2505.03373) and FASP (arXiv 2501.09412) pruning structure.  Claim id: C2.
"""

import numpy as np
import torch
from hypothesis import given
from hypothesis import strategies as st

from prunekit.verification import strategies as pst
from prunekit.verification.claims import get_claim
from prunekit.verification.claims.c02_pair_removal import (
    _linear, _sliced, _zero_cols, causal_attention, glu_mlp, linear_from_arrays, pair_removal_errors_for,
)

CLAIM = get_claim("C2")


@st.composite
def linears(draw, out_features, in_features, bias=False, ties=None):
    """A float64 nn.Linear with gaussian weights (and bias), optionally with tied (quantized) entries."""
    weight = draw(pst.gaussian_arrays((out_features, in_features), ties=ties))
    return linear_from_arrays(weight, draw(pst.gaussian_arrays(out_features, ties=ties)) if bias else None)


@st.composite
def coupled_modules(draw):
    """(x, GLU MLP, OPT MLP, attention head, pruned channels, pruned head dims) with drawn widths."""
    d, f, t, dh = (draw(st.integers(lo, hi)) for lo, hi in ((3, 6), (3, 8), (2, 6), (2, 5)))
    x = torch.from_numpy(draw(pst.gaussian_arrays((t, d))))
    glu = (draw(linears(f, d)), draw(linears(f, d)), draw(linears(d, f)))
    opt = (draw(linears(f, d, bias=True)), draw(linears(d, f, bias=True)))
    bias = draw(st.booleans())
    attention = tuple(draw(linears(*shape, bias=bias)) for shape in ((dh, d), (dh, d), (dh, d), (d, dh)))
    return x, glu, opt, attention, draw(pst.index_subsets(f, 1, f - 1)), draw(pst.index_subsets(dh, 1, dh - 1))


@given(coupled_modules())
def test_claim_c02_holds_on_random_modules(case):
    """Property: the claim's error (worst structure) stays within its tolerance on drawn modules."""
    with torch.no_grad():
        assert max(pair_removal_errors_for(*case).values()) <= CLAIM.tolerance


@given(coupled_modules())
def test_each_structure_is_exact(case):
    """Property: GLU MLP, OPT MLP and attention each reproduce the zeroed-column output to rounding."""
    with torch.no_grad():
        errs = pair_removal_errors_for(*case)
    assert set(errs) == {"glu_mlp", "opt_mlp", "attention"}
    assert max(errs.values()) < 1e-12, errs


@given(pst.gaussian_arrays((5, 4)), linears(6, 4, ties=False), linears(6, 4, ties=False), linears(4, 6, ties=False))
def test_removing_a_different_set_is_not_equivalent(x, gate, up, down):
    """Property: the check can fail — deleting upstream rows that do not match the zeroed columns changes the output."""
    x = torch.from_numpy(x)
    with torch.no_grad():
        ref = glu_mlp(gate, up, _zero_cols(down, torch.tensor([0])), x)
        kept_wrong = torch.tensor([0, 2, 3, 4, 5])  # removes channel 1 instead of 0
        new = glu_mlp(_sliced(gate, rows=kept_wrong), _sliced(up, rows=kept_wrong), _sliced(down, cols=kept_wrong), x)
    assert float((new - ref).abs().max()) > 1e-8


def test_attention_is_causal():
    """Property: the attention output of token t does not depend on later tokens (the module is causal)."""
    rng = np.random.default_rng(0)
    q, k, v = (_linear(rng, 3, 4, True) for _ in range(3))
    o = _linear(rng, 4, 3, True)
    x = torch.from_numpy(rng.standard_normal((5, 4)))
    x2 = x.clone()
    x2[3:] += 1.0
    with torch.no_grad():
        a, b = causal_attention(q, k, v, o, x), causal_attention(q, k, v, o, x2)
    assert torch.allclose(a[:3], b[:3]) and not torch.allclose(a[3:], b[3:])
