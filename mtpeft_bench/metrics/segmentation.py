"""Segmentation (also human parts): confusion-matrix ``mIoU`` and ``pixAcc``.

Definitions: the ``segmentation`` entry of :mod:`mtpeft_bench.metrics`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from mtpeft_bench.metrics.base import Meter
from mtpeft_bench.tasks.base import TaskSpec


class SegmentationMeter(Meter):
    """Confusion-matrix mIoU and pixel accuracy (MTLoRA ``SemsegMeter`` / ``HumanPartsMeter``)."""

    kind = "segmentation"
    metric_names = ("mIoU", "pixAcc")

    def __init__(self, task: TaskSpec, skip_expensive: bool = False) -> None:
        self.num_classes = int(task.num_outputs)
        super().__init__(task, skip_expensive)

    def _new_states(self) -> dict[str, Tensor]:
        # confusion[g, p]: valid pixels with ground truth g predicted as p.
        return {"confusion": torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64)}

    def _update(self, pred: Tensor, target: Tensor) -> dict[str, Tensor]:
        c = self.num_classes
        if pred.shape[1] != c:
            raise ValueError(f"task {self.task.name!r}: prediction has {pred.shape[1]} channels, expected {c}")
        if target.dim() == 4:
            target = target[:, 0]
        label = pred.argmax(dim=1)
        valid = target != self.task.ignore_index
        gt = target[valid].long()
        if gt.numel() and (int(gt.min()) < 0 or int(gt.max()) >= c):
            raise ValueError(f"task {self.task.name!r}: target class ids must be in [0, {c}) or "
                             f"{self.task.ignore_index}, got {int(gt.min())}..{int(gt.max())}")
        idx = gt * c + label[valid]
        return {"confusion": torch.bincount(idx, minlength=c * c).reshape(c, c)}

    def class_iou(self) -> list[float]:
        """IoU of each class in % (the terms whose mean is ``mIoU``)."""
        conf = self.states["confusion"].cpu().double()
        tp = conf.diag()
        denom = conf.sum(0) + conf.sum(1) - tp
        return (100.0 * tp / denom.clamp(min=1e-8)).tolist()

    def _compute(self, states: dict[str, Tensor]) -> dict[str, float]:
        conf = states["confusion"].double()
        total = conf.sum()
        if total == 0:
            return {"mIoU": math.nan, "pixAcc": math.nan}
        tp = conf.diag()
        fp = conf.sum(0) - tp
        fn = conf.sum(1) - tp
        iou = tp / (tp + fp + fn).clamp(min=1e-8)
        return {"mIoU": float(100.0 * iou.mean()), "pixAcc": float(100.0 * tp.sum() / total)}
