"""Saliency: MTLoRA's threshold-max image-mean ``mIoU`` and the pixel-pooled ``maxF`` (β² = 0.3).

Definitions: the ``saliency`` entry of :mod:`mtpeft_bench.metrics`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from mtpeft_bench.metrics.base import Meter, counts_above, single_channel

#: Saliency mIoU thresholds (p > t), MTLoRA ``SaliencyMeterWithNoBeta.mask_thres``.
#: Computed as ``np.linspace(0.2, 0.9, 15)`` does (``start + i·step``, last = stop), bit for bit.
SALIENCY_IOU_THRESHOLDS = tuple([0.2 + i * ((0.9 - 0.2) / 14) for i in range(14)] + [0.9])
#: Saliency maxF thresholds (p ≥ t), InvPT ``SaliencyMeter`` (step 0.05).
SALIENCY_F_THRESHOLDS = tuple(round(0.05 * i, 2) for i in range(1, 20))
SALIENCY_BETA_SQUARED = 0.3


class SaliencyMeter(Meter):
    """Saliency: MTLoRA's threshold-max image-mean IoU and the pixel-pooled maxF (β² = 0.3)."""

    kind = "saliency"
    metric_names = ("mIoU", "maxF")

    def _new_states(self) -> dict[str, Tensor]:
        t_iou, t_f = len(SALIENCY_IOU_THRESHOLDS), len(SALIENCY_F_THRESHOLDS)
        return {
            "iou_sum": torch.zeros(t_iou, dtype=torch.float64),
            "n_images": torch.zeros((), dtype=torch.int64),
            "tp": torch.zeros(t_f, dtype=torch.int64),
            "pred_pos": torch.zeros(t_f, dtype=torch.int64),
            "gt_pos": torch.zeros((), dtype=torch.int64),
        }

    def _update(self, pred: Tensor, target: Tensor) -> dict[str, Tensor]:
        target = single_channel(target, pred, f"task {self.task.name!r}")
        batch = pred.shape[0]
        prob = torch.sigmoid(pred.double()).reshape(batch, -1)
        target = target.reshape(batch, -1)
        valid = target != self.task.ignore_index
        pos = valid & (target >= 0.5)
        device = prob.device

        # Per-image IoU at every threshold (p > t): bucket each pixel by how many thresholds it exceeds.
        t_iou = torch.tensor(SALIENCY_IOU_THRESHOLDS, dtype=torch.float64, device=device)
        n_t = t_iou.numel()
        k = torch.bucketize(prob, t_iou, right=False)  # #{t < p}
        idx = torch.arange(batch, device=device)[:, None] * (n_t + 1) + k
        per_image = torch.bincount(idx[valid], minlength=batch * (n_t + 1)).reshape(batch, n_t + 1)
        per_image_pos = torch.bincount(idx[pos], minlength=batch * (n_t + 1)).reshape(batch, n_t + 1)
        predicted = per_image.flip(1).cumsum(1).flip(1)[:, 1:]  # [B, T]: #{p > t_j}
        inter = per_image_pos.flip(1).cumsum(1).flip(1)[:, 1:]
        union = per_image_pos.sum(1, keepdim=True) + predicted - inter
        iou = torch.where(union > 0, inter.double() / union.clamp(min=1).double(),
                          torch.ones((), dtype=torch.float64, device=device))
        has_pixels = per_image.sum(1) > 0

        # Pixel-pooled counts for maxF (p >= t).
        prob_f = torch.sigmoid(prob) if self.task.options.get("double_sigmoid") else prob
        t_f = torch.tensor(SALIENCY_F_THRESHOLDS, dtype=torch.float64, device=device)
        k_valid = torch.bucketize(prob_f[valid], t_f, right=True)  # #{t <= p}
        k_pos = torch.bucketize(prob_f[pos], t_f, right=True)
        return {
            "iou_sum": iou[has_pixels].sum(0),
            "n_images": has_pixels.sum(),
            "tp": counts_above(k_pos, t_f.numel()),
            "pred_pos": counts_above(k_valid, t_f.numel()),
            "gt_pos": pos.sum(),
        }

    def _compute(self, states: dict[str, Tensor]) -> dict[str, float]:
        n_images = int(states["n_images"])
        miou = 100.0 * float((states["iou_sum"] / n_images).max()) if n_images else math.nan
        tp = states["tp"].double()
        if n_images == 0:
            max_f = math.nan
        else:
            precision = tp / states["pred_pos"].double()
            recall = tp / states["gt_pos"].double()
            b2 = SALIENCY_BETA_SQUARED
            f = (1 + b2) * precision * recall / (b2 * precision + recall)
            max_f = 100.0 * float(torch.nan_to_num(f, nan=0.0).max())
        return {"mIoU": miou, "maxF": max_f}
