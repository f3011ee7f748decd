"""The rule that chooses each row's learning rate in a leaderboard protocol (docs/leaderboard.md).

Every row of a protocol is trained at each multiplier of its grid (of the preset's shared
``base_lr``), at the protocol's selection seed, with the same budget (the preset), on the training
split minus the last ``holdout`` images, and evaluated on those held-out images, never on ``val``.

- **Score**: Δm on the holdout split (report/delta.py) against one fixed reference, the reference
  row's (``full``) run at multiplier 1 on the same split. Any fixed reference ranks one method's
  rates the same way up to how the tasks are weighted; Δm weights them as the leaderboard does
  (each task's primary metric, relative change, mean over tasks), so the rate chosen is the one that
  is best by the leaderboard's own measure. A run that diverged scores −∞.
- **Choice**: the best score; between equal scores the smaller rate.
- **Edges**: where the best rate is the grid's smallest (largest), the grid grows by one rate that
  way, a factor equal to the spacing of the two edge rates, and the new rate is run; this repeats
  until the best is inside the grid or ``max_extensions`` rates were added (then it is reported as
  at the edge).

Everything here is a pure function of the scores found so far (torch-free), so the selection can be
recomputed from the records at any time: a killed sweep continues where it stopped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from mtpeft_bench.report.delta import delta_m

#: A scorer: (record of a selection run, record of the reference run) -> score, higher is better.
Scorer = Callable[[Mapping[str, Any], Mapping[str, Any]], float]


def primary_metrics(record: Mapping[str, Any]) -> tuple[dict[str, float | None], dict[str, bool]]:
    """Each task's primary metric in a result record (None where missing) and its direction."""
    values, higher = {}, {}
    for task in record.get("tasks", []):
        spec = record["task_specs"][task]
        name = spec["primary"]
        values[task] = ((record.get("metrics") or {}).get(task) or {}).get(name)
        higher[task] = bool(spec["metrics"][name]["higher_is_better"])
    return values, higher


def holdout_score(record: Mapping[str, Any], reference: Mapping[str, Any]) -> float:
    """Δm (%) of a selection run against the reference run, both on the holdout split; −∞ when a
    metric is missing or not finite (a run whose predictions broke down ranks last)."""
    values, higher = primary_metrics(record)
    base, _ = primary_metrics(reference)
    if any(v is None or not math.isfinite(v) for v in values.values()):
        return -math.inf
    try:
        score = delta_m(values, base, higher)
    except ValueError:
        return -math.inf
    return score if math.isfinite(score) else -math.inf


@dataclass
class RowChoice:
    """Where one row's selection stands.

    Attributes:
        grid: the multipliers scored or to be scored, ascending (the protocol's, plus extensions).
        todo: multipliers of ``grid`` whose run is needed before the selection can go on.
        chosen: the chosen multiplier (None until every rate needed is scored, or when all diverged).
        at_edge: the chosen rate is still on an edge after ``max_extensions`` extensions.
        status: ``pending`` (runs needed), ``chosen`` or ``failed`` (every rate diverged).
    """

    grid: list[float]
    todo: list[float] = field(default_factory=list)
    chosen: float | None = None
    at_edge: bool = False
    status: str = "pending"


def best_multiplier(scores: Mapping[float, float]) -> float:
    """The multiplier with the best score; between equal scores the smallest."""
    return min(scores, key=lambda m: (-scores[m], m))


def choose(multipliers: Sequence[float], scores: Mapping[float, float | None], max_extensions: int) -> RowChoice:
    """Apply the rule of the module docstring to the scores known so far.

    Args:
        multipliers: the protocol's grid.
        scores: multiplier -> score (None or absent: not run yet; −∞: diverged).
        max_extensions: how many rates the grid may grow by, in all.
    """
    grid = sorted(float(m) for m in multipliers)
    while True:
        todo = [m for m in grid if scores.get(m) is None]
        if todo:
            return RowChoice(grid, todo)
        known = {m: float(scores[m]) for m in grid}
        if all(v == -math.inf for v in known.values()):
            return RowChoice(grid, status="failed")
        best = best_multiplier(known)
        room = len(grid) - len(multipliers) < max_extensions
        if best == grid[0] and room:
            grid.insert(0, grid[0] * grid[0] / grid[1])
        elif best == grid[-1] and room:
            grid.append(grid[-1] * grid[-1] / grid[-2])
        else:
            return RowChoice(grid, chosen=best, at_edge=best in (grid[0], grid[-1]), status="chosen")
