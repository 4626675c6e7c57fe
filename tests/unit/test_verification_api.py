"""The public verification API: curated names, and hypothesis never imported eagerly."""

from __future__ import annotations

import subprocess
import sys

import prunekit.verification as pv


def test_importing_verification_does_not_import_hypothesis_or_cvxpy():
    """Property: `import prunekit.verification` works without the [test] and [reference] extras loaded."""
    code = ("import sys, prunekit.verification as v; v.for_dtype('float32'); "
            "print('hypothesis' in sys.modules, 'cvxpy' in sys.modules, 'pytest' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False", "False"]


def test_public_names_resolve():
    """Property: every name in __all__ resolves (lazy ones included)."""
    for name in pv.__all__:
        assert getattr(pv, name) is not None, name
    from prunekit.verification import strategies

    assert callable(strategies.toy_layers)
