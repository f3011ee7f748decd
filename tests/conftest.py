"""Shared fixtures: offline hub, a private cache for generated data, the example plugin, one torch thread,
seeded edge matching.

Plain helper functions and classes live in ``helpers/`` (imported as ``from helpers import ...``),
not here: test modules never import ``conftest``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from helpers import load_example_plugin
from helpers.edges import seed_bsds_matching


os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no hub on test machines; fail fast instead of retrying


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("mtbench-cache")


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch, cache_dir):
    monkeypatch.setenv("MTBENCH_CACHE", str(cache_dir))
    monkeypatch.delenv("MTBENCH_DATA", raising=False)
    monkeypatch.delenv("MTBENCH_PEAK_TFLOPS", raising=False)  # a user's peak would give CPU runs an MFU
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def example_plugin():
    return load_example_plugin()


@pytest.fixture
def one_thread():
    """One torch thread for the test: two threads on a loaded 2-core machine are many times slower
    than one (OpenMP spinning)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def seeded_bsds_matching(monkeypatch):
    """odsF matching in this process with fixed outlier draws (see helpers/edges.py)."""
    monkeypatch.delenv("MTBENCH_EDGE_WORKERS", raising=False)
    seed_bsds_matching(1)


@pytest.fixture
def lowrank_method():
    """Register ``lowrank_fc2`` (helpers/lowrank.py) for one test only (and remove only it afterwards:
    plugins imported during the test stay registered, as their modules stay imported)."""
    from helpers.lowrank import LowRankFc2
    from mtpeft_bench.registry import method_registry

    method_registry.register("lowrank_fc2")(LowRankFc2)
    yield LowRankFc2
    method_registry._classes.pop("lowrank_fc2", None)
    method_registry._runtime.pop("lowrank_fc2", None)
