"""MaskedReconstructionMIP, RelaxedChannelMIP, SPAPRelaxation and the CVXPY MIP reference."""

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from prunekit import solve
from prunekit.errors import FormulationError, NoSolverError
from prunekit.formulations.base import Guarantee
from prunekit.formulations.mip import MaskedReconstructionMIP
from prunekit.formulations.reductions_spap import RelaxedChannelMIP, SPAPRelaxation
from prunekit.formulations.sparsity import NM, Channels, Unstructured
from prunekit.solvers.registry import backends_for
from prunekit.solvers.solution import Solution
from prunekit.verification.toy import random_layer


@pytest.fixture
def layer():
    return random_layer(np.random.default_rng(0), 3, 6)


def test_form_flags(layer):
    """Property: the MIP is mixed-integer and bilinear; only per-row/N:M masks are row-separable."""
    f = MaskedReconstructionMIP(layer, Channels(count=2))
    assert f.form.is_mixed_integer and f.form.has_bilinear and f.form.structured and not f.form.row_separable
    assert MaskedReconstructionMIP(layer, Unstructured(0.5)).form.row_separable
    assert not MaskedReconstructionMIP(layer, Unstructured(0.5, scope="layer")).form.row_separable
    assert MaskedReconstructionMIP.guarantee is Guarantee.EXACT and f.is_channel_model


def test_validate_gives_advice(layer):
    """Property: a missing spec raises a FormulationError that points to the exact backends."""
    with pytest.raises(FormulationError, match="bruteforce"):
        MaskedReconstructionMIP(layer)
    with pytest.raises(FormulationError, match="at least one must remain"):
        MaskedReconstructionMIP(layer, Channels(count=6))


def test_torch_is_not_an_exact_backend(layer):
    """Property: asking torch for the exact MIP fails and names the backends that can solve it."""
    with pytest.raises(NoSolverError, match="bruteforce"):
        solve(MaskedReconstructionMIP(layer, Channels(count=2)), backend="torch")
    assert "bruteforce" in backends_for(MaskedReconstructionMIP)


@given(seed=st.integers(0, 2**32 - 1))
def test_example_is_small_and_solvable(seed):
    """Property: example() gives n <= 10 instances that the brute force solves feasibly."""
    f = MaskedReconstructionMIP.example(np.random.default_rng(seed))
    assert f.layer.in_features <= 10
    sol = solve(f, backend="bruteforce")
    assert sol.residuals["mask_violations"] == 0 and sol.residuals["nonfinite"] == 0


def test_relaxed_residuals_detect_bilinear_violation(layer):
    """Property: a nonzero column where s_j > 0 is flagged as infeasible for the relaxed problem."""
    f = RelaxedChannelMIP(layer, Channels(count=2))
    s = torch.tensor([0.5, 0.5, 0.5, 0.5, 0, 0], dtype=torch.float64)
    w = layer.weight.clone()
    w[:, :3] = 0.0  # column 3 still nonzero although s_3 > 0
    mask = torch.ones(3, 6, dtype=torch.bool)
    mask[:, :3] = False
    res = f.residuals(Solution(weights=w, mask=mask, extras={"s": s}))
    assert res["mask_violations"] > 0 and res["bilinear_residual"] > 0
    w[:, 3] = 0.0
    mask[:, 3] = False
    res = f.residuals(Solution(weights=w, mask=mask, extras={"s": s}))
    assert res["mask_violations"] == 0 and res["binary_mask_violations"] > 0


def test_reduction_accepts_only_channel_mip(layer):
    """Property: SPAPRelaxation is EXACT and applies only to the channel MIP."""
    red = SPAPRelaxation()
    assert red.guarantee is Guarantee.EXACT
    assert red.accepts(MaskedReconstructionMIP(layer, Channels(count=1)))
    assert not red.accepts(MaskedReconstructionMIP(layer, Unstructured(0.5)))
    with pytest.raises(FormulationError, match="Channels"):
        red.apply(MaskedReconstructionMIP(layer, NM(1, 3)))
    with pytest.raises(FormulationError, match="Channels"):
        RelaxedChannelMIP(layer, Unstructured(0.5))


def test_cvxpy_mip_declines_or_matches_bruteforce(layer):
    """Property: the CVXPY MIP either declines naming what to install, or matches the brute-force optimum."""
    pytest.importorskip("cvxpy")
    from prunekit.solvers.reference.cvxpy_mip import available_miqp_solver

    f = MaskedReconstructionMIP(layer, Channels(count=2))
    if available_miqp_solver() is None:
        with pytest.raises(NoSolverError, match="pyscipopt|ecos"):
            solve(f, backend="cvxpy")
        return
    for spec in (Channels(count=2), Unstructured(0.5), NM(1, 3)):
        f = MaskedReconstructionMIP(layer, spec)
        a, b = solve(f, backend="cvxpy"), solve(f, backend="bruteforce")
        assert a.residuals["mask_violations"] == 0
        assert a.objective == pytest.approx(b.objective, rel=1e-6, abs=1e-9 * layer.dense_energy())
