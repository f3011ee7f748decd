"""NYUD-v2 multi-task benchmark (the ASTMT/MTI-Net ``NYUD_MT`` package), as used by MTLoRA.

Tasks: ``semseg`` (NYU-40 classes), ``depth`` (metres), ``normals``, ``edge``; 795 train / 654 val
images, trained and evaluated at 448x448 (PROTOCOL.md 0, 1.3, 2). The folder is read by
:mod:`mtpeft_bench.tasks.nyud_layout`; download ``NYUD_MT.tgz`` by hand (PROTOCOL.md 1.1) and point
``--data-root`` (or ``MTBENCH_DATA``) at the extracted ``NYUD_MT`` folder or its parent.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from mtpeft_bench.errors import UserError
from mtpeft_bench.registry import register_dataset
from mtpeft_bench.tasks.base import DatasetConfig, DatasetPlugin, TaskSpec
from mtpeft_bench.tasks.specs import depth_task, edge_task, normals_task, segmentation_task


# -- the plugin --------------------------------------------------------------------------------

NYUD_FOLDER_NAMES = ("NYUD_MT",)


@dataclass(frozen=True)
class NyudConfig(DatasetConfig):
    """Options of the ``nyud`` dataset.

    Attributes:
        depth_unit: unit of the stored depth maps: ``auto`` (millimetres if a map's maximum
            exceeds 100, see PROTOCOL.md 1.3), ``m`` or ``mm``.
    """

    depth_unit: str = "auto"

    def __post_init__(self) -> None:
        if self.depth_unit not in ("auto", "m", "mm"):
            raise ValueError(f"depth_unit must be 'auto', 'm' or 'mm', not {self.depth_unit!r}")


@register_dataset("nyud")
class NyudDataset(DatasetPlugin):
    """NYUD-v2 (NYUD_MT): semseg 40 classes, depth, normals, edge at 448x448."""

    version = 1
    tasks = {
        "semseg": segmentation_task("semseg", 40, 1.0, "NYU-40 semantic segmentation"),
        "depth": depth_task(),
        "normals": normals_task(),
        "edge": edge_task("odsF", 0.011),
    }
    default_tasks = ("semseg", "depth", "normals", "edge")
    image_size = (448, 448)
    splits = ("train", "val")
    requires_root = True
    reference = None  # no published single-task NYUD baselines exist (PROTOCOL.md 3)
    Config = NyudConfig

    def resolve_root(self, root: Path | None) -> Path:
        """The extracted NYUD_MT folder: ``root`` itself or ``root/NYUD_MT`` (``root`` defaults to $MTBENCH_DATA)."""
        return find_layout_root(root, NYUD_FOLDER_NAMES, "NYUD_MT")

    def build(self, split: str, tasks: Sequence[TaskSpec], image_size: tuple[int, int], root: Path | None,
              train: bool) -> Any:
        from mtpeft_bench.tasks.nyud_layout import NYUD_SOURCES, LayoutDataset, NyudLayout, missing_entries

        if split not in self.splits:
            raise UserError(f"dataset 'nyud' has no split {split!r}; use one of {', '.join(self.splits)}")
        folder = self.resolve_root(root)
        if not (folder / "gt_sets" / f"{split}.txt").is_file():
            raise UserError(f"{folder}/gt_sets/{split}.txt is missing; re-extract NYUD_MT.tgz")
        missing = missing_entries(folder, NYUD_SOURCES, [t.name for t in tasks])
        if missing:
            raise UserError(f"{folder} lacks {', '.join(missing)}/; re-extract NYUD_MT.tgz there")
        layout = NyudLayout(folder, NYUD_SOURCES, depth_unit=self.config.depth_unit)
        return LayoutDataset(layout, split, tasks, image_size, train)


def find_layout_root(root: Path | str | None, folder_names: Sequence[str], what: str) -> Path:
    """Return the folder holding ``images/`` and ``gt_sets/``: ``root`` or ``root/<one of folder_names>``.

    ``root`` defaults to the ``MTBENCH_DATA`` environment variable.

    Raises:
        UserError: no root given, or neither candidate has the layout.
    """
    hint = f"set --data-root or MTBENCH_DATA to the extracted {what} folder"
    if root is None:
        env = os.environ.get("MTBENCH_DATA")
        if not env:
            raise UserError(f"no data folder given for {what}; {hint}")
        root = env
    root = Path(root).expanduser()
    for candidate in [root, *(root / name for name in folder_names)]:
        if (candidate / "images").is_dir() and (candidate / "gt_sets").is_dir():
            return candidate
    if root.is_file():
        raise UserError(f"{root} is a file; extract it first (tar xzf) and {hint}")
    raise UserError(f"{root} has no images/ and gt_sets/ folders; {hint}")
