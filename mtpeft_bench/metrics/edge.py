"""Edges: SEISM-style ``odsF`` (boundary matching in :mod:`~mtpeft_bench.metrics.seism`) and the
tolerance-based approximation ``F_tol``.

Definitions: the ``edge`` entry of :mod:`mtpeft_bench.metrics`.
"""

from __future__ import annotations

import logging
import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from mtpeft_bench.metrics.base import Meter, counts_above, single_channel
from mtpeft_bench.metrics.seism import BoundaryMatcher, edge_backend, edge_thresholds, ods_from_counts
from mtpeft_bench.tasks.base import TaskSpec

log = logging.getLogger(__name__)

#: Edge thresholds (p ≥ t), as the 99 values MTI-Net passes to SEISM.
EDGE_THRESHOLDS = tuple(round(0.01 * i, 2) for i in range(1, 100))


def _disk_max(x: Tensor, radius: float) -> Tensor:
    """Max of ``x`` ``[B, 1, H, W]`` over a disk of Euclidean radius ``radius`` (pixel offsets with
    dx² + dy² ≤ radius²) around every pixel; outside the image counts as −inf."""
    reach = int(math.floor(radius + 1e-9))
    if reach <= 0:
        return x
    height = x.shape[-2]
    out = torch.full_like(x, -math.inf)
    rows: dict[int, Tensor] = {}
    for dy in range(-reach, reach + 1):
        if abs(dy) >= height:
            continue
        half = int(math.floor(math.sqrt(max(radius * radius - dy * dy, 0.0)) + 1e-9))
        if half not in rows:
            rows[half] = x if half == 0 else F.max_pool2d(x, kernel_size=(1, 2 * half + 1), stride=1,
                                                          padding=(0, half))
        row = rows[half]
        # out[y] = max(out[y], row[y + dy])
        if dy >= 0:
            out[..., : height - dy, :] = torch.maximum(out[..., : height - dy, :], row[..., dy:, :])
        else:
            out[..., -dy:, :] = torch.maximum(out[..., -dy:, :], row[..., : height + dy, :])
    return out


class EdgeMeter(Meter):
    """Edges: SEISM-style ``odsF`` when the task asks for it, and the approximation ``F_tol``."""

    kind = "edge"
    metric_names = ("F_tol",)
    extra_names = ("odsF",)
    _warned: ClassVar[set[str]] = set()

    def __init__(self, task: TaskSpec, skip_expensive: bool = False) -> None:
        if "max_dist" not in task.options:
            raise ValueError(f"edge task {task.name!r} needs options['max_dist'] (the match tolerance as a "
                             "fraction of the image diagonal, e.g. 0.0075 for PASCAL)")
        self.max_dist = float(task.options["max_dist"])
        if not self.max_dist >= 0:
            raise ValueError(f"edge task {task.name!r}: options['max_dist'] must be >= 0, got {self.max_dist!r}")
        self.wants_ods = any(m.name == "odsF" for m in task.metrics) and not skip_expensive
        self.thresholds = edge_thresholds(int(task.options.get("thresholds", 99)))
        self.backend_problem = edge_backend() if self.wants_ods else None
        self._matcher = BoundaryMatcher(self.max_dist, self.thresholds)
        super().__init__(task, skip_expensive)

    def _new_states(self) -> dict[str, Tensor]:
        n_t = len(EDGE_THRESHOLDS)
        states = {
            "pred_pos": torch.zeros(n_t, dtype=torch.int64),
            "pred_match": torch.zeros(n_t, dtype=torch.int64),
            "gt_match": torch.zeros(n_t, dtype=torch.int64),
            "gt_pos": torch.zeros((), dtype=torch.int64),
            "n_valid": torch.zeros((), dtype=torch.int64),
        }
        if self.wants_ods:
            states["ods_counts"] = torch.zeros(4, len(self.thresholds), dtype=torch.int64)
        return states

    def radius(self, height: int, width: int) -> float:
        """The match tolerance in pixels for an image of ``height`` × ``width``."""
        return self.max_dist * math.hypot(height, width)

    def _update(self, pred: Tensor, target: Tensor) -> dict[str, Tensor]:
        target = single_channel(target, pred, f"task {self.task.name!r}")
        prob = torch.sigmoid(pred.double())
        valid = target != self.task.ignore_index
        gt = valid & (target >= 0.5)
        if self.wants_ods and self.backend_problem is None:
            for counts in self._matcher.submit(torch.where(valid, prob, torch.zeros_like(prob)), gt):
                self._add_ods(torch.from_numpy(counts))
        r = self.radius(pred.shape[-2], pred.shape[-1])
        near_gt = _disk_max(gt.double(), r) > 0.5
        # Highest probability of a (valid) pixel within r: a GT pixel is matched at t iff it is >= t.
        best_near = _disk_max(torch.where(valid, prob, torch.full_like(prob, -1.0)), r)
        thr = torch.tensor(EDGE_THRESHOLDS, dtype=torch.float64, device=prob.device)
        n_t = thr.numel()
        return {
            "pred_pos": counts_above(torch.bucketize(prob[valid], thr, right=True), n_t),
            "pred_match": counts_above(torch.bucketize(prob[valid & near_gt], thr, right=True), n_t),
            "gt_match": counts_above(torch.bucketize(best_near[gt], thr, right=True), n_t),
            "gt_pos": gt.sum(),
            "n_valid": valid.sum(),
        }

    # -- odsF: per-image boundary matching, in this process or a pool (seism.BoundaryMatcher) ---------
    def _add_ods(self, counts: Tensor) -> None:
        state = self.states["ods_counts"]
        self.states["ods_counts"] = state + counts.to(state.device, state.dtype)

    def drain(self) -> None:
        """Wait for queued odsF jobs and add their counts to the states."""
        for counts in self._matcher.collect():
            self._add_ods(torch.from_numpy(counts))

    def compute(self) -> dict[str, float]:
        self.drain()
        return super().compute()

    def merge(self, other: "Meter") -> "Meter":
        self.drain()
        if isinstance(other, EdgeMeter):
            other.drain()
        return super().merge(other)

    def all_reduce(self) -> None:
        self.drain()
        super().all_reduce()

    def reset(self) -> None:
        self.drain()
        super().reset()

    def _compute(self, states: dict[str, Tensor]) -> dict[str, float]:
        out: dict[str, float] = {}
        if int(states["n_valid"]) == 0:
            out["F_tol"] = math.nan
        else:
            precision = states["pred_match"].double() / states["pred_pos"].double()
            recall = states["gt_match"].double() / states["gt_pos"].double()
            f = 2 * precision * recall / (precision + recall)
            out["F_tol"] = 100.0 * float(torch.nan_to_num(f, nan=0.0).max())
        if self.wants_ods:
            if self.backend_problem is not None:
                if self.backend_problem not in EdgeMeter._warned:
                    EdgeMeter._warned.add(self.backend_problem)
                    log.warning("task %s: %s", self.task.name, self.backend_problem)
                out["odsF"] = math.nan
            elif int(states["n_valid"]) == 0:
                out["odsF"] = math.nan
            else:
                out["odsF"] = ods_from_counts(states["ods_counts"])
        return out
