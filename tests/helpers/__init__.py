"""Plain helpers shared by the tests; pytest fixtures and hooks stay in ``conftest.py``.

Modules:
    ``helpers`` (this file): the CLI run in-process, the micro Swin, the README's example plugin,
        a pickle that records being unpickled.
    ``helpers.baseline``: Swin-T facts and a cached Swin-T for the baseline-method tests.
    ``helpers.datasets``: real-data miniatures of every registered dataset (ATRC packaging included).
    ``helpers.edges``: fixed outlier draws for the BSDS edge matcher behind odsF.
    ``helpers.lowrank``: ``lowrank_fc2``, a test method whose encoder merges for inference.

The tests import them as ``from helpers import ...``: pytest puts ``tests/`` on ``sys.path``
(rootdir-relative, no ``__init__.py`` in ``tests/``), as for every test module.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest


REPO = Path(__file__).resolve().parents[2]


def load_example_plugin():
    """Import examples/task_proj.py (the README's plugin example) once; it registers `task_proj`."""
    name = "mtbench_example_task_proj"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, REPO / "examples" / "task_proj.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


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


class PicklePayload:
    """A pickle that, if ever unpickled, records it (``executed``): loaders must never unpickle."""

    executed = False

    def __reduce__(self):
        return (mark_payload_executed, ())


def error_lines(err: str) -> list[str]:
    """The non-empty lines a command wrote to standard error, after checking there is no traceback."""
    assert "Traceback" not in err, err
    return [line for line in err.splitlines() if line.strip()]


def one_error_line(err: str) -> str:
    """The single line a command answered bad input with (fails if there are more, or a traceback)."""
    lines = error_lines(err)
    assert len(lines) == 1, err
    return lines[0]


def mark_payload_executed():
    """What unpickling a :class:`PicklePayload` calls (public: pickle looks it up by module and name)."""
    PicklePayload.executed = True
    return {}
