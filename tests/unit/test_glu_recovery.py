"""Unit tests of the GLU MLP performance recovery (GLURecovery and its torch solver)."""

import numpy as np
import pytest
import torch

import prunekit
from prunekit.errors import FormulationError, ShapeError
from prunekit.formulations.glu_recovery import GLURecovery, silu
from prunekit.solvers.torch.glu_recovery import _u_step_lstsq, _v_step


def _block(seed=0, d=5, f=8, tokens=64):
    rng = np.random.default_rng(seed)
    x = torch.from_numpy(rng.standard_normal((tokens, d)))
    wg = torch.from_numpy(rng.standard_normal((f, d)) / d ** 0.5)
    wu = torch.from_numpy(rng.standard_normal((f, d)) / d ** 0.5)
    wd = torch.from_numpy(rng.standard_normal((d, f)) / f ** 0.5)
    kept = torch.from_numpy(np.sort(rng.choice(f, f - 3, replace=False)))
    return x, wg, wu, wd, kept


def _sliced_mlp(x, wg, wu, wd, kept):
    """The physically pruned MLP: rows S of W_gate/W_up, columns S of W_down."""
    return (silu(x @ wg[kept].T) * (x @ wu[kept].T)) @ wd[:, kept].T


@pytest.mark.parametrize("method", ["lstsq", "gradient"])
@pytest.mark.parametrize("seed", range(3))
def test_block_objective_never_increases_and_improves(method, seed):
    f = GLURecovery.from_block(*_block(seed), iterations=4, method=method)
    sol = prunekit.solve(f, backend="torch", dtype="float64")
    trace = np.array(sol.extras["objective_trace"])
    assert len(trace) == 5
    assert np.all(np.diff(trace) <= 0.0)
    assert trace[-1] < 0.9 * trace[0]  # the first W_down step alone is a restricted least squares
    assert sol.stats["rejected_steps"] == 0
    assert sol.objective == pytest.approx(trace[-1], rel=1e-10)


def test_objective_is_the_physically_pruned_mlp_error():
    x, wg, wu, wd, kept = _block(3)
    f = GLURecovery.from_block(x, wg, wu, wd, kept, iterations=2)
    sol = prunekit.solve(f, backend="torch", dtype="float64")
    new_up, new_down = sol.extras["w_up"], sol.weights
    out = _sliced_mlp(x, wg, new_up, new_down, kept)
    dense = (silu(x @ wg.T) * (x @ wu.T)) @ wd.T
    assert sol.objective == pytest.approx(0.5 * float(((out - dense) ** 2).sum()), rel=1e-10)
    pruned = torch.ones(8, dtype=torch.bool)
    pruned[kept] = False
    assert float(new_down[:, pruned].abs().max()) == 0.0 and float(new_up[pruned].abs().max()) == 0.0
    assert sol.residuals["kept_mismatch"] == 0 and sol.residuals["pruned_max_abs"] == 0
    assert f.block_objective(wu, wd * 0 + wd) == pytest.approx(sol.extras["objective_trace"][0], rel=1e-10)


def test_v_step_is_restricted_least_squares():
    x, wg, wu, wd, kept = _block(4)
    a = silu(x @ wg[kept].T)
    u = wu[kept]
    y = (silu(x @ wg.T) * (x @ wu.T)) @ wd.T
    v = _v_step(a, x, u, y, 8)
    zp = a * (x @ u.T)
    ref = torch.linalg.lstsq(zp, y).solution.T
    assert torch.allclose(v, ref, atol=1e-8)


def test_u_step_is_exact_for_a_single_neuron():
    x, wg, wu, wd, _ = _block(5)
    kept = torch.tensor([2])
    a = silu(x @ wg[kept].T)
    y = (silu(x @ wg.T) * (x @ wu.T)) @ wd.T
    v = wd[:, kept]
    u = _u_step_lstsq(a, x, wu[kept], v, y, 8)
    err = (a * (x @ u.T)) @ v.T - y
    grad = ((err @ v) * a).T @ x
    assert float(grad.abs().max()) < 1e-9 * float(y.abs().max() * x.abs().max())


def test_inputs_unchanged_and_dtype_preserved():
    x, wg, wu, wd, kept = _block(6)
    copies = [t.clone() for t in (x, wg, wu, wd, kept)]
    wd32 = wd.float()
    f = GLURecovery.from_block(x, wg, wu, wd32, kept, iterations=1, method="gradient")
    sol = prunekit.solve(f, backend="torch")
    assert sol.weights.dtype == torch.float32
    for t, c in zip((x, wg, wu, wd, kept), copies):
        assert torch.equal(t, c)


@pytest.mark.parametrize(
    "change, err, match",
    [
        ({"kept": torch.tensor([0, 9])}, FormulationError, "distinct indices"),
        ({"kept": torch.tensor([1, 1])}, FormulationError, "distinct indices"),
        ({"kept": torch.tensor([], dtype=torch.long)}, FormulationError, "non-empty"),
        ({"iterations": 0}, FormulationError, "iterations"),
        ({"method": "adam"}, FormulationError, "method"),
        ({"w_up": torch.zeros(8, 4, dtype=torch.float64)}, ShapeError, "w_up"),
    ],
)
def test_clear_errors(change, err, match):
    x, wg, wu, wd, kept = _block(7)
    args = {"inputs": x, "w_gate": wg, "w_up": wu, "w_down": wd, "kept": kept, "iterations": 2, "method": "lstsq"}
    args.update(change)
    with pytest.raises(err, match=match):
        GLURecovery.from_block(args["inputs"], args["w_gate"], args["w_up"], args["w_down"], args["kept"],
                               iterations=args["iterations"], method=args["method"])


@pytest.mark.parametrize("method", ["lstsq", "gradient"])
def test_torch_matches_numpy_twin(method):
    f = GLURecovery.from_block(*_block(8), iterations=3, method=method)
    got = prunekit.solve(f, backend="torch", dtype="float64")
    ref = prunekit.solve(f, backend="scipy")
    assert np.allclose(got.extras["objective_trace"], ref.extras["objective_trace"], rtol=1e-8)
    assert torch.allclose(got.weights, ref.weights, atol=1e-7)
    assert torch.allclose(got.extras["w_up"], ref.extras["w_up"], atol=1e-7)


def test_runs_on_every_device(device):
    x, wg, wu, wd, kept = _block(9)
    on = GLURecovery.from_block(*(t.to(device) for t in (x, wg, wu, wd)), kept, iterations=2)
    sol = prunekit.solve(on, backend="torch", dtype="float64")
    ref = prunekit.solve(GLURecovery.from_block(x, wg, wu, wd, kept, iterations=2), backend="torch", dtype="float64")
    assert sol.weights.device.type == device.type
    assert np.allclose(sol.extras["objective_trace"], ref.extras["objective_trace"], rtol=1e-9)
