"""Per-sample transforms of the MTLoRA / MTI-Net protocol (PROTOCOL.md section 2), on torch tensors.

A sample is a dict ``{"image": float32[3, H, W] in [0, 1], "<task>": target, ...}`` whose targets
come in the formats of ``tasks/base.py`` *before* ignore marking:

- segmentation ``int64[H, W]`` (void already ``ignore_index``),
- depth ``float32[1, H, W]`` with 0 = no measurement,
- normals ``float32[3, H, W]`` with the zero vector = invalid,
- saliency / edge ``float32[1, H, W]`` in {0, 1}.

Keys that are not the image or a task (e.g. ``"meta"``) pass through untouched. Every transform is
a callable ``transform(sample, tasks) -> sample`` where ``tasks`` maps task names to their
:class:`~mtpeft_bench.tasks.base.TaskSpec`; the spec's ``kind`` and ``interpolation`` say how a
target is treated, so a transform never needs to know a dataset.

Pipelines (:func:`build_transforms`)::

    train: RandomHorizontalFlip -> [more augmentations] -> FixedResize -> AddIgnoreRegions -> Normalize
    eval:  FixedResize -> AddIgnoreRegions -> Normalize

Ignore marking comes *after* resizing on purpose: the ``normals`` interpolation averages vectors,
and an ignore value of 255 would leak into its valid neighbours, whereas the zero vector simply
drops out of the renormalised average.

Adding an augmentation (e.g. ScaleNRotate with rotated normals, or a zoom that divides depth by the
zoom factor) means writing one more class with the same ``__call__(sample, tasks)`` signature and
passing it in ``build_transforms(..., augmentations=[...])``.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
import torch.nn.functional as F

from mtpeft_bench.tasks.base import TaskSpec


Sample = dict[str, Any]
Transform = Callable[[Sample, Mapping[str, TaskSpec]], Sample]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _task_items(sample: Sample, tasks: Mapping[str, TaskSpec]) -> Iterable[tuple[str, TaskSpec]]:
    """The (name, spec) of every task that has a target in ``sample``."""
    return ((name, spec) for name, spec in tasks.items() if name in sample)


class Compose:
    """Apply transforms in order: ``Compose([a, b])(s, tasks) == b(a(s, tasks), tasks)``."""

    def __init__(self, transforms: Sequence[Transform]):
        self.transforms = list(transforms)

    def __call__(self, sample: Sample, tasks: Mapping[str, TaskSpec]) -> Sample:
        for transform in self.transforms:
            sample = transform(sample, tasks)
        return sample

    def __repr__(self) -> str:
        return f"Compose({', '.join(type(t).__name__ for t in self.transforms)})"


class RandomHorizontalFlip:
    """Mirror image and targets left-right with probability ``p``.

    Mirroring negates the horizontal component of a normal, so channel 0 of every ``normals``
    target is negated (channel 0 is the image's left-to-right axis in every dataset here); pixels
    already marked ``ignore_index`` keep that value.

    Randomness comes from torch's global generator, or from ``generator`` if given, so
    DataLoader workers (which seed torch per worker) draw independent, reproducible flips.
    """

    def __init__(self, p: float = 0.5, generator: torch.Generator | None = None):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"flip probability must be in [0, 1], got {p}")
        self.p = p
        self.generator = generator

    def __call__(self, sample: Sample, tasks: Mapping[str, TaskSpec]) -> Sample:
        if self.p == 0.0 or float(torch.rand((), generator=self.generator)) >= self.p:
            return sample
        out = dict(sample)
        out["image"] = sample["image"].flip(-1)
        for name, spec in _task_items(sample, tasks):
            target = sample[name].flip(-1)
            if spec.kind == "normals":
                target = target.clone()
                x = target[0]
                target[0] = torch.where(x == spec.ignore_index, x, -x)
            out[name] = target
        return out


def resize_image(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bicubic resize of a float32[3, H, W] image in [0, 1]; clamped because cubic overshoots."""
    if tuple(image.shape[-2:]) == tuple(size):
        return image
    out = F.interpolate(image[None], size=size, mode="bicubic", align_corners=False)[0]
    return out.clamp_(0.0, 1.0)


def resize_target(target: torch.Tensor, size: tuple[int, int], interpolation: str,
                  ignore_index: int = 255) -> torch.Tensor:
    """Resize one target to ``size`` = (H, W), keeping its dtype.

    Args:
        target: ``[H, W]`` (segmentation) or ``[C, H, W]``.
        interpolation: ``nearest`` (labels: values stay in the input's value set), ``linear``
            (bilinear) or ``normals`` (bilinear, then each vector scaled back to unit length;
            vectors that are zero, or marked ``ignore_index`` in all channels, count as zero and
            stay exactly zero).
    """
    if tuple(target.shape[-2:]) == tuple(size):
        return target
    squeeze = target.dim() == 2
    x = target[None, None] if squeeze else target[None]
    if interpolation == "nearest":
        # "nearest-exact" samples the source pixel whose centre is closest (PIL/cv2 semantics);
        # plain "nearest" is biased by half a pixel towards the top-left.
        out = F.interpolate(x.float(), size=size, mode="nearest-exact").to(target.dtype)
    elif interpolation == "linear":
        out = F.interpolate(x.float(), size=size, mode="bilinear", align_corners=False).to(target.dtype)
    elif interpolation == "normals":
        x = x.float()
        invalid = (x == ignore_index).all(dim=1, keepdim=True)
        x = x.masked_fill(invalid, 0.0)
        out = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        norm = out.norm(dim=1, keepdim=True)
        # A pixel fed only by invalid (zero) neighbours has norm 0 and stays zero; any valid
        # neighbour makes the average a non-zero vector, which is renormalised.
        out = torch.where(norm > 1e-6, out / norm.clamp_min(1e-6), torch.zeros_like(out))
    else:
        raise ValueError(f"unknown interpolation {interpolation!r}")
    return out[0, 0] if squeeze else out[0]


class FixedResize:
    """Resize image and every target to ``size`` = (H, W), aspect ratio not kept (PROTOCOL.md 2).

    The image is resized bicubically and clamped to [0, 1]; each target with its task's
    ``interpolation``. A sample already at ``size`` is returned unchanged (bit-exact).
    """

    def __init__(self, size: tuple[int, int]):
        h, w = (int(s) for s in size)
        if h < 1 or w < 1:
            raise ValueError(f"resize size must be positive, got {size}")
        self.size = (h, w)

    def __call__(self, sample: Sample, tasks: Mapping[str, TaskSpec]) -> Sample:
        out = dict(sample)
        out["image"] = resize_image(sample["image"], self.size)
        for name, spec in _task_items(sample, tasks):
            out[name] = resize_target(sample[name], self.size, spec.interpolation, spec.ignore_index)
        return out


class AddIgnoreRegions:
    """Mark invalid target pixels with the task's ``ignore_index``.

    - normals: a vector of zero norm -> ``ignore_index`` in all 3 channels;
    - depth: 0 (no measurement) -> ``ignore_index``;
    - tasks named in ``all_zero_to_ignore`` (default ``human_parts``): a map that is all 0 (an image
      without annotated persons) becomes all ``ignore_index``, so it does not count as background.
    """

    def __init__(self, all_zero_to_ignore: Sequence[str] = ("human_parts",)):
        self.all_zero_to_ignore = tuple(all_zero_to_ignore)

    def __call__(self, sample: Sample, tasks: Mapping[str, TaskSpec]) -> Sample:
        out = dict(sample)
        for name, spec in _task_items(sample, tasks):
            target = sample[name]
            if spec.kind == "normals":
                invalid = (target == 0).all(dim=0, keepdim=True)
                target = target.masked_fill(invalid, float(spec.ignore_index))
            elif spec.kind == "depth":
                target = target.masked_fill(target == 0, float(spec.ignore_index))
            if name in self.all_zero_to_ignore and not bool(target.any()):
                target = torch.full_like(target, spec.ignore_index)
            out[name] = target
        return out


class Normalize:
    """Subtract ``mean`` and divide by ``std`` per image channel (ImageNet statistics by default)."""

    def __init__(self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD):
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)

    def __call__(self, sample: Sample, tasks: Mapping[str, TaskSpec]) -> Sample:
        out = dict(sample)
        out["image"] = (sample["image"] - self.mean) / self.std
        return out


