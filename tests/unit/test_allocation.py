"""Unit tests of LayerAllocation and its torch / scipy solvers."""

import numpy as np
import pytest
import torch

from prunekit import solve
from prunekit.errors import FormulationError, ShapeError
from prunekit.formulations.allocation import LayerAllocation


@pytest.mark.parametrize("seed", range(10))
def test_torch_matches_reference_twin(seed):
    f = LayerAllocation.example(np.random.default_rng(seed))
    a, b = solve(f, backend="torch"), solve(f, backend="scipy", dtype="float64")
    assert a.residuals["mask_violations"] == 0 and b.residuals["mask_violations"] == 0
    assert abs(a.residuals["objective"] - b.residuals["objective"]) < 1e-6
    if f.rule != "global_threshold":
        assert torch.allclose(a.extras["continuous"], b.extras["continuous"], atol=1e-5)
    assert int((a.extras["counts"] - b.extras["counts"]).abs().max()) <= 1


@pytest.mark.parametrize("rule", ["softmax", "uniform", "global_threshold"])
def test_budget_exact_with_caps(rule):
    sizes = (7, 33, 128, 5, 64)
    rng = np.random.default_rng(0)
    scores = tuple(torch.from_numpy(rng.gamma(1.5, size=n)) for n in sizes)
    f = LayerAllocation(sizes=sizes, mean_sparsity=0.37, energies=(3.0, -1.0, 0.2, -4.0, 1.0), rule=rule,
                        temperature=0.3, s_max=0.6, scores=scores)
    sol = solve(f, backend="torch")
    counts = sol.extras["counts"]
    assert int(counts.sum()) == round(0.37 * sum(sizes))
    assert bool((counts <= f.caps()).all())
    assert torch.allclose(sol.weights, counts.double() / torch.tensor(sizes, dtype=torch.float64))


def test_uniform_equal_sizes_is_uniform():
    f = LayerAllocation(sizes=(40,) * 5, mean_sparsity=0.25, rule="uniform")
    assert solve(f, backend="torch").extras["counts"].tolist() == [10] * 5


def test_global_threshold_removes_lowest_normalized_scores():
    scores = (torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.tensor([10.0, 30.0, 20.0, 40.0]))
    f = LayerAllocation(sizes=(4, 4), mean_sparsity=0.5, rule="global_threshold", scores=scores, s_max=1.0)
    sol = solve(f, backend="torch")
    # normalized by the layer mean: layer 0 -> [.4 .8 1.2 1.6], layer 1 -> [.4 1.2 .8 1.6]; ties to layer 0
    assert [r.tolist() for r in sol.extras["pruned_units"]] == [[0, 1], [0, 2]]
    assert sol.extras["threshold"] == pytest.approx(0.8)


def test_inputs_unchanged():
    e = torch.tensor([0.5, -0.5, 1.0], dtype=torch.float64)
    e0 = e.clone()
    f = LayerAllocation(sizes=(10, 20, 30), mean_sparsity=0.5, energies=e, temperature=0.5)
    solve(f, backend="torch")
    solve(f, backend="scipy")
    assert torch.equal(e, e0)


@pytest.mark.parametrize("kwargs,err,match", [
    (dict(temperature=0.0), FormulationError, "temperature"),
    (dict(temperature=-1.0), FormulationError, "temperature"),
    (dict(s_max=0.3), FormulationError, "s_max"),
    (dict(energies=(1.0, 2.0)), ShapeError, "one per layer"),
    (dict(rule="global_threshold"), FormulationError, "scores"),
    (dict(rule="global_threshold", scores=(torch.ones(10), torch.ones(20))), ShapeError, "layers"),
    (dict(rule="global_threshold", scores=(torch.ones(10), torch.ones(20), torch.ones(31))), ShapeError, "units"),
    (dict(rule="magic"), FormulationError, "rule"),
    (dict(sizes=(10, 0, 30)), FormulationError, "positive"),
    (dict(mean_sparsity=1.0), FormulationError, "mean_sparsity"),
])
def test_clear_errors(kwargs, err, match):
    base = dict(sizes=(10, 20, 30), mean_sparsity=0.5, energies=(0.0, 1.0, 2.0), temperature=1.0, s_max=0.9)
    with pytest.raises(err, match=match):
        LayerAllocation(**{**base, **kwargs})


def test_caps_below_budget_after_flooring():
    with pytest.raises(FormulationError, match="caps"):
        LayerAllocation(sizes=(3, 3), mean_sparsity=0.5, energies=(0.0, 1.0), s_max=0.5)
