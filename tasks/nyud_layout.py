"""Reader for the NYUD_MT on-disk layout (docs/protocol.md 1.3), shared by ``nyud`` and ``synth``.

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
  saliency -> float32[1, H, W] binarised at 0.5;
- ``normals_png`` (ATRC): RGB uint8 v -> 2 v / 255 - 1 (float32[3, H, W]);
- ``edge_png`` (ATRC): v / 255 binarised at 0.5 (float32[1, H, W]).

Every read error (missing, truncated or undecodable file, wrong shape) is raised as
:class:`DataFileError`, a :class:`~mtpeft_bench.errors.UserError` whose one line names the file.

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

from mtpeft_bench.errors import UserError
from mtpeft_bench.tasks.base import TaskSpec
from mtpeft_bench.tasks.transforms import Compose, build_transforms


log = logging.getLogger(__name__)

IMAGE_FOLDER = "images"
SPLIT_FOLDER = "gt_sets"
FORMATS = ("label_png", "mask_png", "npy", "normals_png", "edge_png")

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


class DataFileError(UserError):
    """A dataset file is missing, unreadable or malformed; the message starts with its path."""

    def __init__(self, path: Path | str, problem: str):
        self.path = str(path)
        self.problem = " ".join(str(problem).split())
        super().__init__(f"{self.path}: {self.problem}")


def open_image_array(path: Path, mode: str | None = None) -> np.ndarray:
    """Decode an image file fully into a writable uint8 array (``mode``: PIL mode to convert to;
    ``None`` keeps single-channel L/P images as they are and converts others to L).

    Raises:
        DataFileError: missing, truncated or undecodable.
    """
    try:
        with Image.open(path) as img:
            if mode is not None:
                img = img.convert(mode)
            elif img.mode not in ("L", "P"):
                img = img.convert("L")
            return np.array(img, dtype=np.uint8)
    except FileNotFoundError:
        raise DataFileError(path, "file is missing") from None
    except (OSError, ValueError, SyntaxError) as exc:  # PIL: truncated / not an image / bad header
        raise DataFileError(path, f"cannot be decoded ({exc})") from None


def load_npy(path: Path) -> np.ndarray:
    """``np.load`` with one-line errors naming the file (pickled objects refused)."""
    try:
        return np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise DataFileError(path, "file is missing") from None
    except (OSError, ValueError, EOFError) as exc:
        raise DataFileError(path, f"is not a readable .npy array ({exc})") from None


NYUD_SOURCES: dict[str, TargetSource] = {
    "semseg": TargetSource("segmentation", "label_png"),
    "depth": TargetSource("depth", "npy"),
    "normals": TargetSource("normals", "npy"),
    "edge": TargetSource("edge", "npy"),
}


def read_split(root: Path, split: str, folder: str = SPLIT_FOLDER) -> list[str]:
    """The ids listed in ``<folder>/<split>.txt`` (blank lines and surrounding spaces dropped).

    Raises:
        DataFileError: the file is missing, unreadable or lists no id.
    """
    return read_id_list(Path(root) / folder / f"{split}.txt")


def read_id_list(path: Path) -> list[str]:
    """Ids in a text file, one per line. Raises :class:`DataFileError` if missing, unreadable or empty."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise DataFileError(path, "split file is missing") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataFileError(path, f"split file cannot be read ({exc})") from None
    ids = [line.strip() for line in text.splitlines() if line.strip()]
    if not ids:
        raise DataFileError(path, "split file lists no image id")
    return ids


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
        image_suffix: ``.jpg`` (NYUD_MT) or ``.png`` (ATRC).
    """

    def __init__(self, root: Path | str, sources: Mapping[str, TargetSource] = NYUD_SOURCES,
                 depth_unit: str = "auto", image_suffix: str = ".jpg"):
        if depth_unit not in ("auto", "m", "mm"):
            raise ValueError(f"depth_unit must be 'auto', 'm' or 'mm', not {depth_unit!r}")
        self.root = Path(root)
        self.sources = dict(sources)
        self.depth_unit = depth_unit
        self.image_suffix = image_suffix
        self._logged_mm = False

    def ids(self, split: str) -> list[str]:
        return read_split(self.root, split)

    def split_file(self, split: str) -> Path:
        return self.root / SPLIT_FOLDER / f"{split}.txt"

    def image_path(self, sample_id: str) -> Path:
        return self.root / IMAGE_FOLDER / f"{sample_id}{self.image_suffix}"

    def path(self, task: str, sample_id: str) -> Path:
        src = self.sources[task]
        return self.root / src.folder / f"{sample_id}{src.suffix}"

    def files(self, sample_id: str, tasks: Sequence[str]) -> list[Path]:
        """Every file one sample of ``tasks`` reads (the image first)."""
        return [self.image_path(sample_id)] + [self.path(t, sample_id) for t in tasks]

    def read_image(self, sample_id: str) -> np.ndarray:
        """uint8[H, W, 3] RGB."""
        return open_image_array(self.image_path(sample_id), "RGB")

    def read_target(self, spec: TaskSpec, sample_id: str) -> np.ndarray:
        """The decoded target of ``spec`` for one id, before resizing and ignore marking.

        Returns:
            segmentation int64[H, W]; depth float32[1, H, W]; normals float32[3, H, W];
            saliency / edge float32[1, H, W].

        Raises:
            DataFileError: the file is missing, cannot be decoded or has the wrong shape.
        """
        if spec.name not in self.sources:
            raise KeyError(f"no target source for task {spec.name!r} (known: {', '.join(self.sources)})")
        src = self.sources[spec.name]
        path = self.path(spec.name, sample_id)
        if src.format == "label_png":
            return decode_labels(open_image_array(path), spec.ignore_index)
        if src.format in ("mask_png", "edge_png"):
            return (open_image_array(path) > 127).astype(np.float32)[None]
        if src.format == "normals_png":
            rgb = open_image_array(path, "RGB").astype(np.float32)
            return np.ascontiguousarray((2.0 * rgb / 255.0 - 1.0).transpose(2, 0, 1))
        array = load_npy(path)
        if not np.issubdtype(array.dtype, np.number):
            raise DataFileError(path, f"holds {array.dtype} values, not numbers")
        array = array.astype(np.float32, copy=False)
        if spec.kind == "depth":
            return self._depth_in_metres(_squeeze_to_2d(array, path), path)[None]
        if spec.kind == "normals":
            if array.ndim != 3 or array.shape[-1] != 3:
                raise DataFileError(path, f"normals must be HxWx3, got shape {array.shape}")
            return np.ascontiguousarray(array.transpose(2, 0, 1))
        return (_squeeze_to_2d(array, path) > 0.5).astype(np.float32)[None]

    def _depth_in_metres(self, depth: np.ndarray, path: Path) -> np.ndarray:
        mm = self.depth_unit == "mm" or (self.depth_unit == "auto" and depth.size and depth.max() > MM_DEPTH_THRESHOLD)
        if not mm:
            return depth
        if self.depth_unit == "auto" and not self._logged_mm:
            log.warning("depth maps in %s look like millimetres (%s has values up to %.0f); dividing by 1000 "
                        "(set data.depth_unit=m or mm to decide yourself)", self.root, path.name, float(depth.max()))
            self._logged_mm = True
        return depth / np.float32(1000.0)


def decode_labels(stored: np.ndarray, ignore_index: int = 255) -> np.ndarray:
    """NYUD label rule: uint8[H, W] with 0 = unlabelled, k = class k-1 -> int64[H, W] (0 -> ignore)."""
    labels = stored.astype(np.int64) - 1
    labels[stored == 0] = ignore_index
    return labels


def _squeeze_to_2d(array: np.ndarray, path: Path) -> np.ndarray:
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim != 2:
        raise DataFileError(path, f"expected an HxW array, got shape {array.shape}")
    return array


# -- the torch Dataset ------------------------------------------------------------------------

class LayoutDataset(torch.utils.data.Dataset):
    """Sample dicts of one split of a layout reader (format: ``tasks/base.py``).

    The layout is any object with ``ids(split)``, ``files(id, tasks)``, ``read_image(id)``,
    ``read_target(spec, id)`` and ``path(task, id)`` (:class:`NyudLayout`,
    :class:`~mtpeft_bench.tasks.pascal_layout.PascalLayout`). Building the dataset checks that every
    file of the split exists, so a missing file stops the run before training with one line.

    Args:
        layout: the folder reader.
        split: the split name.
        tasks: the task specs to load.
        image_size: (H, W) of the returned image (and of the targets, unless ``original_size``).
        train: apply the training augmentations.
        transform: replaces the protocol pipeline of ``build_transforms(image_size, train)``.
        original_size: the targets stay at the image's original size (evaluation at the original
            resolution, docs/protocol.md 2 "MTI-Net"); ``transform`` must then resize only the image.
            Such a dataset asks for ``eval_batch_size = 1``, because images of different sizes
            cannot share a batch.
        ids: use these ids instead of the split file's (e.g. a filtered subset).
    """

    def __init__(self, layout: Any, split: str, tasks: Sequence[TaskSpec], image_size: tuple[int, int],
                 train: bool, transform: Compose | None = None, original_size: bool = False,
                 ids: Sequence[str] | None = None):
        self.layout = layout
        self.split = split
        self.tasks = {t.name: t for t in tasks}
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.ids = list(ids) if ids is not None else layout.ids(split)
        self.transform = transform if transform is not None else build_transforms(self.image_size, train)
        self.original_size = bool(original_size)
        # read by the runner: the dataset declares how evaluation must batch it
        self.eval_batch_size = 1 if self.original_size else None
        missing = [p for sid in self.ids for p in layout.files(sid, list(self.tasks)) if not p.is_file()]
        if missing:
            more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
            raise DataFileError(missing[0], f"file is missing{more} (split '{split}'); "
                                "`mtbench data verify` lists every problem")

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
                raise DataFileError(self.layout.path(name, sample_id),
                                    f"target is {target.shape[-2]}x{target.shape[-1]}, its image is {h0}x{w0}")
            check_target_values(spec, target, self.layout.path(name, sample_id))
            sample[name] = torch.from_numpy(np.ascontiguousarray(target))
        sample = self.transform(sample, self.tasks)
        sample["meta"] = {"id": sample_id, "size": (h0, w0)}
        check_sample(sample, self.tasks.values(), self.image_size, target_size=(h0, w0) if self.original_size else None)
        return sample


def check_target_values(spec: TaskSpec, target: np.ndarray, path: Path) -> None:
    """Check a decoded target (before transforms) against its task's value set.

    segmentation: class ids in 0..C-1 or ``ignore_index``; saliency / edge: {0, 1}; depth and
    normals: finite, depth >= 0, normals within [-1, 1] (a little slack for rounding).

    Raises:
        DataFileError: naming ``path`` and the offending values.
    """
    if spec.kind == "segmentation":
        bad = (target < 0) | ((target >= spec.num_outputs) & (target != spec.ignore_index))
        if bad.any():
            values = sorted(set(np.unique(target[bad]).tolist()))[:5]
            raise DataFileError(path, f"{spec.name} labels must be 0..{spec.num_outputs - 1} or "
                                f"{spec.ignore_index} (void), found {values}")
        return
    if not np.isfinite(target).all():
        raise DataFileError(path, f"{spec.name} has NaN or infinite values")
    if spec.kind in ("saliency", "edge") and not np.isin(target, (0.0, 1.0)).all():
        raise DataFileError(path, f"{spec.name} must be binary (0/1)")
    if spec.kind == "depth" and (target < 0).any():
        raise DataFileError(path, "depth has negative values")
    if spec.kind == "normals" and (np.abs(target) > 1.01).any():
        raise DataFileError(path, "normals have components outside [-1, 1]")


def check_sample(sample: Mapping[str, Any], tasks: Sequence[TaskSpec] | Any, image_size: tuple[int, int],
                 target_size: tuple[int, int] | None = None) -> None:
    """Raise ValueError unless ``sample`` has the formats of ``tasks/base.py`` at ``image_size``.

    Checks dtype and shape of the image and every target (at ``target_size``, default
    ``image_size``), and that values lie in the task's value set (class ids < num_outputs or
    ignore; {0, 1} or ignore; depth > 0 or ignore).
    """
    h, w = image_size
    what = sample.get("meta", {}).get("id", "?")

    def fail(msg: str) -> None:
        raise ValueError(f"sample {what}: {msg}")

    image = sample["image"]
    if image.dtype != torch.float32 or tuple(image.shape) != (3, h, w):
        fail(f"image must be float32[3, {h}, {w}], got {image.dtype}{list(image.shape)}")
    if target_size is not None:
        h, w = target_size
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
        if spec.kind in ("saliency", "edge") and bool(((t != 0) & (t != 1) & (t != spec.ignore_index)).any()):
            fail(f"{spec.name} must be binary (0/1)")
        if spec.kind == "depth" and bool(((t <= 0) & (t != spec.ignore_index)).any()):
            fail(f"{spec.name} has non-positive depths that are not marked {spec.ignore_index}")
