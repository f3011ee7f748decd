"""How a raw head output is brought to its target's size, one rule per kind of output.

Predictions at another resolution than the targets (evaluation at the original image size,
docs/protocol.md 2 "MTI-Net") are resized as MTI-Net resizes its post-processed predictions back to the
original image size: labels with nearest neighbour (OpenCV ``INTER_NEAREST``, i.e. on the argmax;
nearest on logits gives the same labels), saliency and edges as probabilities with bilinear
interpolation (returned as logits again, so the meters' sigmoid gives the interpolated
probability), normals as unit vectors with bilinear interpolation (the meter renormalises), depth
bilinearly. Which rule a task kind uses is in :mod:`mtpeft_bench.task_kinds`.

Every rule takes ``pred`` ``[B, C, h, w]`` and ``size`` (H, W) and returns ``[B, C, H, W]``:
float64 for the probability rule, the input's dtype otherwise.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def resize_labels(pred: Tensor, size: tuple[int, int]) -> Tensor:
    """Class logits, nearest neighbour (the argmax labels are those of nearest on the labels)."""
    return F.interpolate(pred, size=size, mode="nearest")


def resize_probability_logits(pred: Tensor, size: tuple[int, int]) -> Tensor:
    """Logits of a probability, interpolated bilinearly as probabilities and returned as logits."""
    prob = F.interpolate(torch.sigmoid(pred.double()), size=size, mode="bilinear", align_corners=False)
    prob = prob.clamp(1e-15, 1 - 1e-15)
    return torch.log(prob) - torch.log1p(-prob)


def resize_unit_vectors(pred: Tensor, size: tuple[int, int]) -> Tensor:
    """Normal vectors, normalised first and then interpolated bilinearly (the meter renormalises)."""
    unit = F.normalize(pred.double(), p=2, dim=1, eps=1e-12)
    return F.interpolate(unit, size=size, mode="bilinear", align_corners=False).to(pred.dtype)


def resize_bilinear(pred: Tensor, size: tuple[int, int]) -> Tensor:
    """A continuous value (depth in metres), interpolated bilinearly."""
    return F.interpolate(pred, size=size, mode="bilinear", align_corners=False)
