"""Where a batch is computed: moved onto the device, run in the autocast precision of the run."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch


def to_device(batch: Mapping[str, Any], tasks: Sequence[str], device: torch.device):
    """A loader's batch as ``(images, {task: target})`` on ``device``; images (B, 3, H, W)."""
    images = batch["image"].to(device, non_blocking=True)
    targets = {t: batch[t].to(device, non_blocking=True) for t in tasks}
    return images, targets


def autocast(device: torch.device, enabled: bool, dtype: str):
    """``torch.autocast`` in ``dtype`` ("float16" or "bfloat16"); AMP runs on CUDA only, elsewhere it is off."""
    return torch.autocast(device_type=device.type, dtype=getattr(torch, dtype), enabled=enabled and device.type == "cuda")
