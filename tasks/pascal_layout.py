"""Reader for the PASCAL_MT on-disk layout (``PASCAL_MT.tgz``, docs/protocol.md 1.2).

Layout, relative to the root folder::

    JPEGImages/<id>.jpg                 RGB image (VOC2010, longest side <= 500 px)
    ImageSets/Context/<split>.txt       ids of a split, one per line (4,998 train / 5,105 val)
    semseg/VOC12/<id>.png               8-bit labels 0..20, 255 = void (preferred) ...
    semseg/pascal-context/<id>.png      ... else this one
    human_parts/<id>.mat                PASCAL-Part struct ``anno`` (objects with class, mask, parts)
    pascal-context/trainval/<id>.mat    ``LabelMap``: the 459-class PASCAL-Context label map
    normals_distill/<id>.png            RGB, n = 2 v / 255 - 1
    sal_distill/<id>.png                gray, salient where v / 255 > 0.5

Decoding (as ``PASCALContext`` of ASTMT / MTI-Net / MTLoRA, scale-lab/MTLoRA:data/mtl_ds.py):

- ``semseg``: the PNG's values as they are (int64[H, W]).
- ``human_parts``: every person (class 15) object that has part annotations writes its parts
  into one map with the 6-part grouping of :data:`HUMAN_PARTS_6` (later objects and parts
  overwrite earlier ones); everything else is 0. An image without such a person gives an all-0
  map, which ``AddIgnoreRegions`` turns into all-ignore. A person without part annotations in an
  image that has an annotated one stays background (0), as in the reference (docs/protocol.md 8 item
  4); ``unannotated_persons="ignore"`` marks it ignore instead.
- ``sal``: v / 255 > 0.5 → {0, 1} (float32[1, H, W]).
- ``normals``: 2 v / 255 - 1, kept only where the ``LabelMap`` class is one of the 170
  NYU-compatible Context classes (``tasks/data/pascal_context_classes.json``); zero elsewhere
  (→ ignore) (float32[3, H, W]).
- ``edge``: the Laplacian of the ``LabelMap`` (3x3 kernel 0 1 0 / 1 -4 1 / 0 1 0 with mirrored
  borders, OpenCV's ``Laplacian`` with ksize 1), non-zero → edge, thinned with scikit-image's
  ``thin`` (float32[1, H, W]). Needs scikit-image (``pip install 'mtpeft-bench[edge]'``).

Nothing is ever written into the dataset folder: the reference caches each image's object
categories in ``ImageSets/Parts/<split>.txt`` inside the data root (docs/protocol.md 8 item 9); here that
list is computed only when needed (a ``human_parts``-only run keeps only person images, as the
reference does) and cached under the user cache folder.
"""

from __future__ import annotations

import hashlib
import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from mtpeft_bench.errors import UserError
from mtpeft_bench.tasks.base import TaskSpec
from mtpeft_bench.tasks.nyud_layout import DataFileError, open_image_array, read_id_list


IMAGE_FOLDER = "JPEGImages"
SPLIT_FOLDER = Path("ImageSets") / "Context"
SEMSEG_FOLDERS = (Path("semseg") / "VOC12", Path("semseg") / "pascal-context")
PARTS_FOLDER = "human_parts"
LABELMAP_FOLDER = Path("pascal-context") / "trainval"
NORMALS_FOLDER = "normals_distill"
SAL_FOLDER = "sal_distill"

PERSON_CLASS = 15
#: PASCAL-Part person part names → the 6-part scheme (1 head, 2 torso, 3 upper arm, 4 lower arm
#: and hand, 5 upper leg, 6 lower leg and foot); scale-lab/MTLoRA:data/mtl_ds.py ``HUMAN_PART[6]``.
HUMAN_PARTS_6 = {
    "hair": 1, "head": 1, "lear": 1, "rear": 1, "leye": 1, "reye": 1, "lebrow": 1, "rebrow": 1, "nose": 1,
    "mouth": 1, "torso": 2, "neck": 2, "luarm": 3, "ruarm": 3, "llarm": 4, "rlarm": 4, "lhand": 4, "rhand": 4,
    "luleg": 5, "ruleg": 5, "llleg": 6, "rlleg": 6, "lfoot": 6, "rfoot": 6,
}
PART_CATEGORY_NAMES = ("background", "head", "torso", "uarm", "larm", "uleg", "lleg")
VOC_CATEGORY_NAMES = ("background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
                      "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
                      "train", "tvmonitor")


@lru_cache(maxsize=1)
def normals_class_ids() -> np.ndarray:
    """The 170 Context class ids (``LabelMap`` values) on which the distilled normals are kept."""
    from importlib import resources

    text = resources.files("mtpeft_bench.tasks").joinpath("data", "pascal_context_classes.json").read_text("utf-8")
    data = json.loads(text)
    ids = sorted(data["context_classes"][name] for name in data["normals_classes"])
    return np.asarray(ids, dtype=np.int64)


