"""``prunekit verify``: run in-process; JSON structure, every claim passes, exit codes, claim selection."""

from __future__ import annotations

import json

import numpy as np
import pytest

from prunekit.cli import main
from prunekit.errors import VerificationError
from prunekit.verification import claims as claims_mod
from prunekit.verification.claims import all_claims, register_claim
from prunekit.verification.runner import run_all, to_records


def _run(capsys, *argv):
    code = main(["verify", *argv])
    return code, capsys.readouterr().out


def test_verify_quick_json_reports_every_claim_as_pass(capsys):
    """Property: `prunekit verify --quick --json` lists every registered claim, each with status pass."""
    code, out = _run(capsys, "--quick", "--json")
    records = json.loads(out)
    claims = [r for r in records if "claim" in r]
    reports = [r for r in records if "report" in r]
    assert {r["claim"] for r in claims} == {c.id for c in all_claims()}
    for r in claims:
        assert {"claim", "statement", "status", "worst_error", "tolerance", "trials"} <= set(r)
        assert r["status"] == "pass", r
        assert r["worst_error"] is not None and r["worst_error"] <= r["tolerance"]
    for r in reports:
        assert r["status"] == "pass", r
    assert code == 0


def test_verify_claim_subset_and_table(capsys):
    """Property: --claims selects claims (case-insensitive) and the table shows id, status and tolerance."""
    ids = [c.id for c in all_claims()][:2]
    code, out = _run(capsys, "--claims", ",".join(i.lower() for i in ids), "--quick", "--seed", "3")
    assert code == 0
    lines = [l for l in out.splitlines() if l.split()[:1] and l.split()[0] in ids]
    assert len(lines) == len(ids) and all("pass" in l for l in lines)
    assert "report " not in out  # reports only run with the full claim set


def test_unknown_claim_is_a_usage_error(capsys):
    """Property: an unknown claim id exits with status 2 and lists the known ids."""
    code = main(["verify", "--claims", "C999"])
    err = capsys.readouterr().err
    assert code == 2 and "unknown claim" in err


@pytest.fixture
def failing_claims():
    @register_claim("C990", "A deliberately false statement (test only).", tolerance=1e-12)
    def check(rng: np.random.Generator) -> float:
        return 1.0

    @register_claim("C991", "A check that crashes (test only).", tolerance=1.0)
    def crash(rng: np.random.Generator) -> float:
        raise RuntimeError("boom")

    @register_claim("C992", "A qualitative failure (test only).", tolerance=1.0)
    def qualitative(rng: np.random.Generator) -> float:
        raise VerificationError("heuristic beat the optimum")

    yield
    for cid in ("C990", "C991", "C992"):
        claims_mod.unregister_claim(cid)


def test_failing_claims_give_nonzero_exit_and_messages(capsys, failing_claims):
    """Property: an error above tolerance, a crash and a VerificationError each fail, with exit code 1."""
    code, out = _run(capsys, "--claims", "C990,C991,C992", "--json")
    records = {r["claim"]: r for r in json.loads(out)}
    assert code == 1
    assert records["C990"]["status"] == "fail" and records["C990"]["worst_error"] == 1.0
    assert records["C991"]["status"] == "fail" and "boom" in records["C991"]["message"]
    assert records["C991"]["worst_error"] is None  # inf is written as null (strict JSON)
    assert "heuristic beat" in records["C992"]["message"]


def test_run_all_is_seeded_and_deterministic():
    """Property: the library function returns the same worst errors for the same seed."""
    ids = [c.id for c in all_claims()][:2]
    a = to_records(run_all(quick=True, claims=ids, seed=5))
    b = to_records(run_all(quick=True, claims=ids, seed=5))
    assert [r["worst_error"] for r in a] == [r["worst_error"] for r in b]
