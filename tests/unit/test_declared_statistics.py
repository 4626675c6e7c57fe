"""The runner collects only the statistics a formulation declares (``Formulation.statistics``; issue: speed at scale).

* full Gram for restoration methods, only diag G for Wanda / FLAP (same masks as with the full Gram), nothing and
  no calibration forward for magnitude;
* the accumulation dtype follows ``Formulation.statistics_dtype``;
* finiteness is checked once when statistics are frozen, and still catches every NaN/Inf input;
* diagonal statistics are refused by formulations that need the full Gram.
"""

from __future__ import annotations

import pytest
import torch

import prunekit
from prunekit.errors import FormulationError, NonFiniteError
from prunekit.formulations import GramAccumulator, LayerData, SparseGPTPruning, Unstructured, WandaPruning
from prunekit.models.methods import resolve_method
from prunekit.models.recipe import CalibrationSettings, Recipe

F64 = torch.float64


def recipe(**kw) -> Recipe:
    return Recipe(calibration=CalibrationSettings(nsamples=4, seqlen=24), **kw)


@pytest.fixture(scope="module")
def tokens():
    return torch.randint(2, 300, (4, 24), generator=torch.Generator().manual_seed(0))


def tiny(family="llama"):
    from _hf_tiny import tiny_model

    return tiny_model(family)


@pytest.mark.parametrize("name, basis", [("magnitude", "none"), ("wanda", "diagonal"), ("flap", "diagonal"),
                                         ("sparsegpt", "gram"), ("mrp", "gram"), ("fista", "gram")])
def test_statistics_basis_follows_the_declaration(name, basis):
    assert resolve_method(name).statistics_basis == basis


def test_statistics_dtype_is_float32_unless_declared():
    assert resolve_method("sparsegpt").statistics_dtype == torch.float32
    assert resolve_method("fista").statistics_dtype == F64


def test_diagonal_accumulator_equals_the_full_gram_diagonal():
    x = torch.randn(3, 50, 7, dtype=F64)
    full, diag = GramAccumulator(7), GramAccumulator(7, diagonal=True)
    for chunk in x:
        full.update(chunk)
        diag.update(chunk)
    assert diag.gram.shape == (7,)
    assert torch.allclose(diag.gram, full.gram.diagonal(), rtol=1e-12)
    assert torch.allclose(diag.mean, full.mean)
    layer = diag.layer_data(torch.randn(4, 7, dtype=F64))
    assert layer.is_diagonal and layer.gram_matrix().shape == (7, 7)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("diagonal", [False, True])
def test_finiteness_is_checked_once_and_catches_every_bad_input(bad, diagonal):
    acc = GramAccumulator(4, diagonal=diagonal)
    acc.update(torch.ones(5, 4, dtype=F64))
    x = torch.ones(5, 4, dtype=F64)
    x[3, 2] = bad
    acc.update(x)  # no per-batch scan
    acc.update(torch.ones(5, 4, dtype=F64))
    with pytest.raises(NonFiniteError, match="NaN/Inf.*Fix:"):
        acc.layer_data(torch.ones(2, 4, dtype=F64))


def test_float32_overflow_of_the_sums_is_caught():
    acc = GramAccumulator(3, dtype=torch.float32, diagonal=True)
    acc.update(torch.full((4, 3), 3e19))  # finite inputs, squares overflow float32
    with pytest.raises(NonFiniteError, match="overflow"):
        acc.check_finite()


def test_wanda_on_diagonal_statistics_equals_wanda_on_the_full_gram():
    g = torch.Generator().manual_seed(3)
    w, x = torch.randn(6, 16, generator=g, dtype=F64), torch.randn(200, 16, generator=g, dtype=F64)
    full = LayerData.from_inputs(w, x)
    acc = GramAccumulator(16, diagonal=True)
    acc.update(x)
    diag = acc.layer_data(w)
    a = prunekit.solve(WandaPruning(full, Unstructured(0.5)))
    b = prunekit.solve(WandaPruning(diag, Unstructured(0.5)))
    assert torch.equal(a.mask, b.mask) and torch.equal(a.weights, b.weights)
    # the diagonal objective is that of G := diag(g): 1/2 sum_ij (W - W_hat)_ij^2 g_j
    d = (w - b.weights)
    assert b.objective == pytest.approx(float(0.5 * (d * d * x.square().sum(0)).sum()), rel=1e-10)


def test_formulations_that_need_the_full_gram_refuse_diagonal_statistics():
    acc = GramAccumulator(8, diagonal=True)
    acc.update(torch.randn(30, 8, dtype=F64))
    with pytest.raises(FormulationError, match="full Gram.*Fix:"):
        SparseGPTPruning(acc.layer_data(torch.randn(3, 8, dtype=F64)), Unstructured(0.5))


def test_magnitude_runs_no_calibration_forward(tokens):
    model = tiny()
    calls = []
    model.model.embed_tokens.register_forward_hook(lambda *a: calls.append(1))
    plan = prunekit.plan(model, recipe(method="magnitude", structure="unstructured", sparsity=0.5), tokens,
                         progress=False)
    assert calls == []  # the embedding never ran: no capture, no propagation
    assert plan.records and all(r.statistics == "none" for r in plan.records)
    for r in plan.records:  # objective = 1/2 ||W_hat - W||_F^2
        w = model.get_submodule(r.module).weight.detach().double()
        w_hat = plan.module_edits[r.module].weight.double()
        assert r.objective == pytest.approx(float(0.5 * ((w - w_hat) ** 2).sum()), rel=1e-5)


def test_wanda_pipeline_collects_the_diagonal_and_matches_full_gram_masks(tokens, monkeypatch):
    model = tiny()
    plan = prunekit.plan(model, recipe(method="wanda", structure="unstructured", sparsity=0.5), tokens,
                         progress=False)
    assert all(r.statistics == "diagonal" for r in plan.records)
    shapes = []
    original = GramAccumulator.update

    def spy(self, inputs, inputs_star=None):
        original(self, inputs, inputs_star)
        shapes.append(tuple(self.gram.shape))

    monkeypatch.setattr(GramAccumulator, "update", spy)
    from prunekit.models import methods

    monkeypatch.setattr(methods.Method, "statistics_basis", property(lambda self: "gram"))
    forced = prunekit.plan(model, recipe(method="wanda", structure="unstructured", sparsity=0.5), tokens,
                           progress=False)
    assert shapes and all(len(s) == 2 for s in shapes)  # the forced run accumulated full Grams
    for name, edit in plan.module_edits.items():
        assert torch.equal(edit.weight != 0, forced.module_edits[name].weight != 0), name