def _loadmat(path: Path) -> dict[str, Any]:
    from scipy.io import loadmat

    try:
        return loadmat(str(path))
    except FileNotFoundError:
        raise DataFileError(path, "file is missing") from None
    except Exception as exc:  # scipy raises ValueError, TypeError, MatReadError, OSError ... on bad files
        raise DataFileError(path, f"is not a readable MATLAB file ({type(exc).__name__}: {exc})") from None


def read_label_map(path: Path) -> np.ndarray:
    """``LabelMap`` of a PASCAL-Context ``.mat`` as int64[H, W]."""
    data = _loadmat(path)
    if "LabelMap" not in data:
        raise DataFileError(path, "has no 'LabelMap' variable")
    labels = np.asarray(data["LabelMap"])
    if labels.ndim != 2 or not np.issubdtype(labels.dtype, np.number):
        raise DataFileError(path, f"LabelMap must be a 2-D numeric array, got {labels.dtype} {labels.shape}")
    return labels.astype(np.int64)


def read_part_objects(path: Path) -> list[tuple[int, np.ndarray, list[tuple[str, np.ndarray]]]]:
    """The objects of a PASCAL-Part ``anno`` struct: ``[(class_ind, mask, [(part_name, mask), ...]), ...]``.

    The struct is read by position as the reference does: ``anno[0][0][1][0]`` is the object list;
    an object's fields 1, 2, 3 are its class index, instance mask and parts; a part's fields 0 and 1
    are its name and mask.
    """
    data = _loadmat(path)
    try:
        objects = data["anno"][0][0][1][0]
        out = []
        for obj in objects:
            class_ind = int(np.asarray(obj[1]).reshape(-1)[0])
            mask = np.asarray(obj[2]).astype(bool)
            parts = []
            if len(obj[3]) != 0:
                for part in obj[3][0]:
                    parts.append((str(np.asarray(part[0]).reshape(-1)[0]), np.asarray(part[1]).astype(bool)))
            out.append((class_ind, mask, parts))
        return out
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise DataFileError(path, f"is not a PASCAL-Part 'anno' struct ({type(exc).__name__}: {exc})") from None


def laplacian_edges(label_map: np.ndarray) -> np.ndarray:
    """Edges of a label map as the reference derives them: |Laplacian| > 0, then thinned (bool[H, W])."""
    from scipy.ndimage import convolve

    try:
        from skimage.morphology import thin
    except ImportError:
        raise UserError("the pascal_mt edge task thins its edges with scikit-image, which is not installed: "
                        "pip install 'mtpeft-bench[edge]'") from None
    kernel = np.array([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])
    # OpenCV's default border is BORDER_REFLECT_101 (d c b | a b c d), scipy's "mirror".
    lap = convolve(label_map.astype(np.float64), kernel, mode="mirror")
    return thin(np.abs(lap) > 0)


