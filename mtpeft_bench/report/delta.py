"""Δm, the multi-task performance relative to single-task baselines (docs/protocol.md 3.1).

    Δm = (100 / T) · Σ_t (−1)^{l_t} · (M_t − M_t^ST) / M_t^ST

with ``M_t`` the primary metric of task ``t`` of the multi-task model, ``M_t^ST`` the same metric of the
single-task baseline and ``l_t = 1`` when lower is better (normals mean angle, depth RMSE), 0 otherwise
(mIoU, maxF, odsF). One metric per task: the task's primary metric. This is the formula of
scale-lab/MTLoRA:evaluation/evaluate_utils.py ``calculate_multi_task_performance`` and
SimonVandenhende/Multi-Task-Learning-PyTorch:evaluation/evaluate_utils.py (not LibMTL's Δp, which first
averages several metrics inside a task).

This module is torch-free (comparison tables import it); values are plain floats, results in %.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Mapping

__all__ = ["delta_m", "per_task_delta", "primary_values"]


def per_task_delta(
    values: Mapping[str, float],
    baselines: Mapping[str, float],
    higher_is_better: Mapping[str, bool],
) -> dict[str, float]:
    """Each task's signed relative change over its baseline, in %.

    ``+`` always means better: ``100 · (M − M^ST) / M^ST``, negated for lower-is-better metrics.

    Args:
        values: task name → primary metric of the evaluated model. Every task in it is used.
        baselines: task name → the single-task baseline of the same metric (extra tasks are ignored).
        higher_is_better: task name → direction of the metric.

    Returns:
        task name → signed relative change in %, in the order of ``values``.

    Raises:
        ValueError: ``values`` is empty, or a task has no baseline, a zero or non-finite baseline,
            or no direction (the message names the task).
    """
    if not values:
        raise ValueError("Δm needs at least one task")
    out: dict[str, float] = {}
    for task, value in values.items():
        if task not in baselines or baselines[task] is None:
            raise ValueError(f"no single-task baseline for task {task!r}")
        base = float(baselines[task])
        if base == 0.0 or not math.isfinite(base):
            raise ValueError(f"single-task baseline of task {task!r} is {base!r}; Δm needs a finite non-zero baseline")
        if task not in higher_is_better:
            raise ValueError(f"no metric direction (higher_is_better) for task {task!r}")
        sign = 1.0 if higher_is_better[task] else -1.0
        out[task] = sign * 100.0 * (float(value) - base) / base
    return out


def delta_m(
    values: Mapping[str, float],
    baselines: Mapping[str, float],
    higher_is_better: Mapping[str, bool],
) -> float:
    """Δm in % over the tasks of ``values`` (the mean of :func:`per_task_delta`).

    Example (MTLoRA r=64 on PASCAL, Swin-T baselines)::

        >>> round(delta_m({"semseg": 67.90, "human_parts": 59.84, "sal": 65.40, "normals": 16.60},
        ...               {"semseg": 67.21, "human_parts": 61.93, "sal": 62.35, "normals": 17.97},
        ...               {"semseg": True, "human_parts": True, "sal": True, "normals": False}), 2)
        2.54

    A NaN metric gives a NaN Δm. Raises ``ValueError`` as :func:`per_task_delta`.
    """
    deltas = per_task_delta(values, baselines, higher_is_better)
    return sum(deltas.values()) / len(deltas)


def primary_values(
    metrics: Mapping[str, Mapping[str, float]], tasks: Iterable[Any]
) -> tuple[dict[str, float], dict[str, bool]]:
    """Pick each task's primary metric out of a result's ``metrics[task][name]`` table.

    Args:
        metrics: task name → metric name → value (the result file's ``metrics``).
        tasks: the :class:`~mtpeft_bench.tasks.base.TaskSpec` objects (anything with ``name`` and
            ``primary.name`` / ``primary.higher_is_better``).

    Returns:
        ``(values, higher_is_better)``, ready for :func:`delta_m`.

    Raises:
        ValueError: a task or its primary metric is missing from ``metrics``.
    """
    values: dict[str, float] = {}
    directions: dict[str, bool] = {}
    for task in tasks:
        primary = task.primary
        if task.name not in metrics or primary.name not in metrics[task.name]:
            raise ValueError(f"metrics have no {primary.name!r} for task {task.name!r}")
        values[task.name] = float(metrics[task.name][primary.name])
        directions[task.name] = bool(primary.higher_is_better)
    return values, directions
