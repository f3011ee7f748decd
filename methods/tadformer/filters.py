"""TADFormer's task filters: the rank-space 3×3 depthwise filter between the shared LoRA factors.

Baek et al., "TADFormer: Task-Adaptive Dynamic TransFormer for Efficient Multi-Task Learning",
CVPR 2025, arXiv:2501.04293, Sec. 3.3 (Dynamic Task Filter). Written anew from a reading of
``Min100KM/TADFormer`` @ 1f53b9f (``models/lora.py``: ``NaiveConvFilter``, ``DTF``, ``FilterNorm``).

A filter maps a rank-space map ``u`` (B', r, h, w) — the shared LoRA ``A`` applied to a task's
input, laid out as a window (attention projection) or as the whole feature map (MLP) — to a map of
the same shape. Two kinds, chosen by the method's ``filter`` switch:

- :class:`StaticTaskFilter` (``filter=static``, what the released code runs): one learned depthwise
  ``Conv2d(r, r, 3, padding=1, groups=r)`` with bias **per task**; 10·r parameters per task. The
  kernel does not depend on the input.
- :class:`DynamicTaskFilter` (``filter=dtf``, what the paper describes and its parameter counts
  imply): ONE module per layer shared by the tasks; the kernel is generated from the input,
  ``w = FilterNorm(Linear_{r→9r}(GAP(u)))``, one 3×3 kernel per sample and channel, and applied as
  a per-sample depthwise convolution. 9r² + 27r parameters per layer. Tasks differ only through
  their input ``u``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

KERNEL = 3


class StaticTaskFilter(nn.Module):
    """One depthwise 3×3 convolution (with bias, zero padding 1) per task.

    Args:
        rank: channels of the rank space.
        tasks: task names.

    ``forward(u (B', r, h, w), task) -> (B', r, h, w)``.
    """

    def __init__(self, rank: int, tasks):
        super().__init__()
        # torch's default Conv2d init, as the released code (its _init_weights touches only Linear/LayerNorm).
        self.convs = nn.ModuleDict({t: nn.Conv2d(rank, rank, KERNEL, padding=KERNEL // 2, groups=rank)
                                    for t in tasks})

    def forward(self, u: torch.Tensor, task: str) -> torch.Tensor:
        return self.convs[task](u)


def filter_norm(w: torch.Tensor, taps: int, gain: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Normalise generated kernels per sample and channel over their taps (ddfnet's 'channel' FilterNorm).

    Args:
        w: (B', r·taps) generated kernels, channel-major (taps of channel c at ``c·taps … c·taps+taps-1``).
        taps: kernel taps per channel (9 for 3×3).
        gain, shift: (r·taps,) learned scale σ and offset μ.

    Returns:
        ``((w - mean) / (std + 1e-10)) · σ + μ`` with mean and the unbiased std over each channel's taps.
    """
    b = w.shape[0]
    w = w.reshape(b, -1, taps)
    w = (w - w.mean(dim=2, keepdim=True)) / (w.std(dim=2, keepdim=True) + 1e-10)
    return w.reshape(b, -1) * gain + shift


class DynamicTaskFilter(nn.Module):
    """The input-conditioned Dynamic Task Filter (paper Sec. 3.3), shared by the tasks of a layer.

    Args:
        rank: channels of the rank space.

    Parameters: ``generator`` Linear(r → 9r) with bias (the 1×1 conv on the pooled input; torch's
    default init, which equals Conv2d's for a 1×1 kernel), ``gain`` σ and ``shift`` μ of the filter
    norm (9r each; init N(0, 1)·gain(relu)/3 and N(0, 1) as in ddfnet).

    ``forward(u (B', r, h, w), task) -> (B', r, h, w)``; ``task`` is ignored (the input carries it).
    """

    def __init__(self, rank: int):
        super().__init__()
        self.rank = rank
        taps = KERNEL * KERNEL
        self.generator = nn.Linear(rank, rank * taps)
        self.gain = nn.Parameter(torch.randn(rank * taps) * (math.sqrt(2.0) / KERNEL))
        self.shift = nn.Parameter(torch.randn(rank * taps))

    def kernels(self, u: torch.Tensor) -> torch.Tensor:
        """Per-sample depthwise kernels (B'·r, 1, 3, 3) for ``u`` (B', r, h, w)."""
        w = self.generator(u.mean(dim=(2, 3)))  # GAP then the 1×1 conv
        w = filter_norm(w, KERNEL * KERNEL, self.gain, self.shift)
        return w.reshape(-1, 1, KERNEL, KERNEL)

    def forward(self, u: torch.Tensor, task: str | None = None) -> torch.Tensor:
        b, r, h, w = u.shape
        # All samples in one grouped convolution: group g = (sample, channel) gets its own kernel.
        out = F.conv2d(u.reshape(1, b * r, h, w), self.kernels(u), padding=KERNEL // 2, groups=b * r)
        return out.reshape(b, r, h, w)


FILTERS = ("static", "dtf")


def make_filter(kind: str, rank: int, tasks) -> nn.Module:
    """The filter module of one task-adapted linear for ``kind`` in :data:`FILTERS`."""
    if kind == "static":
        return StaticTaskFilter(rank, tasks)
    if kind == "dtf":
        return DynamicTaskFilter(rank)
    raise ValueError(f"filter must be one of {', '.join(FILTERS)}, got {kind!r}")