class PascalLayout:
    """Read images and targets of one PASCAL_MT folder (the interface of :class:`~.nyud_layout.NyudLayout`).

    Args:
        root: the folder holding ``JPEGImages/`` and ``ImageSets/``.
        unannotated_persons: ``background`` (reference) or ``ignore``, see the module docstring.
    """

    def __init__(self, root: Path | str, unannotated_persons: str = "background"):
        if unannotated_persons not in ("background", "ignore"):
            raise ValueError(f"unannotated_persons must be 'background' or 'ignore', not {unannotated_persons!r}")
        self.root = Path(root)
        self.unannotated_persons = unannotated_persons
        self._label_cache: tuple[str, np.ndarray] | None = None

    # -- paths ---------------------------------------------------------------------------------
    def split_file(self, split: str) -> Path:
        return self.root / SPLIT_FOLDER / f"{split}.txt"

    def ids(self, split: str) -> list[str]:
        return read_id_list(self.split_file(split))

    def image_path(self, sample_id: str) -> Path:
        return self.root / IMAGE_FOLDER / f"{sample_id}.jpg"

    def label_map_path(self, sample_id: str) -> Path:
        return self.root / LABELMAP_FOLDER / f"{sample_id}.mat"

    def path(self, task: str, sample_id: str) -> Path:
        """The file a task's target is read from (for normals the PNG; its mask also reads the label map)."""
        if task == "semseg":
            candidates = [self.root / folder / f"{sample_id}.png" for folder in SEMSEG_FOLDERS]
            return next((p for p in candidates if p.is_file()), candidates[0])
        if task == "human_parts":
            return self.root / PARTS_FOLDER / f"{sample_id}.mat"
        if task == "normals":
            return self.root / NORMALS_FOLDER / f"{sample_id}.png"
        if task == "sal":
            return self.root / SAL_FOLDER / f"{sample_id}.png"
        if task == "edge":
            return self.label_map_path(sample_id)
        raise KeyError(f"pascal_mt has no task {task!r}")

    def files(self, sample_id: str, tasks: Sequence[str]) -> list[Path]:
        """Every file one sample of ``tasks`` reads (the image first)."""
        out = [self.image_path(sample_id)]
        for task in tasks:
            out.append(self.path(task, sample_id))
            if task == "normals":
                out.append(self.label_map_path(sample_id))
        return list(dict.fromkeys(out))

    # -- reading -------------------------------------------------------------------------------
    def read_image(self, sample_id: str) -> np.ndarray:
        """uint8[H, W, 3] RGB."""
        return open_image_array(self.image_path(sample_id), "RGB")

    def label_map(self, sample_id: str) -> np.ndarray:
        """The Context ``LabelMap`` (int64[H, W]); the last one is kept, since normals and edges both read it."""
        if self._label_cache is None or self._label_cache[0] != sample_id:
            self._label_cache = (sample_id, read_label_map(self.label_map_path(sample_id)))
        return self._label_cache[1]

    def read_target(self, spec: TaskSpec, sample_id: str) -> np.ndarray:
        """The decoded target of ``spec`` (formats of ``tasks/base.py``, before resizing and ignore marking)."""
        name = spec.name
        path = self.path(name, sample_id)
        if name == "semseg":
            return open_image_array(path).astype(np.int64)
        if name == "sal":
            return (open_image_array(path).astype(np.float64) / 255.0 > 0.5).astype(np.float32)[None]
        if name == "normals":
            rgb = open_image_array(path, "RGB").astype(np.float64)
            normals = 2.0 * rgb / 255.0 - 1.0
            labels = self.label_map(sample_id)
            if labels.shape != normals.shape[:2]:
                raise DataFileError(self.label_map_path(sample_id), f"LabelMap is {labels.shape[0]}x{labels.shape[1]}, "
                                    f"the normals are {normals.shape[0]}x{normals.shape[1]}")
            keep = np.isin(labels, normals_class_ids())
            normals[~keep] = 0.0
            return np.ascontiguousarray(normals.transpose(2, 0, 1).astype(np.float32))
        if name == "edge":
            return laplacian_edges(self.label_map(sample_id)).astype(np.float32)[None]
        if name == "human_parts":
            return self.human_parts(path, self.read_image_size(sample_id), spec.ignore_index)
        raise KeyError(f"pascal_mt has no task {name!r}")

    def read_image_size(self, sample_id: str) -> tuple[int, int]:
        from PIL import Image

        try:
            with Image.open(self.image_path(sample_id)) as img:
                return img.size[1], img.size[0]
        except (OSError, ValueError) as exc:
            raise DataFileError(self.image_path(sample_id), f"cannot be decoded ({exc})") from None

    def human_parts(self, path: Path, size: tuple[int, int], ignore_index: int = 255) -> np.ndarray:
        """The 7-class part map (int64[H, W]) of one ``human_parts/<id>.mat`` (see the module docstring)."""
        target = np.zeros(size, dtype=np.int64)
        unannotated = np.zeros(size, dtype=bool)
        annotated_any = False
        for class_ind, mask, parts in read_part_objects(path):
            if class_ind != PERSON_CLASS:
                continue
            if mask.shape != size:
                raise DataFileError(path, f"a person mask is {mask.shape[0]}x{mask.shape[1]}, the image is "
                                    f"{size[0]}x{size[1]}")
            if not parts:
                unannotated |= mask
                continue
            annotated_any = True
            for part_name, part_mask in parts:
                if part_name not in HUMAN_PARTS_6:
                    raise DataFileError(path, f"unknown person part {part_name!r}")
                if part_mask.shape != size:
                    raise DataFileError(path, f"part mask {part_name!r} has the wrong size {part_mask.shape}")
                target[part_mask] = HUMAN_PARTS_6[part_name]
        if annotated_any and self.unannotated_persons == "ignore":
            target[unannotated & (target == 0)] = ignore_index
        return target

    def has_person(self, sample_id: str) -> bool:
        """Whether the image has a person object of non-zero area (the reference's ``has_human_parts``)."""
        path = self.root / PARTS_FOLDER / f"{sample_id}.mat"
        return any(c == PERSON_CLASS and m.any() for c, m, _ in read_part_objects(path))


def person_ids(layout: PascalLayout, split: str, cache_root: Path) -> list[str]:
    """Ids of ``split`` whose image has a person, cached under ``cache_root`` (never in the data root).

    The cache is keyed by the resolved data folder, the split and the size and modification time of
    the split file and the ``human_parts`` folder, so a changed dataset is rescanned.
    """
    ids = layout.ids(split)
    parts_dir = layout.root / PARTS_FOLDER
    stamp = []
    for p in (layout.split_file(split), parts_dir):
        st = p.stat()
        stamp.append([st.st_size, st.st_mtime_ns])
    key = hashlib.sha256(json.dumps([str(layout.root.resolve()), split, stamp]).encode()).hexdigest()[:16]
    path = Path(cache_root) / "pascal_mt" / f"persons-{split}-{key}.json"
    try:
        cached = json.loads(path.read_text())
        if cached.get("ids") == ids:
            return [i for i in ids if i in set(cached["persons"])]
    except (OSError, ValueError):
        pass
    persons = [i for i in ids if layout.has_person(i)]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps({"ids": ids, "persons": persons}))
    os.replace(tmp, path)
    return persons
