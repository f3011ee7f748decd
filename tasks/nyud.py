"""NYUD-v2 multi-task benchmark (the ASTMT/MTI-Net ``NYUD_MT`` package), as used by MTLoRA.

Tasks: ``semseg`` (NYU-40 classes), ``depth`` (metres), ``normals``, ``edge``; 795 train / 654 val
images, trained and evaluated at 448x448 (docs/protocol.md 0, 1.3, 2). The folder is read by
:mod:`mtpeft_bench.tasks.nyud_layout`; ``mtbench data prepare nyud --from NYUD_MT.tgz`` puts the
archive (downloaded by hand, docs/protocol.md 1.1) under the data root.

The ATRC/InvPT re-packaging (``NYUDv2.tar.gz``: PNG images and smaller frames, docs/protocol.md 1.4)
is a different dataset, ``nyud_atrc`` (:mod:`mtpeft_bench.tasks.atrc`); ``nyud`` refuses such a
folder instead of silently mixing the two.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from mtpeft_bench.errors import UserError
from mtpeft_bench.registry import register_dataset
from mtpeft_bench.tasks.base import DatasetPlugin, TaskSpec
from mtpeft_bench.tasks.protocols import ProtocolConfig, edge_options, edge_task_with_approximation, protocol_transforms
from mtpeft_bench.tasks.roots import find_dataset_root
from mtpeft_bench.tasks.specs import depth_task, normals_task, segmentation_task


NYUD_FOLDER_NAMES = ("NYUD_MT",)
NYUD_MARKERS = ("images", "gt_sets")
#: Official split sizes (docs/protocol.md 1.3); ``mtbench data verify`` compares against them.
NYUD_SPLIT_SIZES = {"train": 795, "val": 654}


@dataclass(frozen=True)
class NyudConfig(ProtocolConfig):
    """Options of the ``nyud`` dataset, besides the protocol switches of
    :class:`~mtpeft_bench.tasks.protocols.ProtocolConfig`.

    Attributes:
        depth_unit: unit of the stored depth maps: ``auto`` (millimetres if a map's maximum
            exceeds 100, logged; docs/protocol.md 1.3 and 8 item 10), ``m`` or ``mm``.
    """

    depth_unit: str = "auto"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.depth_unit not in ("auto", "m", "mm"):
            raise ValueError(f"depth_unit must be 'auto', 'm' or 'mm', not {self.depth_unit!r}")


def nyud_tasks() -> dict[str, TaskSpec]:
    return {
        "semseg": segmentation_task("semseg", 40, 1.0, "NYU-40 semantic segmentation"),
        "depth": depth_task(),
        "normals": normals_task(),
        "edge": edge_task_with_approximation(0.011),
    }


def looks_like_atrc(folder: Path) -> bool:
    """Whether an ``images/`` + ``gt_sets/`` folder is the ATRC re-packaging (PNG images, edge PNGs)."""
    images = folder / "images"
    first = next((p for p in sorted(images.iterdir())[:50] if p.is_file()), None) if images.is_dir() else None
    return (first is not None and first.suffix.lower() == ".png") or (folder / "edge").is_dir() and any(
        p.suffix == ".png" for p in sorted((folder / "edge").iterdir())[:20])


@register_dataset("nyud")
class NyudDataset(DatasetPlugin):
    """NYUD-v2 (NYUD_MT): semseg 40 classes, depth, normals, edge at 448x448."""

    version = 2
    tasks = nyud_tasks()
    default_tasks = ("semseg", "depth", "normals", "edge")
    image_size = (448, 448)
    splits = ("train", "val")
    requires_root = True
    reference = None  # no published single-task NYUD baselines exist (docs/protocol.md 3)
    Config = NyudConfig
    split_sizes = NYUD_SPLIT_SIZES
    folder_names = NYUD_FOLDER_NAMES
    markers = NYUD_MARKERS
    archive = "NYUD_MT.tgz"
    image_suffix = ".jpg"

    def task_specs(self, names: Sequence[str] | None = None) -> list[TaskSpec]:
        return edge_options(super().task_specs(names), self.config)

    def resolve_root(self, root: Path | None) -> Path:
        """The extracted NYUD_MT folder: ``root`` itself or ``root/NYUD_MT`` (``root`` defaults to $MTBENCH_DATA)."""
        folder = find_dataset_root(root, self.name, self.folder_names, self.markers, self.archive)
        self.check_variant(folder)
        return folder

    def check_variant(self, folder: Path) -> None:
        if looks_like_atrc(folder):
            raise UserError(f"{folder} is the ATRC/InvPT NYUDv2 package (PNG images), not NYUD_MT; its numbers are "
                            "not comparable: use --dataset nyud_atrc for it")

    def sources(self) -> dict[str, Any]:
        from mtpeft_bench.tasks.nyud_layout import NYUD_SOURCES

        return dict(NYUD_SOURCES)

    def layout(self, folder: Path) -> Any:
        from mtpeft_bench.tasks.nyud_layout import NyudLayout

        return NyudLayout(folder, self.sources(), depth_unit=self.config.depth_unit, image_suffix=self.image_suffix)

    def build(self, split: str, tasks: Sequence[TaskSpec], image_size: tuple[int, int], root: Path | None,
              train: bool) -> Any:
        from mtpeft_bench.tasks.nyud_layout import LayoutDataset, missing_entries

        if split not in self.splits:
            raise UserError(f"dataset '{self.name}' has no split {split!r}; use one of {', '.join(self.splits)}")
        folder = self.resolve_root(root)
        missing = missing_entries(folder, self.sources(), [t.name for t in tasks])
        if missing:
            raise UserError(f"{folder} lacks {', '.join(missing)}/; re-extract {self.archive} there")
        transform = protocol_transforms("nyud", self.config, tuple(image_size), train)
        original = not train and self.config.eval_at_original_size
        return LayoutDataset(self.layout(folder), split, tasks, image_size, train, transform=transform,
                             original_size=original)
