"""Every example script runs to completion (exit code 0) as a subprocess.

Collected: ``examples/0*.py``.  An example that needs the network (e.g. downloading a model) declares it
with a line ``# needs: network`` and is left out of this offline test (listed in the module's
``NETWORK_EXAMPLES`` for visibility); every other example must pass.  Examples that import transformers
carry the ``hf`` marker (skipped by ``tests/conftest.py`` only where the [hf] extra is not installed).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES_DIR = Path(__file__).resolve().parents[2] / "examples"
ALL_EXAMPLES = sorted(EXAMPLES_DIR.glob("0*.py"))
NETWORK_EXAMPLES = [p for p in ALL_EXAMPLES if "# needs: network" in p.read_text()]
OFFLINE_EXAMPLES = [p for p in ALL_EXAMPLES if p not in NETWORK_EXAMPLES]


def test_examples_exist():
    """Property: the two verification examples ship with the package."""
    names = {p.name for p in ALL_EXAMPLES}
    assert {"01_toy_layer_verify.py", "02_custom_formulation.py"} <= names


def _param(path: Path):
    """Examples importing transformers need the [hf] extra (``hf`` marker: skipped where it is missing)."""
    text = path.read_text()
    needs_hf = "from transformers" in text or "import transformers" in text
    return pytest.param(path, id=path.name, marks=[pytest.mark.hf] if needs_hf else [])


@pytest.mark.parametrize("script", [_param(p) for p in OFFLINE_EXAMPLES])
def test_example_runs(script):
    """Property: the example exits with status 0 within 5 minutes and stays under 150 lines."""
    assert len(script.read_text().splitlines()) < 150, f"{script.name} is too long for an example"
    env = {**os.environ, "PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "2"}
    proc = subprocess.run([sys.executable, str(script)], cwd=EXAMPLES_DIR.parent, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{script.name} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
