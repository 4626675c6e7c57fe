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

from prunekit.verification.claims import assert_claim
from prunekit.verification.claims.c02_pair_removal import (
    _linear, _sliced, _zero_cols, causal_attention, glu_mlp, pair_removal_errors,
)


@given(seed=st.integers(0, 2**32 - 1))
def test_claim_c02_holds_on_random_modules(seed):
    """Property: the claim's check stays within tolerance on hypothesis-drawn seeds."""
    assert assert_claim("C2", np.random.default_rng(seed)) <= 1e-12


@given(seed=st.integers(0, 2**32 - 1))
def test_each_structure_is_exact(seed):
    """Property: GLU MLP, OPT MLP and attention each reproduce the zeroed-column output to rounding."""
    with torch.no_grad():
        errs = pair_removal_errors(np.random.default_rng(seed))
    assert set(errs) == {"glu_mlp", "opt_mlp", "attention"}
    assert max(errs.values()) < 1e-12, errs


@given(seed=st.integers(0, 2**32 - 1))
def test_removing_a_different_set_is_not_equivalent(seed):
    """Property: the check can fail — deleting upstream rows that do not match the zeroed columns changes the output."""
    rng = np.random.default_rng(seed)
    d, f = 4, 6
    x = torch.from_numpy(rng.standard_normal((5, d)))
    gate, up, down = _linear(rng, f, d, False), _linear(rng, f, d, False), _linear(rng, d, f, False)
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
