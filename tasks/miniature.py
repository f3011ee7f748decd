"""Miniature copies of the PASCAL_MT and NYUD_MT layouts, written in the exact on-disk formats.

The real archives cannot be downloaded on the test machines, so the tests (and anyone trying the
loaders) write a handful of tiny samples with the same file types and structures: JPEG images,
8-bit PNG labels, RGB normal PNGs, ``.npy`` arrays and MATLAB ``.mat`` files saved with
``scipy.io.savemat`` in the structure the reference loaders index (``LabelMap``; the PASCAL-Part
``anno`` struct: ``imname`` and ``objects`` with ``class``, ``class_ind``, ``mask``, ``parts`` of
``part_name`` and ``mask``). The content is simple shapes, not real scenes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image


def _object_array(items: Sequence[tuple], dtype: list[tuple[str, str]]) -> np.ndarray:
    """A 1xN MATLAB struct array (numpy record array of objects)."""
    arr = np.zeros((1, len(items)), dtype=dtype)
    for i, values in enumerate(items):
        for (name, _), value in zip(dtype, values):
            arr[0, i][name] = value
    return arr


def write_parts_mat(path: Path, image_id: str, objects: Sequence[tuple[str, int, np.ndarray, Sequence[tuple[str, np.ndarray]]]]) -> None:
    """Write a PASCAL-Part ``anno`` struct: objects = [(class_name, class_ind, mask, [(part_name, mask), ...])]."""
    from scipy.io import savemat

    obj_dtype = [("class", "O"), ("class_ind", "O"), ("mask", "O"), ("parts", "O")]
    part_dtype = [("part_name", "O"), ("mask", "O")]
    items = []
    for cls, ind, mask, parts in objects:
        part_arr = (_object_array([(name, m.astype(np.uint8)) for name, m in parts], part_dtype) if parts
                    else np.zeros((0, 0)))
        items.append((cls, np.array([[ind]], dtype=np.uint8), mask.astype(np.uint8), part_arr))
    anno = np.zeros((1, 1), dtype=[("imname", "O"), ("objects", "O")])
    anno[0, 0]["imname"] = image_id
    anno[0, 0]["objects"] = _object_array(items, obj_dtype)
    savemat(str(path), {"anno": anno})


def _image(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    base = np.linspace(0, 255, w, dtype=np.float64)[None, :, None] * np.ones((h, 1, 3))
    return np.clip(base + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)


#: Context ids used in the miniature label maps: 2 aeroplane, 284 person, 397 table (all three are
#: NYU-compatible normals classes except aeroplane), 189 ground (not NYU-compatible).
CONTEXT_IDS = {"aeroplane": 2, "person": 284, "table": 397, "ground": 189}


def write_pascal(root: Path, ids: dict[str, Sequence[str]] | None = None, size: tuple[int, int] = (20, 24),
                 seed: int = 0) -> Path:
    """Write a miniature PASCAL_MT folder at ``root`` and return it.

    Each image: left half "ground" (Context 189, semseg background 0), a "table" block (397, VOC
    diningtable 11), a "person" block (284, VOC 15) with head / torso / upper-arm parts on every
    image whose index is even, and a void border row (semseg 255). Odd images have no person
    annotation (their human_parts map is all ignore). Sizes alternate between ``size`` and
    ``size`` + (2, 4) so that batches of original-size targets differ.
    """
    ids = ids or {"train": ["2008_000001", "2008_000002", "2008_000003", "2008_000004"],
                  "val": ["2008_000005", "2008_000006"]}
    rng = np.random.default_rng(seed)
    for folder in ("JPEGImages", "ImageSets/Context", "semseg/VOC12", "semseg/pascal-context", "human_parts",
                   "pascal-context/trainval", "normals_distill", "sal_distill"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    index = 0
    for split, split_ids in ids.items():
        (root / "ImageSets" / "Context" / f"{split}.txt").write_text("".join(f"{i}\n" for i in split_ids))
        for sid in split_ids:
            h, w = (size[0], size[1]) if index % 2 == 0 else (size[0] + 2, size[1] + 4)
            Image.fromarray(_image(rng, h, w)).save(root / "JPEGImages" / f"{sid}.jpg", quality=95)
            label_map = np.full((h, w), CONTEXT_IDS["ground"], np.uint16)
            label_map[2:h // 2, w // 2:] = CONTEXT_IDS["table"]
            label_map[h // 2:, w // 2:] = CONTEXT_IDS["person"]
            semseg = np.zeros((h, w), np.uint8)
            semseg[2:h // 2, w // 2:] = 11
            semseg[h // 2:, w // 2:] = 15
            semseg[0] = 255
            from scipy.io import savemat

            savemat(str(root / "pascal-context" / "trainval" / f"{sid}.mat"), {"LabelMap": label_map})
            # the first image has its semseg only in the pascal-context folder, the rest in VOC12
            folder = "pascal-context" if index == 0 else "VOC12"
            Image.fromarray(semseg).save(root / "semseg" / folder / f"{sid}.png")
            normals = np.zeros((h, w, 3), np.uint8)
            normals[...] = (128, 128, 255)
            normals[h // 2:, :w // 2] = (200, 128, 200)
            Image.fromarray(normals).save(root / "normals_distill" / f"{sid}.png")
            sal = np.zeros((h, w), np.uint8)
            sal[h // 2:, w // 2:] = 240
            sal[1, 1] = 100  # below 0.5: not salient
            Image.fromarray(sal).save(root / "sal_distill" / f"{sid}.png")
            person = label_map == CONTEXT_IDS["person"]
            table = label_map == CONTEXT_IDS["table"]
            objects = [("diningtable", 11, table, [])]
            if index % 2 == 0:
                head = np.zeros_like(person)
                head[h // 2:h // 2 + 2, w // 2:] = True
                torso = person & ~head
                torso[:, -2:] = False
                arm = person & ~head
                arm[:, :-2] = False
                objects.append(("person", 15, person, [("head", head), ("torso", torso), ("luarm", arm)]))
            write_parts_mat(root / "human_parts" / f"{sid}.mat", sid, objects)
            index += 1
    return root


def write_nyud(root: Path, ids: dict[str, Sequence[str]] | None = None, size: tuple[int, int] = (24, 32),
               seed: int = 0, depth_scale: float = 1.0) -> Path:
    """Write a miniature NYUD_MT folder at ``root`` (JPEG images, PNG labels stored k+1, ``.npy``
    depth in metres times ``depth_scale``, normals and edges) and return it."""
    ids = ids or {"train": ["0001", "0002", "0003", "0004"], "val": ["0005", "0006"]}
    rng = np.random.default_rng(seed)
    h, w = size
    for folder in ("images", "gt_sets", "segmentation", "depth", "normals", "edge"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    for split, split_ids in ids.items():
        (root / "gt_sets" / f"{split}.txt").write_text("".join(f"{i}\n" for i in split_ids))
        for k, sid in enumerate(split_ids):
            Image.fromarray(_image(rng, h, w)).save(root / "images" / f"{sid}.jpg", quality=95)
            seg = np.zeros((h, w), np.uint8)
            seg[2:, : w // 2] = 1 + k
            seg[2:, w // 2:] = 40
            Image.fromarray(seg).save(root / "segmentation" / f"{sid}.png")
            depth = np.linspace(0.8, 6.0, h * w, dtype=np.float32).reshape(h, w) * np.float32(depth_scale)
            depth[:, :3] = 0.0
            np.save(root / "depth" / f"{sid}.npy", depth)
            normals = np.zeros((h, w, 3), np.float32)
            normals[..., 2] = 1.0
            normals[h // 2:] = (0.6, 0.0, 0.8)
            normals[:2, -3:] = 0.0
            np.save(root / "normals" / f"{sid}.npy", normals)
            edge = np.zeros((h, w), np.float32)
            edge[:, w // 2] = 1.0
            edge[h // 2, :] = 1.0
            np.save(root / "edge" / f"{sid}.npy", edge)
    return root
