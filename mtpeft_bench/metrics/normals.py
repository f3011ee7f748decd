"""Surface normals: angular errors in degrees (``mean``, ``median``, ``rmse``, % within 11.25/22.5/30°).

Definitions: the ``normals`` entry of :mod:`mtpeft_bench.metrics`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from mtpeft_bench.metrics.base import Meter

#: Width of a bin of the normals angle histogram the median is read from, in degrees.
NORMALS_MEDIAN_BIN_DEG = 0.01
_NORMALS_BINS = 18000  # 180° / 0.01°
NORMALS_THRESHOLDS_DEG = (11.25, 22.5, 30.0)
_NORMALS_KEYS = ("11.25", "22.5", "30")


class NormalsMeter(Meter):
    """Angular errors of surface normals in degrees (MTLoRA ``NormalsMeterV1`` + MTI-Net extras)."""

    kind = "normals"
    metric_names = ("mean", "median", "rmse") + _NORMALS_KEYS

    def _new_states(self) -> dict[str, Tensor]:
        return {
            "sum_angle": torch.zeros((), dtype=torch.float64),
            "sum_angle_sq": torch.zeros((), dtype=torch.float64),
            "n_below": torch.zeros(len(NORMALS_THRESHOLDS_DEG), dtype=torch.int64),
            "n_valid": torch.zeros((), dtype=torch.int64),
            "hist": torch.zeros(_NORMALS_BINS, dtype=torch.int64),
        }

    def _update(self, pred: Tensor, target: Tensor) -> dict[str, Tensor]:
        if pred.shape[1] != 3 or target.shape != pred.shape:
            raise ValueError(f"task {self.task.name!r}: prediction {tuple(pred.shape)} and target "
                             f"{tuple(target.shape)} must both be [B, 3, H, W]")
        valid = (target != self.task.ignore_index).all(dim=1)
        unit = F.normalize(pred.double(), p=2, dim=1, eps=1e-12)
        cos = (unit * target.double()).sum(dim=1)[valid].clamp(-1.0, 1.0)
        angle = torch.rad2deg(torch.acos(cos))
        bins = torch.floor(angle / NORMALS_MEDIAN_BIN_DEG).long().clamp(0, _NORMALS_BINS - 1)
        limits = torch.tensor(NORMALS_THRESHOLDS_DEG, dtype=torch.float64, device=angle.device)
        return {
            "sum_angle": angle.sum(),
            "sum_angle_sq": (angle * angle).sum(),
            "n_below": (angle[:, None] < limits).sum(dim=0),
            "n_valid": valid.sum(),
            "hist": torch.bincount(bins, minlength=_NORMALS_BINS),
        }

    def _compute(self, states: dict[str, Tensor]) -> dict[str, float]:
        n = int(states["n_valid"])
        if n == 0:
            return {k: math.nan for k in self.metric_names}
        cum = states["hist"].cumsum(0)
        # 1-based ranks of the middle pixels (equal for odd n); the median is the mean of their bin centres.
        ranks = torch.tensor([(n + 1) // 2, n // 2 + 1], dtype=cum.dtype)
        bins = torch.searchsorted(cum, ranks).double()
        out = {
            "mean": float(states["sum_angle"]) / n,
            "median": float(((bins + 0.5) * NORMALS_MEDIAN_BIN_DEG).mean()),
            "rmse": math.sqrt(float(states["sum_angle_sq"]) / n),
        }
        for key, count in zip(_NORMALS_KEYS, states["n_below"].tolist()):
            out[key] = 100.0 * count / n
        return out
