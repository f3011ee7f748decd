"""Reader for the NYUD_MT on-disk layout (PROTOCOL.md 1.3), shared by ``nyud`` and ``synth``.

Layout, relative to the root folder::

    images/<id>.jpg            RGB image
    gt_sets/<split>.txt        ids of a split, one per line
    segmentation/<id>.png      uint8, 0 = unlabelled, k = class k-1
    depth/<id>.npy             float HxW, metres (0 = missing; millimetres are auto-detected)
    normals/<id>.npy           float HxWx3 in [-1, 1] (zero vector = invalid)
    edge/<id>.npy              float HxW in {0, 1}

A dataset may declare more target folders (``synth`` adds ``saliency/<id>.png`` and
``parts/<id>.png``) through a ``sources`` table mapping task names to :class:`TargetSource`.

Decoding (the same rules as MTI-Net / MTLoRA's NYUD loader):

- ``label_png``: 0 -> ``ignore_index``, k -> k-1 (int64[H, W]);
- ``mask_png``: value / 255 > 0.5 -> {0, 1} (float32[1, H, W]);
- ``npy``: depth -> float32[1, H, W] metres (0 kept: ignore marking happens after resizing, in
  :class:`~mtpeft_bench.tasks.transforms.AddIgnoreRegions`); normals -> float32[3, H, W]; edge and
  saliency -> float32[1, H, W] binarised at 0.5.

:class:`LayoutDataset` turns a layout into the ``torch.utils.data.Dataset`` of ``tasks/base.py``:
it reads, applies the protocol transforms and checks every item's format (:func:`check_sample`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from PIL import Image

from mtpeft_bench.tasks.base import TaskSpec
from mtpeft_bench.tasks.transforms import Compose, build_transforms


log = logging.getLogger(__name__)

IMAGE_FOLDER = "images"
SPLIT_FOLDER = "gt_sets"
FORMATS = ("label_png", "mask_png", "npy")

# A depth map whose largest value exceeds this many "metres" is taken to be in millimetres
# (indoor depth never exceeds ~10 m; one NYUD_MT copy in the wild stores millimetres).
MM_DEPTH_THRESHOLD = 100.0


@dataclass(frozen=True)
class TargetSource:
    """Where a task's target files are and how they are decoded.

    Attributes:
        folder: folder under the root holding ``<id><suffix>`` files.
        format: ``label_png``, ``mask_png`` or ``npy`` (see the module docstring).
    """

    folder: str
    format: str

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ValueError(f"target format must be one of {FORMATS}, not {self.format!r}")

    @property
    def suffix(self) -> str:
        return ".npy" if self.format == "npy" else ".png"


NYUD_SOURCES: dict[str, TargetSource] = {
    "semseg": TargetSource("segmentation", "label_png"),
    "depth": TargetSource("depth", "npy"),
    "normals": TargetSource("normals", "npy"),
    "edge": TargetSource("edge", "npy"),
}


def read_split(root: Path, split: str) -> list[str]:
    """The ids listed in ``gt_sets/<split>.txt`` (blank lines and surrounding spaces dropped)."""
    path = Path(root) / SPLIT_FOLDER / f"{split}.txt"
    if not path.is_file():
        raise FileNotFoundError(f"split file {path} is missing")
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def missing_entries(root: Path, sources: Mapping[str, TargetSource], tasks: Sequence[str] = ()) -> list[str]:
    """Names of the layout folders under ``root`` that do not exist (images, gt_sets, task folders)."""
    root = Path(root)
    folders = [IMAGE_FOLDER, SPLIT_FOLDER] + [sources[t].folder for t in tasks if t in sources]
    return [f for f in dict.fromkeys(folders) if not (root / f).is_dir()]


class NyudLayout:
    """Read images and targets of one NYUD_MT-style folder.

    Args:
        root: the dataset folder (the one holding ``images/`` and ``gt_sets/``).
        sources: task name -> :class:`TargetSource` (default: the four NYUD tasks).
        depth_unit: ``"m"``, ``"mm"`` or ``"auto"`` (millimetres if a map's maximum exceeds
            ``MM_DEPTH_THRESHOLD``; logged once).
    """

    def __init__(self, root: Path | str, sources: Mapping[str, TargetSource] = NYUD_SOURCES,
                 depth_unit: str = "auto"):
        if depth_unit not in ("auto", "m", "mm"):
            raise ValueError(f"depth_unit must be 'auto', 'm' or 'mm', not {depth_unit!r}")
        self.root = Path(root)
        self.sources = dict(sources)
        self.depth_unit = depth_unit
        self._logged_mm = False

    def ids(self, split: str) -> list[str]:
        return read_split(self.root, split)

    def path(self, task: str, sample_id: str) -> Path:
        src = self.sources[task]
        return self.root / src.folder / f"{sample_id}{src.suffix}"

    def read_image(self, sample_id: str) -> np.ndarray:
        """uint8[H, W, 3] RGB."""
        with Image.open(self.root / IMAGE_FOLDER / f"{sample_id}.jpg") as img:
            return np.array(img.convert("RGB"), dtype=np.uint8)  # a writable copy for torch

    def read_target(self, spec: TaskSpec, sample_id: str) -> np.ndarray:
        """The decoded target of ``spec`` for one id, before resizing and ignore marking.

        Returns:
            segmentation int64[H, W]; depth float32[1, H, W]; normals float32[3, H, W];
            saliency / edge float32[1, H, W].
        """
        if spec.name not in self.sources:
            raise KeyError(f"no target source for task {spec.name!r} (known: {', '.join(self.sources)})")
        src = self.sources[spec.name]
        path = self.path(spec.name, sample_id)
        if src.format == "label_png":
            return decode_labels(_read_png(path), spec.ignore_index)
        if src.format == "mask_png":
            return (_read_png(path) > 127).astype(np.float32)[None]
        array = np.load(path).astype(np.float32, copy=False)
        if spec.kind == "depth":
            return self._depth_in_metres(_squeeze_to_2d(array, path), path)[None]
        if spec.kind == "normals":
            if array.ndim != 3 or array.shape[-1] != 3:
                raise ValueError(f"{path}: normals must be HxWx3, got shape {array.shape}")
            return np.ascontiguousarray(array.transpose(2, 0, 1))
        return (_squeeze_to_2d(array, path) > 0.5).astype(np.float32)[None]

    def _depth_in_metres(self, depth: np.ndarray, path: Path) -> np.ndarray:
        mm = self.depth_unit == "mm" or (self.depth_unit == "auto" and depth.size and depth.max() > MM_DEPTH_THRESHOLD)
        if not mm:
            return depth
        if self.depth_unit == "auto" and not self._logged_mm:
            log.info("depth maps in %s look like millimetres (e.g. %s); dividing by 1000", self.root, path.name)
            self._logged_mm = True
        return depth / np.float32(1000.0)


def decode_labels(stored: np.ndarray, ignore_index: int = 255) -> np.ndarray:
    """NYUD label rule: uint8[H, W] with 0 = unlabelled, k = class k-1 -> int64[H, W] (0 -> ignore)."""
    labels = stored.astype(np.int64) - 1
    labels[stored == 0] = ignore_index
    return labels


def _read_png(path: Path) -> np.ndarray:
    """A single-channel PNG as uint8[H, W] (palette PNGs keep their indices)."""
    with Image.open(path) as img:
        if img.mode not in ("L", "P"):
            img = img.convert("L")
        return np.asarray(img, dtype=np.uint8)


def _squeeze_to_2d(array: np.ndarray, path: Path) -> np.ndarray:
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim != 2:
        raise ValueError(f"{path}: expected an HxW array, got shape {array.shape}")
    return array


# -- the torch Dataset ------------------------------------------------------------------------

class LayoutDataset(torch.utils.data.Dataset):
    """Sample dicts of one split of a :class:`NyudLayout` (format: ``tasks/base.py``).

    Args:
        layout: the folder reader.
        split: the split name (``gt_sets/<split>.txt``).
        tasks: the task specs to load.
        image_size: (H, W) of the returned image and targets.
        train: apply the training augmentations.
        transform: replaces the protocol pipeline of ``build_transforms(image_size, train)``.
    """

    def __init__(self, layout: NyudLayout, split: str, tasks: Sequence[TaskSpec], image_size: tuple[int, int],
                 train: bool, transform: Compose | None = None):
        self.layout = layout
        self.split = split
        self.tasks = {t.name: t for t in tasks}
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.ids = layout.ids(split)
        self.transform = transform if transform is not None else build_transforms(self.image_size, train)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample_id = self.ids[index]
        image = self.layout.read_image(sample_id)
        h0, w0 = image.shape[:2]
        sample: dict[str, Any] = {"image": torch.from_numpy(image).permute(2, 0, 1).float().div_(255.0)}
        for name, spec in self.tasks.items():
            target = self.layout.read_target(spec, sample_id)
            if target.shape[-2:] != (h0, w0):
                raise ValueError(f"{self.layout.path(name, sample_id)}: target is {target.shape[-2:]}, "
                                 f"image is {(h0, w0)}")
            sample[name] = torch.from_numpy(np.ascontiguousarray(target))
        sample = self.transform(sample, self.tasks)
        sample["meta"] = {"id": sample_id, "size": (h0, w0)}
        check_sample(sample, self.tasks.values(), self.image_size)
        return sample


def check_sample(sample: Mapping[str, Any], tasks: Sequence[TaskSpec] | Any, image_size: tuple[int, int]) -> None:
    """Raise ValueError unless ``sample`` has the formats of ``tasks/base.py`` at ``image_size``.

    Checks dtype and shape of the image and every target, and that values lie in the task's
    value set (class ids < num_outputs or ignore; {0, 1}; depth > 0 or ignore).
    """
    h, w = image_size
    what = sample.get("meta", {}).get("id", "?")

    def fail(msg: str) -> None:
        raise ValueError(f"sample {what}: {msg}")

    image = sample["image"]
    if image.dtype != torch.float32 or tuple(image.shape) != (3, h, w):
        fail(f"image must be float32[3, {h}, {w}], got {image.dtype}{list(image.shape)}")
    for spec in tasks:
        t = sample[spec.name]
        if spec.kind == "segmentation":
            if t.dtype != torch.int64 or tuple(t.shape) != (h, w):
                fail(f"{spec.name} must be int64[{h}, {w}], got {t.dtype}{list(t.shape)}")
            if bool(((t < 0) | ((t >= spec.num_outputs) & (t != spec.ignore_index))).any()):
                fail(f"{spec.name} has class ids outside 0..{spec.num_outputs - 1} and ignore {spec.ignore_index}")
            continue
        channels = 3 if spec.kind == "normals" else 1
        if t.dtype != torch.float32 or tuple(t.shape) != (channels, h, w):
            fail(f"{spec.name} must be float32[{channels}, {h}, {w}], got {t.dtype}{list(t.shape)}")
        if spec.kind in ("saliency", "edge") and bool(((t != 0) & (t != 1)).any()):
            fail(f"{spec.name} must be binary (0/1)")
        if spec.kind == "depth" and bool(((t <= 0) & (t != spec.ignore_index)).any()):
            fail(f"{spec.name} has non-positive depths that are not marked {spec.ignore_index}")
