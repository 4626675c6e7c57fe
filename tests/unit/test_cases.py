"""Canonical cases (design principle 9): analytic optima reproduced by every backend that states them."""

from __future__ import annotations

import pytest
import torch

from prunekit.errors import NoSolverError, VerificationError
from prunekit.solvers.registry import backends_for
from prunekit.verification import cases

PAIRS = [(c.name, kind) for c in cases.all_cases() for kind in c.kinds]


def _backends(name, kind):
    f, _ = cases.get_case(name).build(kind=kind)
    return backends_for(type(f))


@pytest.mark.parametrize("name, kind", PAIRS)
def test_case_expectations_are_self_consistent(name, kind):
    """Property: the analytic weights are zero off the analytic mask, feasible, and give the analytic f*."""
    f, exp = cases.get_case(name).build(kind=kind, seed=1)
    w = exp["weights"]
    assert torch.equal(w != 0, exp["mask"] & (w != 0)) and not bool(w[~exp["mask"]].any())
    spec = f.sparsity_spec
    if spec is not None:
        assert spec.violations(exp["mask"]) == 0
    assert f.objective(w, exp.get("bias")) == pytest.approx(exp["objective"], rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("name, kind", PAIRS)
@pytest.mark.parametrize("seed", [0, 1])
def test_every_registered_backend_reproduces_the_case(name, kind, seed):
    """Property: each backend registered for the case's formulation reaches f*, the mask and x*."""
    backends = _backends(name, kind)
    assert backends, f"no solver registered for case {name} [{kind}]"
    checked = 0
    for backend in backends:
        options = {"dtype": "float64"} if backend == "torch" else {}
        try:
            err = cases.check_case(name, kind=kind, backend=backend, seed=seed, **options)
        except NoSolverError as exc:  # declined: only acceptable for an unavailable optional backend
            assert "install" in str(exc), exc
            continue
        assert err <= 1e-8
        checked += 1
    assert checked >= 1


def test_check_case_detects_a_wrong_expectation(monkeypatch):
    """Property: check_case raises when the solution disagrees with the expectation."""
    original = cases.CASES["nm_identity"]

    def wrong(kind="mrp", seed=0):
        f, exp = original.build(kind=kind, seed=seed)
        return f, {**exp, "objective": exp["objective"] * 1.5 + 1.0}

    monkeypatch.setitem(cases.CASES, "nm_identity", cases.Case("nm_identity", wrong, original.kinds))
    with pytest.raises(VerificationError, match="objective"):
        cases.check_case("nm_identity", kind="restoration", backend="torch", dtype="float64")


def test_unknown_case_and_kind():
    with pytest.raises(KeyError, match="known"):
        cases.get_case("nope")
    with pytest.raises(ValueError, match="kind"):
        cases.diagonal_g_mrp(kind="flap")
