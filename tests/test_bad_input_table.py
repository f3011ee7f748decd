"""The bad-input table: every command answers a mistake with one line, a non-zero exit and nothing
left behind (docs/troubleshooting.md lists the same cases).

Each case runs ``mtbench`` in-process from an empty working folder (the default ``results/`` and
``runs/`` folders would appear there) and checks that
- the exit status is non-zero (2 for bad input),
- standard error holds exactly one line, an ``error:`` line, with no traceback,
- the working folder and the data cache are exactly as they were.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from helpers import one_error_line, run_cli

MISSING = "/nonexistent/mtbench-test"
TINY = ["--preset", "smoke", "--tasks", "depth", "--set", "data.num_train=8", "--set", "data.num_val=2",
        "--set", "batch_size=4", "--epochs", "1", "--no-progress"]


def _truncated_results(folder: Path) -> None:
    target = folder / "results" / "synth" / "full"
    target.mkdir(parents=True)
    (target / "run.json").write_text('{"schema_version": 1, "run_id": "x", "met')


def _wrong_metrics_type(folder: Path) -> None:
    target = folder / "results" / "synth" / "full"
    target.mkdir(parents=True)
    record = {"schema_version": 1, "run_id": "x", "status": "completed", "method": "full", "dataset": "synth",
              "tasks": ["depth"], "seed": 0, "metrics": ["not", "a", "mapping"]}
    (target / "run.json").write_text(json.dumps(record))


# (case id, arguments, setup of the working folder or None)
CASES = [
    # run: names
    ("run-unknown-method", ["run", "--method", "ditsk", *TINY], None),
    ("run-unknown-dataset", ["run", "--method", "full", "--dataset", "synthh", *TINY], None),
    ("run-unknown-task", ["run", "--method", "full", "--preset", "smoke", "--tasks", "dept"], None),
    ("run-empty-tasks", ["run", "--method", "full", "--preset", "smoke", "--tasks", ""], None),
    ("run-unknown-preset", ["run", "--method", "full", "--preset", "fast"], None),
    ("run-missing-method", ["run", "--dataset", "synth"], None),
    # run: values
    ("run-malformed-set", ["run", "--method", "full", *TINY, "--set", "epochs"], None),
    ("run-unknown-setting", ["run", "--method", "full", *TINY, "--set", "epoks=3"], None),
    ("run-negative-loss-weight", ["run", "--method", "full", *TINY, "--set", "loss_weights.depth=-1"], None),
    ("run-nan-loss-weight", ["run", "--method", "full", *TINY, "--set", "loss_weights.depth=nan"], None),
    ("run-loss-weight-of-untrained-task", ["run", "--method", "full", *TINY, "--set", "loss_weights.semseg=1"], None),
    ("run-unknown-method-option", ["run", "--method", "mtlora", *TINY, "--set", "method.rnak=4"], None),
    ("run-unknown-data-option", ["run", "--method", "full", *TINY, "--set", "data.num_trian=8"], None),
    ("run-bad-bool", ["run", "--method", "full", *TINY, "--set", "amp=maybe"], None),
    ("run-bad-image-size", ["run", "--method", "full", *TINY, "--set", "image_size=big"], None),
    ("run-bad-epochs-type", ["run", "--method", "full", "--preset", "smoke", "--epochs", "three"], None),
    ("run-bad-device", ["run", "--method", "full", *TINY, "--device", "tpu"], None),
    # run: paths and resources
    ("run-real-dataset-without-data", ["run", "--method", "ditask", "--dataset", "nyud"], None),
    ("run-missing-data-root", ["run", "--method", "full", "--dataset", "pascal_mt", "--data-root", MISSING], None),
    ("run-missing-weights-file", ["run", "--method", "full", *TINY, "--weights", f"{MISSING}/w.safetensors"], None),
    ("run-offline-hub", ["run", "--method", "full", *TINY, "--weights", "timm", "--backbone",
                         "swin_tiny_patch4_window7_224"], None),
    ("run-unknown-resume-id", ["run", "--method", "full", *TINY, "--resume", "20260101-000000-nothere"], None),
    # sweep
    ("sweep-unknown-method", ["sweep", "--method", "full,ditsk", *TINY], None),
    ("sweep-bad-seeds", ["sweep", "--method", "full", "--seeds", "a-b", *TINY], None),
    ("sweep-no-method", ["sweep", "--seeds", "0", *TINY], None),
    # compare and plot
    ("compare-missing-folder", ["compare", "--results", MISSING], None),
    ("compare-bad-format", ["compare", "--format", "pdf"], None),
    ("compare-strict-truncated", ["compare", "--results", "results", "--strict"], _truncated_results),
    ("compare-strict-wrong-type", ["compare", "--results", "results", "--strict"], _wrong_metrics_type),
    ("plot-missing-folder", ["plot", "--results", MISSING, "--out", "figures"], None),
    ("plot-no-out", ["plot", "--results", MISSING], None),
    # data
    ("data-verify-unknown-dataset", ["data", "verify", "pascal", "--data-root", MISSING], None),
    ("data-verify-missing-root", ["data", "verify", "nyud", "--data-root", MISSING], None),
    ("data-prepare-missing-archive", ["data", "prepare", "pascal_mt", "--from", f"{MISSING}/PASCAL_MT.tgz",
                                      "--data-root", "data"], None),
    ("data-show-unknown-task", ["data", "show", "synth", "--tasks", "dept", "--output", "grid.png"], None),
    # params
    ("params-unknown-method", ["params", "--method", "lorra", "--dataset", "pascal_mt"], None),
    ("params-unknown-option", ["params", "--method", "lora", "--dataset", "pascal_mt", "--set", "method.rank=4"], None),
    ("params-bad-format", ["params", "--method", "lora", "--dataset", "pascal_mt", "--format", "xml"], None),
    # pretrain
    ("pretrain-unknown-config", ["pretrain", "--config", "huge", "--output", "w.safetensors"], None),
    ("pretrain-unknown-setting", ["pretrain", "--steps", "2", "--output", "w.safetensors", "--set", "lrr=1"], None),
    ("pretrain-not-safetensors", ["pretrain", "--steps", "2", "--output", "w.pth"], None),
    # the command line itself
    ("unknown-command", ["trian"], None),
    ("quiet-and-verbose", ["-q", "-v", "ls"], None),
]


assert len({case for case, _, _ in CASES}) == len(CASES) >= 30, "the table keeps at least 30 distinct cases"


def snapshot(*folders: Path) -> dict[str, int]:
    """Every file and folder below ``folders`` with its size (folders: -1)."""
    tree = {}
    for folder in folders:
        for path in sorted(folder.rglob("*")):
            tree[str(path)] = path.stat().st_size if path.is_file() else -1
    return tree


@pytest.mark.parametrize("args, setup", [(args, setup) for _, args, setup in CASES], ids=[c for c, _, _ in CASES])
def test_bad_input_is_one_line_and_leaves_nothing_behind(args, setup, tmp_path, monkeypatch, capsys, cache_dir):
    work = tmp_path / "work"
    work.mkdir()
    if setup is not None:
        setup(work)
    monkeypatch.chdir(work)
    before = snapshot(work, cache_dir)
    code, out, err = run_cli(args, capsys)
    assert code not in (0, None), f"exit status {code}; stderr: {err}"
    assert "Traceback" not in out
    assert "error:" in one_error_line(err)
    assert snapshot(work, cache_dir) == before, "the command left files or folders behind"
    assert not os.path.exists(MISSING)
