"""The per-task decoder, identical for every method (docs/protocol.md 4.2).

MTLoRA/DiTASK's "hrnet" head (scale-lab/MTLoRA:models/swin_mtl.py ``Downsampler`` +
models/seg_hrnet.py ``HighResolutionHead``): four bias-free 1x1 convolutions reduce the stage
features to (18, 36, 72, 144) channels; features 2-4 are upsampled bilinearly to feature 1's size
and concatenated (270 channels); a 1x1 conv to 4 × 270 = 1080 channels, BatchNorm (momentum 0.1)
and ReLU, then a 1x1 conv to the task's outputs; finally a bilinear upsampling to the input size.
For the 4 PASCAL tasks on Swin-T this is 1,946,624 parameters.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn


DECODER_CHANNELS = (18, 36, 72, 144)


class HRNetHead(nn.Module):
    """Per-task decoder.

    Args:
        in_channels: channels of the four encoder features, e.g. (192, 384, 768, 768).
        num_outputs: output channels of the task.
        reduced_channels: channels after the per-task 1x1 reducers.
        expansion: hidden width of the fusion layer as a multiple of ``sum(reduced_channels)``.
    """

    def __init__(self, in_channels: Sequence[int], num_outputs: int,
                 reduced_channels: Sequence[int] = DECODER_CHANNELS, expansion: int = 4):
        super().__init__()
        if len(in_channels) != len(reduced_channels):
            raise ValueError(f"{len(in_channels)} features but {len(reduced_channels)} reducer widths")
        self.reduce = nn.ModuleList(nn.Conv2d(c, r, kernel_size=1, bias=False)
                                    for c, r in zip(in_channels, reduced_channels))
        fused = sum(reduced_channels)
        self.fuse = nn.Sequential(
            nn.Conv2d(fused, fused * expansion, kernel_size=1),
            nn.BatchNorm2d(fused * expansion, momentum=0.1),
            nn.ReLU(inplace=False),
            nn.Conv2d(fused * expansion, num_outputs, kernel_size=1),
        )

    def forward(self, features: Sequence[torch.Tensor], out_size: tuple[int, int]) -> torch.Tensor:
        """features: 4 × (B, C_i, H_i, W_i) → (B, num_outputs, *out_size)."""
        reduced = [conv(f) for conv, f in zip(self.reduce, features)]
        size = reduced[0].shape[-2:]
        aligned = [reduced[0], *(F.interpolate(r, size=size, mode="bilinear", align_corners=False)
                                 for r in reduced[1:])]
        out = self.fuse(torch.cat(aligned, dim=1))
        return F.interpolate(out, size=out_size, mode="bilinear", align_corners=False)
