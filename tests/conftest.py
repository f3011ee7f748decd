"""Shared fixtures: offline hub, a private cache for generated data, the micro Swin, the example plugin."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest


REPO = Path(__file__).resolve().parent.parent
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no hub on test machines; fail fast instead of retrying


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("mtbench-cache")


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch, cache_dir):
    monkeypatch.setenv("MTBENCH_CACHE", str(cache_dir))
    monkeypatch.delenv("MTBENCH_DATA", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def load_example_plugin():
    """Import examples/task_proj.py (the README's plugin example) once; it registers `task_proj`."""
    name = "mtbench_example_task_proj"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, REPO / "examples" / "task_proj.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


@pytest.fixture(scope="session")
def example_plugin():
    return load_example_plugin()


def micro_backbone(img_size=(64, 64), weights="none", drop_path=0.0):
    from mtpeft_bench.model.backbone import create_backbone

    backbone, _ = create_backbone("swin_micro", img_size, weights, drop_path)
    return backbone


def run_cli(args, capsys):
    """Run ``mtbench ARGS`` in-process: (exit code, stdout, stderr)."""
    from mtpeft_bench.cli import main

    with pytest.raises(SystemExit) as info:
        main(list(args))
    out, err = capsys.readouterr()
    return info.value.code, out, err


@pytest.fixture
def one_thread():
    """One torch thread for the test: two threads on a loaded 2-core machine are many times slower
    than one (OpenMP spinning)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class PicklePayload:
    """A pickle that, if ever unpickled, records it (``executed``): loaders must never unpickle."""

    executed = False

    def __reduce__(self):
        return (_mark_payload_executed, ())


def _mark_payload_executed():
    PicklePayload.executed = True
    return {}
