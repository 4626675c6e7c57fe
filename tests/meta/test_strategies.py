"""Meta-tests of ``prunekit.verification.strategies``: the strategies produce valid and varied inputs.

Validity is checked per example (hypothesis ``@given``); variety (conditioning range actually reached,
ties occurring, every spec kind drawn) is checked over a fixed sample of draws with ``find``-style loops,
because a narrow strategy (array-api-tests' identity-only "PD matrices") passes every per-example test.
"""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from prunekit.formulations import NM, Channels, LayerData, Unstructured
from prunekit.verification import strategies as pst


def _sample(strategy, count=60, seed=0):
    """``count`` draws of ``strategy`` (deterministic), outside ``@given`` for distribution checks."""
    out = []

    @settings(max_examples=count, derandomize=True, database=None, deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(strategy)
    def collect(x):
        out.append(x)

    collect()
    return out


@given(pst.pd_grams())
def test_pd_grams_are_symmetric_psd(g):
    """Property: every drawn Gram is symmetric PSD and accepted by LayerData."""
    assert g.dtype == torch.float64
    assert torch.equal(g, g.T)
    lam_min = float(torch.linalg.eigvalsh(g).min())
    assert lam_min >= -1e-9 * float(g.diagonal().mean())
    LayerData(torch.zeros(2, g.shape[0], dtype=torch.float64), g, num_tokens=4 * g.shape[0])


def test_pd_grams_reach_every_conditioning():
    """Property: draws reach cond(G) >= 1e7 (ill), singular G (rank-deficient) and well-conditioned G."""
    grams = _sample(pst.pd_grams(n=st.integers(6, 10)), count=80)
    conds = [float(np.linalg.cond(g.numpy())) for g in grams]
    ranks = [int(np.linalg.matrix_rank(g.numpy(), tol=1e-9 * float(g.diagonal().max()))) for g in grams]
    assert max(c for c in conds if np.isfinite(c)) >= 1e7, sorted(conds)[-3:]
    assert min(conds) < 1e3
    assert any(r < g.shape[0] for r, g in zip(ranks, grams)), "no rank-deficient G drawn"
    offdiag = [float((g - torch.diag(g.diagonal())).abs().max() / g.diagonal().max()) for g in grams]
    assert max(offdiag) > 0.5, "no strongly correlated G drawn"


@pytest.mark.parametrize("kind", pst.CONDITIONINGS)
def test_pd_grams_honours_requested_conditioning(kind):
    """Property: asking for one conditioning yields it (ill >= 1e7, rank-deficient singular, well < 1e3)."""
    grams = _sample(pst.pd_grams(n=8, conditioning=kind), count=10)
    conds = [float(np.linalg.cond(g.numpy())) for g in grams]
    if kind == "ill":
        assert min(conds) >= 1e7
    elif kind == "rank_deficient":
        assert all(np.linalg.matrix_rank(g.numpy(), tol=1e-9 * float(g.diagonal().max())) == 4 for g in grams)
    elif kind == "well":
        assert max(conds) < 1e3


@given(pst.toy_layers())
def test_toy_layers_are_valid_float64(layer):
    """Property: toy layers are float64 CPU LayerData with consistent statistics (variance >= 0)."""
    m, n = layer.shape
    assert layer.weight.dtype == torch.float64 and layer.gram.dtype == torch.float64
    assert 1 <= m <= 8 and 2 <= n <= 12
    assert layer.input_mean is not None
    assert bool((layer.gram.diagonal() / layer.num_tokens - layer.input_mean**2 >= -1e-9).all())
    assert layer.dense_energy() >= 0.0


def test_toy_layers_vary_bias_and_shape():
    """Property: bias presence, widths and mean shifts all vary across draws."""
    layers = _sample(pst.toy_layers(), count=40)
    assert {l.bias is None for l in layers} == {True, False}
    assert len({l.shape for l in layers}) > 5
    assert max(float(l.input_mean.abs().max()) for l in layers) > 0.5


@given(st.integers(1, 16).flatmap(lambda n: st.tuples(st.just(n), pst.sparsity_specs(n))))
def test_sparsity_specs_fit_the_width(n_spec):
    """Property: every drawn spec validates for a layer with n inputs and projects to a feasible mask."""
    n, spec = n_spec
    spec.validate_for((3, n))
    mask = spec.project(torch.randn(3, n, dtype=torch.float64))
    assert spec.violations(mask) == 0
    assert int((~mask).sum()) == spec.num_pruned((3, n))


def test_sparsity_specs_cover_every_kind():
    """Property: unstructured (both scopes), N:M and grouped channel specs are all drawn."""
    specs = _sample(pst.sparsity_specs(12), count=80)
    assert any(isinstance(s, Unstructured) and s.scope == "row" for s in specs)
    assert any(isinstance(s, Unstructured) and s.scope == "layer" for s in specs)
    assert {s.m for s in specs if isinstance(s, NM)} >= {2, 4}
    assert any(isinstance(s, Channels) and s.group_size > 1 for s in specs)
    assert any(isinstance(s, Channels) and s.count is not None for s in specs)


def test_sparsity_specs_for_prime_width_avoid_impossible_nm():
    """Property: for n = 7 the only N:M drawn is M = 7, for n = 1 none at all."""
    specs = _sample(pst.sparsity_specs(7, kinds=("nm",)), count=10)
    assert all(isinstance(s, NM) and s.m == 7 for s in specs)
    with pytest.raises(ValueError, match="no spec"):
        _sample(pst.sparsity_specs(1, kinds=("nm",)), count=1)


@given(st.data())
def test_keep_masks_are_feasible(data):
    """Property: keep_masks draws feasible masks for any drawn spec."""
    n = data.draw(st.integers(2, 12))
    spec = data.draw(pst.sparsity_specs(n))
    mask = data.draw(pst.keep_masks(spec, (4, n)))
    assert mask.dtype == torch.bool and spec.violations(mask) == 0


def test_tied_scores_and_layers_have_ties():
    """Property: tied strategies really produce ties (repeated scores / equal input norms)."""
    scores = _sample(pst.tied_scores((4, 8), levels=3), count=20)
    assert all(len(torch.unique(s[0])) < 8 for s in scores)
    layers = _sample(pst.tied_layers(), count=20)
    for layer in layers:
        norms = layer.input_norms()
        assert torch.allclose(norms, norms[0].expand_as(norms))
    assert any(len(torch.unique(l.weight.abs())) < l.weight.numel() for l in layers)


@given(pst.layers_and_specs())
def test_layers_and_specs_fit(layer_spec):
    """Property: the paired spec always fits the paired layer."""
    layer, spec = layer_spec
    spec.validate_for(layer.shape)


# ------------------------------------------------------------------------------------------ added strategies
@given(pst.calibrated_layers(conditionings=pst.ALL_CONDITIONINGS, error_correction=None))
def test_calibrated_layers_match_their_inputs(cal):
    """Property: the layer's G (and G*, C) are the statistics of the returned inputs X (and X*)."""
    x = torch.from_numpy(cal.inputs)
    assert cal.inputs.shape == (cal.layer.num_tokens, cal.layer.in_features)
    torch.testing.assert_close(cal.layer.gram, x.T @ x, rtol=1e-12, atol=1e-12 * float(cal.layer.gram.abs().max()))
    if cal.inputs_star is None:
        assert cal.layer.gram_star is None
    else:
        xs = torch.from_numpy(cal.inputs_star)
        torch.testing.assert_close(cal.layer.gram_star, xs.T @ xs, rtol=1e-12, atol=1e-12 * float(xs.abs().max() ** 2))
        cross = cal.layer.weight @ x.T @ xs
        torch.testing.assert_close(cal.layer.cross, cross, rtol=1e-10, atol=1e-10 * float(cross.abs().max()))


def test_orthogonal_conditioning_gives_diagonal_gram():
    """Property: "orthogonal" inputs (zero shift) give G diagonal up to rounding, with unequal diagonal entries."""
    layers = _sample(pst.toy_layers(n=st.integers(3, 12), conditionings=("orthogonal",), mean_shift=0.0), count=10)
    for layer in layers:
        g = layer.gram
        off = (g - torch.diag(g.diagonal())).abs().max() / g.diagonal().max()
        assert float(off) < 1e-12
        assert float(g.diagonal().max() / g.diagonal().min()) > 1.0 + 1e-6
    with pytest.raises(ValueError, match="orthogonal"):
        pst.inputs_array(np.random.default_rng(0), 3, 12, "bogus")


@given(pst.gaussian_arrays((st.integers(1, 4), 6), ties=None))
def test_gaussian_arrays_have_the_drawn_shape(a):
    """Property: float64 arrays of the requested (partly drawn) shape with finite entries."""
    assert a.dtype == np.float64 and a.shape[1] == 6 and 1 <= a.shape[0] <= 4 and np.isfinite(a).all()


def test_gaussian_arrays_reach_ties():
    """Property: with ties=None some draws repeat values (and hit 0), others are all distinct."""
    arrays = _sample(pst.gaussian_arrays(12, ties=None), count=40)
    assert any(len(np.unique(a)) < a.size for a in arrays)
    assert any((a == 0).any() for a in arrays)
    assert any(len(np.unique(a)) == a.size for a in arrays)


@given(st.integers(1, 12).flatmap(lambda n: st.tuples(st.just(n), pst.index_subsets(n, min(2, n), n - 1 if n > 2 else n))))
def test_index_subsets_are_sorted_sets_of_the_right_size(n_idx):
    """Property: sorted, unique, in range, and of a size within the bounds."""
    n, idx = n_idx
    assert idx.dtype == np.int64 and np.all(np.diff(idx) > 0) and np.all((0 <= idx) & (idx < n))
    assert min(2, n) <= idx.size <= (n - 1 if n > 2 else n)


@given(st.integers(1, 10).flatmap(lambda n: st.tuples(st.just(n), st.integers(0, n)).flatmap(
    lambda nk: st.tuples(st.just(nk[1]), pst.capped_simplex_points(*nk)))))
def test_capped_simplex_points_are_feasible(k_s):
    """Property: s in [0, 1]^n, 1^T s = k, |supp(s)| >= k, and s > 0 on its support."""
    k, s = k_s
    assert s.dtype == torch.float64
    assert float(s.min()) >= 0.0 and float(s.max()) <= 1.0 + 1e-12
    assert abs(float(s.sum()) - k) <= 1e-9
    assert int((s > 0).sum()) >= k


def test_capped_simplex_points_reach_fractional_points():
    """Property: fractional relaxed points (strictly between 0 and 1) are drawn, not only indicators."""
    points = _sample(pst.capped_simplex_points(6, 2), count=30)
    assert any(bool(((s > 1e-6) & (s < 1 - 1e-6)).any()) for s in points)


@settings(max_examples=10)
@given(pst.lasso_problems())
def test_lasso_problems_are_pure_lasso(f):
    """Property: pure-lasso L1Relaxation (no adaptation, no projection) with 0.05 <= lam / lambda_max <= 0.6."""
    assert not f.adaptive and not f.project and f.warm_start == "dense"
    assert 0.05 - 1e-12 <= f.lam / f.lambda_max() <= 0.6 + 1e-12


def test_lasso_problems_vary_error_correction():
    """Property: both plain and error-corrected (G*, C present) problems are drawn."""
    problems = _sample(pst.lasso_problems(iterations=1), count=20)
    assert {f.layer.gram_star is None for f in problems} == {True, False}


@given(pst.allocation_problems(num_layers=st.integers(1, 10), sizes=st.integers(1, 80), mean_sparsity=st.floats(0.0, 0.95)))
def test_allocation_problems_are_feasible_by_construction(f):
    """Property: every drawn allocation is valid and its caps cover the budget (no filtering needed)."""
    assert int(f.caps().sum()) >= f.budget()
    assert f.mean_sparsity <= f.s_max <= 1.0


def test_allocation_problems_reach_tied_energies():
    """Property: some drawn allocations have equal energies (the degenerate argmin of the T -> 0 limit)."""
    problems = _sample(pst.allocation_problems(), count=40)
    assert any(len(set(f.energies)) < len(f.energies) for f in problems)


# ------------------------------------------------------------------------------------------ theorem tests
THEOREMS = Path(__file__).resolve().parents[1] / "theorems"
_OPAQUE_BOUND = 2**16  # an integer range this wide drawn into a test is a seed, not a structural choice


def _const(node):
    """Value of a constant integer expression (e.g. ``2**32 - 1``), or None."""
    if isinstance(node, ast.Constant) and isinstance(node.value, int):
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        v = _const(node.operand)
        return None if v is None else -v
    if isinstance(node, ast.BinOp):
        a, b = _const(node.left), _const(node.right)
        if a is None or b is None:
            return None
        ops = {ast.Pow: lambda: a**b, ast.Sub: lambda: a - b, ast.Add: lambda: a + b, ast.Mult: lambda: a * b}
        return ops[type(node.op)]() if type(node.op) in ops else None
    return None


def _is_wide_integers(node) -> bool:
    """``st.integers(lo, hi)`` / ``integers(...)`` spanning >= 2**16 values, anywhere inside ``node``."""
    for sub in ast.walk(node):
        if isinstance(sub, ast.Call):
            name = sub.func.attr if isinstance(sub.func, ast.Attribute) else getattr(sub.func, "id", "")
            if name == "integers":
                bounds = [_const(a) for a in sub.args] + [_const(k.value) for k in sub.keywords]
                if len(bounds) < 2 or None in bounds[:2] or bounds[1] - bounds[0] >= _OPAQUE_BOUND:
                    return True
    return False


def opaque_seed_draws(source: str) -> list[str]:
    """Every ``@given`` in ``source`` that draws an opaque seed: a ``seed``/``rng`` argument, a wide
    ``st.integers`` range, or a drawn value fed to ``default_rng``/``RandomState``/``manual_seed``."""
    problems = []
    for fn in ast.walk(ast.parse(source)):
        if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        givens = [d for d in fn.decorator_list if isinstance(d, ast.Call)
                  and getattr(d.func, "id", getattr(d.func, "attr", "")) == "given"]
        if not givens:
            continue
        params = {a.arg for a in fn.args.args}
        for dec in givens:
            for kw in dec.keywords:
                if kw.arg and ("seed" in kw.arg.lower() or "rng" in kw.arg.lower()):
                    problems.append(f"{fn.name}: draws {kw.arg!r}")
            for arg in list(dec.args) + [kw.value for kw in dec.keywords]:
                if _is_wide_integers(arg):
                    problems.append(f"{fn.name}: draws an integer range of >= 2**16 values (a seed)")
        for call in ast.walk(fn):
            if isinstance(call, ast.Call):
                name = call.func.attr if isinstance(call.func, ast.Attribute) else getattr(call.func, "id", "")
                if name in ("default_rng", "RandomState", "manual_seed", "Generator") and any(
                        isinstance(n, ast.Name) and n.id in params for a in call.args for n in ast.walk(a)):
                    problems.append(f"{fn.name}: seeds {name} with a drawn value")
    return problems


def test_opaque_seed_detector_can_fail():
    """Property: the detector flags seeds drawn by keyword, by a wide integer range and fed to a generator."""
    bad = (
        "@given(seed=st.integers(0, 2**32 - 1))\ndef test_a(seed):\n    pass\n"
        "@given(st.integers(0, 10**6))\ndef test_b(s):\n    pass\n"
        "@given(n=st.integers(0, 9))\ndef test_c(n):\n    rng = np.random.default_rng(n)\n"
    )
    assert {p.split(":")[0] for p in opaque_seed_draws(bad)} == {"test_a", "test_b", "test_c"}
    good = "@given(pst.toy_layers(), st.integers(1, 4))\ndef test_d(layer, k):\n    rng = np.random.default_rng(0)\n"
    assert opaque_seed_draws(good) == []


def test_theorem_tests_draw_no_opaque_seed():
    """Property: no property test in tests/theorems draws an opaque integer seed; instances come from
    ``prunekit.verification.strategies`` (so hypothesis can shrink them and aim at ties and ill-conditioning)."""
    modules = sorted(THEOREMS.glob("test_c*.py"))
    assert len(modules) >= 21
    problems = [f"{m.name}: {p}" for m in modules for p in opaque_seed_draws(m.read_text())]
    assert not problems, "\n".join(problems)


def test_theorem_property_tests_use_the_public_strategies():
    """Property: every theorem module with a claim-instance property test imports the public strategies."""
    for module in sorted(THEOREMS.glob("test_c*.py")):
        source = module.read_text()
        if "@given(" in source:
            assert "from prunekit.verification import strategies as pst" in source, module.name
