"""The table of task kinds: everything the package does differently for segmentation, depth,
normals, saliency and edges, in one place.

Each kind (declared in :data:`mtpeft_bench.tasks.base.TASK_KINDS`, with its target format) maps to
a :class:`TaskKind`: its streaming meter, how a prediction at another resolution is brought to the
target's (:mod:`mtpeft_bench.metrics.resize`), how a random target of the right format is made
(``mtbench bench`` times models on random data) and how a target is coloured for a picture
(``mtbench data show``). :func:`build_meter` and :func:`resize_prediction`, the metrics' entry
points, look kinds up here (:mod:`mtpeft_bench.metrics` exports them); so do
:func:`mtpeft_bench.bench.random_targets` and :func:`mtpeft_bench.viz.target_to_rgb`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from mtpeft_bench.metrics.base import Meter
from mtpeft_bench.metrics.depth import DepthMeter
from mtpeft_bench.metrics.edge import EdgeMeter
from mtpeft_bench.metrics.normals import NormalsMeter
from mtpeft_bench.metrics.resize import (resize_bilinear, resize_labels, resize_probability_logits,
                                         resize_unit_vectors)
from mtpeft_bench.metrics.saliency import SaliencyMeter
from mtpeft_bench.metrics.segmentation import SegmentationMeter
from mtpeft_bench.tasks.base import TASK_KINDS, TaskSpec

#: ``(rgb float[H, W, 3] in [0, 1], (min, max) shown by a colour map or None)``
Picture = tuple[np.ndarray, "tuple[float, float] | None"]


# -- random targets, in the formats of tasks/base.py (values do not matter for timing) ----------------
def random_labels(spec: TaskSpec, batch: int, size: tuple[int, int], generator: torch.Generator) -> Tensor:
    """int64[B, H, W] class ids in 0..C-1."""
    return torch.randint(0, spec.num_outputs, (batch, *size), generator=generator)


def random_depth(spec: TaskSpec, batch: int, size: tuple[int, int], generator: torch.Generator) -> Tensor:
    """float32[B, 1, H, W] depths in [0.5, 5.5) metres."""
    return torch.rand(batch, 1, *size, generator=generator) * 5 + 0.5


def random_normals(spec: TaskSpec, batch: int, size: tuple[int, int], generator: torch.Generator) -> Tensor:
    """float32[B, 3, H, W] unit vectors."""
    return torch.nn.functional.normalize(torch.randn(batch, 3, *size, generator=generator), dim=1)


def random_binary(spec: TaskSpec, batch: int, size: tuple[int, int], generator: torch.Generator) -> Tensor:
    """float32[B, 1, H, W] in {0, 1} (saliency, edges)."""
    return (torch.rand(batch, 1, *size, generator=generator) > 0.5).float()


# -- colours of one target (numpy, the format of tasks/base.py without the batch); ignored pixels black --
def class_colours(num_classes: int) -> np.ndarray:
    """float[num_classes, 3] distinct colours (matplotlib's tab20, tab20b, tab20c, then repeated)."""
    from matplotlib import colormaps

    colours = np.concatenate([colormaps[name].colors for name in ("tab20", "tab20b", "tab20c")])[:, :3]
    # tab20 pairs a strong and a light shade: take the strong ones first so few classes differ most
    order = np.concatenate([np.arange(0, len(colours), 2), np.arange(1, len(colours), 2)])
    colours = colours[order]
    return colours[np.arange(num_classes) % len(colours)]


def labels_to_rgb(t: np.ndarray, spec: TaskSpec) -> Picture:
    """Class ids [H, W] in a categorical palette."""
    valid = t != spec.ignore_index
    rgb = class_colours(spec.num_outputs)[np.where(valid, t, 0).clip(0, spec.num_outputs - 1)]
    rgb[~valid] = 0.0
    return rgb, None


def normals_to_rgb(t: np.ndarray, spec: TaskSpec) -> Picture:
    """Unit vectors [3, H, W] as RGB = (n + 1) / 2."""
    valid = ~(t == spec.ignore_index).all(axis=0)
    rgb = ((np.moveaxis(t, 0, -1) + 1.0) / 2.0).clip(0.0, 1.0)
    rgb[~valid] = 0.0
    return rgb, None


def depth_to_rgb(t: np.ndarray, spec: TaskSpec) -> Picture:
    """Depths [1, H, W] in the perceptual viridis map over their (min, max), returned for a colour bar."""
    from matplotlib import colormaps

    t = t[0]
    valid = t != spec.ignore_index
    lo, hi = (float(t[valid].min()), float(t[valid].max())) if valid.any() else (0.0, 1.0)
    rgb = colormaps["viridis"](((t - lo) / max(hi - lo, 1e-6)).clip(0, 1))[..., :3]
    rgb[~valid] = 0.0
    return rgb, (lo, hi)


def binary_to_rgb(t: np.ndarray, spec: TaskSpec) -> Picture:
    """A {0, 1} map [1, H, W] in grey."""
    return np.repeat(t[0].clip(0, 1)[..., None], 3, axis=-1), None


@dataclass(frozen=True)
class TaskKind:
    """What the package does for tasks of one kind.

    Attributes:
        name: the kind, one of :data:`~mtpeft_bench.tasks.base.TASK_KINDS`.
        meter: the streaming meter class (``meter(task, skip_expensive=...)``).
        resize_prediction: ``(pred [B, C, h, w], (H, W)) -> [B, C, H, W]``, a raw head output to its
            target's size.
        random_target: ``(spec, batch, (H, W), generator) -> target`` of the kind's format, on the CPU.
        to_rgb: ``(target as numpy, spec) -> (float[H, W, 3], colour-bar span or None)``.
    """

    name: str
    meter: type[Meter]
    resize_prediction: Callable[[Tensor, tuple[int, int]], Tensor]
    random_target: Callable[[TaskSpec, int, tuple[int, int], torch.Generator], Tensor]
    to_rgb: Callable[[np.ndarray, TaskSpec], Picture]


TASK_KIND_TABLE: dict[str, TaskKind] = {kind.name: kind for kind in (
    TaskKind("segmentation", SegmentationMeter, resize_labels, random_labels, labels_to_rgb),
    TaskKind("depth", DepthMeter, resize_bilinear, random_depth, depth_to_rgb),
    TaskKind("normals", NormalsMeter, resize_unit_vectors, random_normals, normals_to_rgb),
    TaskKind("saliency", SaliencyMeter, resize_probability_logits, random_binary, binary_to_rgb),
    TaskKind("edge", EdgeMeter, resize_probability_logits, random_binary, binary_to_rgb),
)}
if tuple(TASK_KIND_TABLE) != TASK_KINDS:  # a kind declared in tasks/base.py must get its row here
    raise RuntimeError(f"the task kind table {tuple(TASK_KIND_TABLE)} does not match TASK_KINDS {TASK_KINDS}")


def build_meter(task: TaskSpec, skip_expensive: bool = False) -> Meter:
    """The meter for ``task.kind`` (``skip_expensive``: leave out metrics such as odsF whose cost
    dwarfs the forward passes; used for the periodic evaluations during training).

    Raises:
        ValueError: the task asks for a metric its meter does not compute, or (edge) has no
            ``options["max_dist"]``.
    """
    try:
        kind = TASK_KIND_TABLE[task.kind]
    except KeyError:
        raise ValueError(f"task {task.name!r}: no meter for kind {task.kind!r}") from None
    return kind.meter(task, skip_expensive=skip_expensive)


def resize_prediction(pred: Tensor, size: tuple[int, int], kind: str) -> Tensor:
    """Bring a raw head output ``[B, C, h, w]`` to the target size (H, W) by the rule of ``kind``
    (:mod:`mtpeft_bench.metrics.resize`); unchanged when it already has that size. Returns float64
    for the probability kinds, the input's dtype otherwise.
    """
    size = (int(size[0]), int(size[1]))
    if tuple(pred.shape[-2:]) == size:
        return pred
    if kind not in TASK_KIND_TABLE:
        raise ValueError(f"no resize rule for task kind {kind!r}")
    return TASK_KIND_TABLE[kind].resize_prediction(pred, size)

