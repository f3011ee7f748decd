"""Where a batch is computed: moved onto the device, run in the autocast precision of the run."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch


def to_device(batch: Mapping[str, Any], tasks: Sequence[str], device: torch.device):
    """A loader's batch as ``(images, {task: target})`` on ``device``; images (B, 3, H, W)."""
    images = batch["image"].to(device, non_blocking=True)
    targets = {t: batch[t].to(device, non_blocking=True) for t in tasks}
    return images, targets


def amp_active(device: torch.device, enabled: bool) -> bool:
    """Whether a run with ``amp=enabled`` computes in reduced precision: AMP runs on CUDA only."""
    return enabled and device.type == "cuda"


def autocast(device: torch.device, enabled: bool, dtype: str):
    """``torch.autocast`` in ``dtype`` ("float16" or "bfloat16") when :func:`amp_active`, else off."""
    return torch.autocast(device_type=device.type, dtype=getattr(torch, dtype), enabled=amp_active(device, enabled))
