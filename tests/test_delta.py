"""Δm (docs/protocol.md 3.1) against rows of the MTLoRA paper table computed by hand."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest

from mtpeft_bench.report.delta import delta_m, per_task_delta, primary_values
from mtpeft_bench.tasks.base import MetricSpec, TaskSpec

# Single-task Swin-T baselines on PASCAL (docs/protocol.md 3.1).
ST = {"semseg": 67.21, "human_parts": 61.93, "sal": 62.35, "normals": 17.97}
HIGHER = {"semseg": True, "human_parts": True, "sal": True, "normals": False}


def test_mtlora_r64_row():
    # semseg      +(67.90 - 67.21) / 67.21 = +0.69 / 67.21 = +1.02663 %
    # human_parts +(59.84 - 61.93) / 61.93 = -2.09 / 61.93 = -3.37478 %
    # sal         +(65.40 - 62.35) / 62.35 = +3.05 / 62.35 = +4.89174 %
    # normals     -(16.60 - 17.97) / 17.97 = +1.37 / 17.97 = +7.62382 %   (lower is better)
    # Δm = (1.02663 - 3.37478 + 4.89174 + 7.62382) / 4 = 10.16741 / 4 = 2.54185
    values = {"semseg": 67.90, "human_parts": 59.84, "sal": 65.40, "normals": 16.60}
    assert delta_m(values, ST, HIGHER) == pytest.approx(2.54185, abs=0.01)
    per_task = per_task_delta(values, ST, HIGHER)
    assert per_task["semseg"] == pytest.approx(1.02663, abs=1e-4)
    assert per_task["human_parts"] == pytest.approx(-3.37478, abs=1e-4)
    assert per_task["sal"] == pytest.approx(4.89174, abs=1e-4)
    assert per_task["normals"] == pytest.approx(7.62382, abs=1e-4)


def test_ditask_row():
    # semseg      +(69.66 - 67.21) / 67.21 = +2.45 / 67.21 = +3.64529 %
    # human_parts +(62.02 - 61.93) / 61.93 = +0.09 / 61.93 = +0.14533 %
    # sal         +(65.00 - 62.35) / 62.35 = +2.65 / 62.35 = +4.25020 %
    # normals     -(17.10 - 17.97) / 17.97 = +0.87 / 17.97 = +4.84140 %
    # Δm = 12.88222 / 4 = 3.22056
    values = {"semseg": 69.66, "human_parts": 62.02, "sal": 65.00, "normals": 17.10}
    assert delta_m(values, ST, HIGHER) == pytest.approx(3.22056, abs=0.01)


def test_baselines_are_zero_delta_and_worse_normals_is_negative():
    assert delta_m(ST, ST, HIGHER) == 0.0
    # normals 10 % worse (higher angle) → -10 % for that task; a single task's Δm is its own change.
    assert delta_m({"normals": 17.97 * 1.1}, ST, HIGHER) == pytest.approx(-10.0)
    assert delta_m({"semseg": 67.21 * 0.9}, ST, HIGHER) == pytest.approx(-10.0)


def test_extra_baselines_are_ignored():
    # Only the tasks of `values` count: T = 2 here, not 4.
    values = {"semseg": 67.21 * 1.02, "sal": 62.35 * 1.04}
    assert delta_m(values, ST, HIGHER) == pytest.approx(3.0)


def test_missing_or_zero_baseline_names_the_task():
    with pytest.raises(ValueError, match="depth"):
        delta_m({"semseg": 60.0, "depth": 0.5}, ST, {**HIGHER, "depth": False})
    with pytest.raises(ValueError, match="depth"):
        delta_m({"depth": 0.5}, {"depth": 0.0}, {"depth": False})
    with pytest.raises(ValueError, match="edge"):
        delta_m({"edge": 70.0}, {"edge": 70.0}, {})
    with pytest.raises(ValueError):
        delta_m({}, ST, HIGHER)


def test_primary_values_from_task_specs():
    def task(name, metric, higher):
        return TaskSpec(name=name, kind="segmentation", num_outputs=2, loss="cross_entropy", loss_weight=1.0,
                        metrics=(MetricSpec(metric, higher, primary=True), MetricSpec("extra", True)))

    tasks = [task("semseg", "mIoU", True), task("normals", "mean", False)]
    metrics = {"semseg": {"mIoU": 67.90, "extra": 1.0}, "normals": {"mean": 16.60, "extra": 2.0}}
    values, higher = primary_values(metrics, tasks)
    assert values == {"semseg": 67.90, "normals": 16.60}
    assert higher == {"semseg": True, "normals": False}
    with pytest.raises(ValueError, match="normals"):
        primary_values({"semseg": {"mIoU": 1.0}}, tasks)


def test_nan_metric_gives_nan():
    assert math.isnan(delta_m({"semseg": math.nan}, ST, HIGHER))


def test_delta_module_does_not_import_torch():
    code = "import sys, mtpeft_bench.report.delta; assert 'torch' not in sys.modules and 'numpy' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_metrics_reexports_delta_m():
    from mtpeft_bench import metrics

    assert metrics.delta_m is delta_m
