"""Shared pytest configuration: hypothesis profiles and device fixtures.

Profiles (select with ``--hypothesis-profile NAME``; default ``dev``):

* ``dev``     -- fast local runs: 15 examples, no deadline;
* ``ci``      -- derandomized (reproducible on every CI run), 25 examples, no deadline, print_blob;
* ``nightly`` -- 300 examples, for the thorough run.
"""

from __future__ import annotations

import importlib.util
import os
from contextlib import contextmanager

import pytest
import torch
from hypothesis import HealthCheck, settings

_COMMON = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("dev", max_examples=15, **_COMMON)
settings.register_profile("ci", max_examples=25, derandomize=True, print_blob=True, **_COMMON)
settings.register_profile("nightly", max_examples=300, **_COMMON)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

HAS_CUDA = torch.cuda.is_available()


@contextmanager
def torch_threads(count: int):
    """``torch.set_num_threads(count)`` for the duration, the previous count restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture
def one_thread():
    """One torch thread for a test: tiny float64 problems (probes, factorizations) crawl with two threads on a
    loaded 2-core machine."""
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def one_thread_module():
    """:func:`one_thread` for a whole module (``pytestmark = pytest.mark.usefixtures("one_thread_module")``)."""
    with torch_threads(1):
        yield
HAS_CVXPY = importlib.util.find_spec("cvxpy") is not None
HAS_TRANSFORMERS = importlib.util.find_spec("transformers") is not None


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device (gpu marker)")
    skip_ref = pytest.mark.skip(reason="needs the [reference] extra: pip install 'prunekit[reference]'")
    skip_hf = pytest.mark.skip(reason="needs the [hf] extra: pip install 'prunekit[hf]'")
    for item in items:
        if "gpu" in item.keywords and not HAS_CUDA:
            item.add_marker(skip_gpu)
        if "reference" in item.keywords and not HAS_CVXPY:
            item.add_marker(skip_ref)
        if "hf" in item.keywords and not HAS_TRANSFORMERS:
            item.add_marker(skip_hf)


@pytest.fixture(params=["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def device(request) -> torch.device:
    """Every device the solvers must support: cpu always, cuda where present."""
    return torch.device(request.param)


@pytest.fixture
def shared_data_dir() -> str:
    """The shared WikiText-2 data folder (../shared/data beside the checkout, or $PRUNEKIT_DATA_DIR)."""
    from pathlib import Path

    env = os.environ.get("PRUNEKIT_DATA_DIR")
    path = Path(env) if env else Path(__file__).resolve().parents[1].parent / "shared" / "data"
    if not (path / "wikitext-2-raw" / "wiki.valid.raw").exists():
        pytest.fail(f"shared data not found at {path}; set PRUNEKIT_DATA_DIR to the folder holding wikitext-2-raw/")
    return str(path)