def denormalize(image: torch.Tensor, mean: Sequence[float] = IMAGENET_MEAN,
                std: Sequence[float] = IMAGENET_STD) -> torch.Tensor:
    """Undo :class:`Normalize` on a float[3, H, W] (or [B, 3, H, W]) image; result clamped to [0, 1]."""
    m = torch.tensor(mean, dtype=image.dtype).view(-1, 1, 1)
    s = torch.tensor(std, dtype=image.dtype).view(-1, 1, 1)
    return (image * s + m).clamp(0.0, 1.0)


def build_transforms(image_size: tuple[int, int], train: bool,
                     augmentations: Sequence[Transform] | None = None,
                     ignore: AddIgnoreRegions | None = None) -> Compose:
    """The protocol pipeline.

    Args:
        image_size: (H, W) every sample is resized to.
        train: prepend the augmentations (default: a horizontal flip with p = 0.5).
        augmentations: replaces the default training augmentations, applied in order before the
            resize (e.g. ``[RandomHorizontalFlip(), ScaleNRotate(...)]``).
        ignore: the ignore-marking step (default :class:`AddIgnoreRegions` with its defaults).
    """
    steps: list[Transform] = []
    if train:
        steps += list(augmentations) if augmentations is not None else [RandomHorizontalFlip(0.5)]
    steps += [FixedResize(image_size), ignore if ignore is not None else AddIgnoreRegions(), Normalize()]
    return Compose(steps)
