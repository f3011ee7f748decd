"""Depth: pixel-pooled ``rmse``, ``log_rmse``, ``abs_rel`` and ``delta1``.

Definitions: the ``depth`` entry of :mod:`mtpeft_bench.metrics`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from mtpeft_bench.metrics.base import Meter, single_channel


class DepthMeter(Meter):
    """Pixel-pooled depth errors (MTLoRA/MTI-Net ``DepthMeter``; abs_rel and delta1 as InvPT)."""

    kind = "depth"
    metric_names = ("rmse", "log_rmse", "abs_rel", "delta1")

    def _new_states(self) -> dict[str, Tensor]:
        f64 = dict(dtype=torch.float64)
        return {
            "sum_sq": torch.zeros((), **f64),
            "sum_log_sq": torch.zeros((), **f64),
            "sum_abs_rel": torch.zeros((), **f64),
            "n_delta1": torch.zeros((), dtype=torch.int64),
            "n_valid": torch.zeros((), dtype=torch.int64),
        }

    def _update(self, pred: Tensor, target: Tensor) -> dict[str, Tensor]:
        target = single_channel(target, pred, f"task {self.task.name!r}")
        g_all = target.double()
        valid = (target != self.task.ignore_index) & (g_all > 0) & torch.isfinite(g_all)
        g = g_all[valid]
        p = pred.double()[valid].clamp(min=1e-9)
        diff = g - p
        log_diff = torch.log(g) - torch.log(p)
        ratio = torch.maximum(p / g, g / p)
        return {
            "sum_sq": (diff * diff).sum(),
            "sum_log_sq": (log_diff * log_diff).sum(),
            "sum_abs_rel": (diff.abs() / g).sum(),
            "n_delta1": (ratio < 1.25).sum(),
            "n_valid": valid.sum(),
        }

    def _compute(self, states: dict[str, Tensor]) -> dict[str, float]:
        n = int(states["n_valid"])
        if n == 0:
            return {k: math.nan for k in self.metric_names}
        return {
            "rmse": math.sqrt(float(states["sum_sq"]) / n),
            "log_rmse": math.sqrt(float(states["sum_log_sq"]) / n),
            "abs_rel": float(states["sum_abs_rel"]) / n,
            "delta1": 100.0 * int(states["n_delta1"]) / n,
        }
