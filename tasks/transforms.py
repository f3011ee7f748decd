# Over 400 lines on purpose: the protocol's whole per-sample pipeline reads best in one file; each
# transform is short.
"""Per-sample transforms of the MTLoRA / MTI-Net protocol (docs/protocol.md section 2), on torch tensors.

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

import math
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


NEAREST_MODES = ("cv2", "centre")
NORMALS_MODES = ("cubic", "linear")


def resize_target(target: torch.Tensor, size: tuple[int, int], interpolation: str,
                  ignore_index: int = 255, nearest: str = "cv2", normals: str = "cubic") -> torch.Tensor:
    """Resize one target to ``size`` = (H, W), keeping its dtype.

    Args:
        target: ``[H, W]`` (segmentation) or ``[C, H, W]``.
        interpolation: ``nearest`` (labels: values stay in the input's value set), ``linear``
            (bilinear) or ``normals`` (see ``normals``; then each vector is scaled back to unit
            length; vectors that are zero, or marked ``ignore_index`` in all channels, count as
            zero, and a pixel whose interpolation taps are all zero stays exactly zero).
        nearest: ``cv2`` (the reference: OpenCV's ``INTER_NEAREST`` takes source pixel
            ``floor(dst * src_size / dst_size)``, i.e. torch's ``nearest``) or ``centre`` (the
            source pixel whose centre is closest, torch's ``nearest-exact`` / PIL).
        normals: ``cubic`` (the reference's ``INTER_CUBIC`` for normals, docs/protocol.md 2 FLAGVALS)
            or ``linear`` (bilinear, which never spreads a valid vector more than one pixel).
    """
    if tuple(target.shape[-2:]) == tuple(size):
        return target
    squeeze = target.dim() == 2
    x = target[None, None] if squeeze else target[None]
    if interpolation == "nearest":
        if nearest not in NEAREST_MODES:
            raise ValueError(f"nearest must be one of {NEAREST_MODES}, not {nearest!r}")
        mode = "nearest" if nearest == "cv2" else "nearest-exact"
        out = F.interpolate(x.float(), size=size, mode=mode).to(target.dtype)
    elif interpolation == "linear":
        out = F.interpolate(x.float(), size=size, mode="bilinear", align_corners=False).to(target.dtype)
    elif interpolation == "normals":
        if normals not in NORMALS_MODES:
            raise ValueError(f"normals interpolation must be one of {NORMALS_MODES}, not {normals!r}")
        x = x.double()
        invalid = (x == ignore_index).all(dim=1, keepdim=True)
        x = x.masked_fill(invalid, 0.0)
        mode = "bicubic" if normals == "cubic" else "bilinear"
        out = F.interpolate(x, size=size, mode=mode, align_corners=False)
        norm = out.norm(dim=1, keepdim=True)
        # As the reference (n / (|n| + eps)): any non-zero vector becomes unit length; a pixel
        # whose taps are all zero (invalid) is exactly zero and is marked ignore later.
        out = torch.where(norm > 0, out / norm.clamp_min(1e-300), torch.zeros_like(out)).to(target.dtype)
    else:
        raise ValueError(f"unknown interpolation {interpolation!r}")
    return out[0, 0] if squeeze else out[0]


class FixedResize:
    """Resize image and every target to ``size`` = (H, W), aspect ratio not kept (docs/protocol.md 2).

    The image is resized bicubically and clamped to [0, 1] (the reference resizes float images
    with OpenCV's cubic and casts to uint8 afterwards; the clamp is the well-defined version of
    that cast); each target with its task's ``interpolation`` (``nearest`` and ``normals`` modes
    as in :func:`resize_target`). A sample already at ``size`` is returned unchanged (bit-exact).

    Args:
        size: (H, W).
        nearest: ``cv2`` (reference) or ``centre``, see :func:`resize_target`.
        normals: ``cubic`` (reference) or ``linear``.
        targets: resize the targets too (False: only the image, for evaluation at the original
            resolution, docs/protocol.md 2 "MTI-Net").
    """

    def __init__(self, size: tuple[int, int], nearest: str = "cv2", normals: str = "cubic", targets: bool = True):
        h, w = (int(s) for s in size)
        if h < 1 or w < 1:
            raise ValueError(f"resize size must be positive, got {size}")
        if nearest not in NEAREST_MODES:
            raise ValueError(f"nearest must be one of {NEAREST_MODES}, not {nearest!r}")
        if normals not in NORMALS_MODES:
            raise ValueError(f"normals interpolation must be one of {NORMALS_MODES}, not {normals!r}")
        self.size = (h, w)
        self.nearest = nearest
        self.normals = normals
        self.targets = targets

    def __call__(self, sample: Sample, tasks: Mapping[str, TaskSpec]) -> Sample:
        out = dict(sample)
        out["image"] = resize_image(sample["image"], self.size)
        if self.targets:
            for name, spec in _task_items(sample, tasks):
                out[name] = resize_target(sample[name], self.size, spec.interpolation, spec.ignore_index,
                                          nearest=self.nearest, normals=self.normals)
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


BORDER_FILLS = ("zero", "ignore")


def _affine_source_coords(height: int, width: int, angle_deg: float, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Source pixel coordinates (x, y), float64[H, W] each, of every destination pixel of OpenCV's
    ``warpAffine(src, getRotationMatrix2D((w / 2, h / 2), angle, scale), (w, h))``.

    OpenCV's matrix M maps source to destination pixel indices (pixel centres at integers; a
    positive angle turns the content counter-clockwise on screen); the warp samples the source at
    M^-1 applied to each destination index.
    """
    cx, cy = width / 2.0, height / 2.0
    a = scale * math.cos(math.radians(angle_deg))
    b = scale * math.sin(math.radians(angle_deg))
    # M = [[a, b, (1 - a) cx - b cy], [-b, a, b cx + (1 - a) cy]]; invert the similarity.
    tx, ty = (1 - a) * cx - b * cy, b * cx + (1 - a) * cy
    det = a * a + b * b
    y, x = torch.meshgrid(torch.arange(height, dtype=torch.float64), torch.arange(width, dtype=torch.float64),
                          indexing="ij")
    u, v = x - tx, y - ty
    return (a * u - b * v) / det, (b * u + a * v) / det


def warp(x: torch.Tensor, sx: torch.Tensor, sy: torch.Tensor, mode: str, fill: float = 0.0) -> torch.Tensor:
    """Sample ``x`` ``[C, H, W]`` at source coordinates ``sx``/``sy`` ``[H, W]`` (pixel indices).

    ``mode``: ``nearest`` (OpenCV rounds the source coordinate half up) or ``cubic`` (bicubic,
    a = -0.75 as OpenCV; taps outside the image count as 0, OpenCV's constant border). Pixels whose
    source lies outside the image get ``fill`` (nearest) or are built from zero taps (cubic).
    """
    c, h, w = x.shape
    if mode == "nearest":
        ix = torch.floor(sx + 0.5).long()
        iy = torch.floor(sy + 0.5).long()
        inside = (ix >= 0) & (ix < w) & (iy >= 0) & (iy < h)
        flat = (iy.clamp(0, h - 1) * w + ix.clamp(0, w - 1)).reshape(-1)
        out = x.reshape(c, -1)[:, flat].reshape(c, h, w)
        return torch.where(inside, out, torch.full_like(out, fill))
    if mode == "cubic":
        # grid_sample's normalised coordinates with align_corners=True: -1 and 1 are the centres
        # of the first and last pixels, i.e. pixel index i -> 2 i / (n - 1) - 1.
        gx = 2 * sx / max(w - 1, 1) - 1
        gy = 2 * sy / max(h - 1, 1) - 1
        grid = torch.stack([gx, gy], dim=-1)[None].to(torch.float64)
        out = F.grid_sample(x[None].double(), grid, mode="bicubic", padding_mode="zeros", align_corners=True)[0]
        return out.to(x.dtype)
    raise ValueError(f"unknown warp mode {mode!r}")


class ScaleNRotate:
    """Random rotation and zoom about the image centre, canvas size kept (ASTMT ``ScaleNRotate``).

    docs/protocol.md 2: PASCAL draws the angle from U[-20°, 20°] and the scale from U[0.75, 1.25]
    (``rotations=(-20, 20), scales=(0.75, 1.25)``, tuples = continuous ranges); NYUD keeps the angle
    at 0 and picks the scale from {1, 1.2, 1.5} (``rotations=[0], scales=[1.0, 1.2, 1.5]``, lists =
    discrete choices). Each sample is warped with OpenCV's ``getRotationMatrix2D((w/2, h/2), angle,
    scale)``: the image and normals bicubically, every other target with nearest neighbour
    (FLAGVALS). The normals' in-plane components are rotated by the same angle before the warp,
    exactly as the reference: with a = atan2(n_x, n_y) and ρ = |(n_x, n_y)|,
    n_x ← ρ sin(a + θ), n_y ← ρ cos(a + θ); n_z and the norm are unchanged. Depth is divided by
    the scale (zooming in by s brings the scene s times closer).

    Args:
        rotations: (min, max) degrees, or a list of angles to choose from.
        scales: (min, max), or a list of scales to choose from (same type as ``rotations``).
        border: what fills the canvas outside the warped image: ``zero`` (the reference: 0, i.e.
            background for semseg/parts, non-salient, no edge, missing depth, invalid normals) or
            ``ignore`` (label targets get their ``ignore_index`` there; docs/protocol.md 8 item 5).
        generator: torch generator for the draws (default: torch's global one).
    """

    def __init__(self, rotations: tuple[float, float] | Sequence[float] = (-20.0, 20.0),
                 scales: tuple[float, float] | Sequence[float] = (0.75, 1.25), border: str = "zero",
                 generator: torch.Generator | None = None):
        if isinstance(rotations, tuple) != isinstance(scales, tuple):
            raise ValueError("rotations and scales must both be (min, max) tuples or both be lists")
        if isinstance(rotations, tuple) and (len(rotations) != 2 or len(scales) != 2):
            raise ValueError("(min, max) ranges need exactly two values")
        if not len(rotations) or not len(scales) or min(scales) <= 0:
            raise ValueError(f"scales must be positive and non-empty, got {scales}")
        if border not in BORDER_FILLS:
            raise ValueError(f"border must be one of {BORDER_FILLS}, not {border!r}")
        self.rotations = rotations
        self.scales = scales
        self.border = border
        self.generator = generator

    def _draw(self) -> tuple[float, float]:
        def uniform(lo: float, hi: float) -> float:
            return lo + (hi - lo) * float(torch.rand((), generator=self.generator, dtype=torch.float64))

        def choice(values: Sequence[float]) -> float:
            return float(values[int(torch.randint(len(values), (), generator=self.generator))])

        if isinstance(self.rotations, tuple):
            return uniform(*self.rotations), uniform(*self.scales)
        return choice(self.rotations), choice(self.scales)

    def __call__(self, sample: Sample, tasks: Mapping[str, TaskSpec]) -> Sample:
        angle, scale = self._draw()
        return self.apply(sample, tasks, angle, scale)

    def apply(self, sample: Sample, tasks: Mapping[str, TaskSpec], angle: float, scale: float) -> Sample:
        """Warp ``sample`` with a given ``angle`` (degrees) and ``scale``."""
        out = dict(sample)
        h, w = sample["image"].shape[-2:]
        sx, sy = _affine_source_coords(h, w, angle, scale)
        out["image"] = warp(sample["image"], sx, sy, "cubic")
        for name, spec in _task_items(sample, tasks):
            target = sample[name]
            if tuple(target.shape[-2:]) != (h, w):
                raise ValueError(f"{name} target is {tuple(target.shape[-2:])}, the image is {(h, w)}")
            squeeze = target.dim() == 2
            t = target[None] if squeeze else target
            if spec.kind == "normals":
                t = rotate_normals(t.double(), angle, spec.ignore_index)
                t = warp(t, sx, sy, "cubic").to(target.dtype)
            else:
                fill = float(spec.ignore_index) if self.border == "ignore" and spec.kind != "depth" else 0.0
                t = warp(t, sx, sy, "nearest", fill=fill)
                if spec.kind == "depth":
                    t = torch.where(t == spec.ignore_index, t, t / scale)
            out[name] = t[0] if squeeze else t
        return out

    def __repr__(self) -> str:
        return f"ScaleNRotate(rotations={self.rotations}, scales={self.scales}, border={self.border!r})"


def rotate_normals(normals: torch.Tensor, angle_deg: float, ignore_index: int = 255) -> torch.Tensor:
    """Rotate the in-plane (x, y) components of ``normals`` ``[3, H, W]`` by ``angle_deg``, as ASTMT's
    ScaleNRotate: n_x' = n_x cos θ + n_y sin θ, n_y' = n_y cos θ - n_x sin θ (the closed form of its
    atan2 / sin / cos expression). Vectors marked ``ignore_index`` are left alone."""
    theta = math.radians(angle_deg)
    c, s = math.cos(theta), math.sin(theta)
    x, y = normals[0], normals[1]
    ignored = (normals == ignore_index).all(dim=0)
    out = normals.clone()
    out[0] = torch.where(ignored, x, x * c + y * s)
    out[1] = torch.where(ignored, y, y * c - x * s)
    return out


def build_transforms(image_size: tuple[int, int], train: bool,
                     augmentations: Sequence[Transform] | None = None,
                     ignore: AddIgnoreRegions | None = None,
                     resize: FixedResize | None = None) -> Compose:
    """The protocol pipeline.

    Args:
        image_size: (H, W) every sample is resized to.
        train: prepend the augmentations (default: a horizontal flip with p = 0.5).
        augmentations: replaces the default training augmentations, applied in order before the
            resize (e.g. ``[RandomHorizontalFlip(), ScaleNRotate(...)]``).
        ignore: the ignore-marking step (default :class:`AddIgnoreRegions` with its defaults).
        resize: the resize step (default ``FixedResize(image_size)`` with the reference's modes).
    """
    steps: list[Transform] = []
    if train:
        steps += list(augmentations) if augmentations is not None else [RandomHorizontalFlip(0.5)]
    steps += [resize if resize is not None else FixedResize(image_size),
              ignore if ignore is not None else AddIgnoreRegions(), Normalize()]
    return Compose(steps)
