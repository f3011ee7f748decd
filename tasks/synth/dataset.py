"""The registered ``synth`` dataset plugin: six dense tasks on procedural rooms, generated once and cached."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from mtpeft_bench.errors import UserError
from mtpeft_bench.registry import register_dataset
from mtpeft_bench.tasks.base import DatasetPlugin, TaskSpec
from mtpeft_bench.tasks.specs import depth_task, edge_task, normals_task, saliency_task, segmentation_task
from mtpeft_bench.tasks.synth.cache import check_dataset_folder, default_cache_root, ensure_dataset
from mtpeft_bench.tasks.synth.config import SynthConfig
from mtpeft_bench.tasks.synth.scene import CLASS_NAMES, PART_NAMES


def _synth_sources() -> dict[str, Any]:
    from mtpeft_bench.tasks.nyud_layout import NYUD_SOURCES, TargetSource

    return {**NYUD_SOURCES, "sal": TargetSource("saliency", "mask_png"), "parts": TargetSource("parts", "label_png")}


@register_dataset("synth")
class SynthDataset(DatasetPlugin):
    """Procedural rooms with primitives: exact labels for six dense tasks, generated once and cached."""

    version = 1
    tasks = {
        "semseg": segmentation_task("semseg", len(CLASS_NAMES), 1.0, "surface class: " + ", ".join(CLASS_NAMES)),
        "depth": depth_task("z-depth in metres"),
        "normals": normals_task("camera-frame unit normals (x right, y up, z towards the viewer)"),
        "sal": saliency_task("primitives (1) vs room (0)"),
        "edge": edge_task("F_tol", 0.011, "class / part / object boundaries, 1 px on the nearer side"),
        "parts": segmentation_task("parts", len(PART_NAMES), 2.0, "object parts: " + ", ".join(PART_NAMES)),
    }
    default_tasks = ("semseg", "depth", "normals", "sal", "edge", "parts")
    image_size = (96, 128)
    splits = ("train", "val", "holdout")
    requires_root = False
    default_preset = "cpu"
    reference = None
    Config = SynthConfig

    def __init__(self, config: SynthConfig | None = None):
        super().__init__(config)
        # the native size follows the configured resolution
        self.image_size = (self.config.height, self.config.width)

    @property
    def eval_split(self) -> str:
        """The split a run evaluates on: ``holdout`` when ``data.holdout`` sets images aside, else ``val``."""
        return "holdout" if self.config.holdout else "val"

    def cache_dir(self) -> Path:
        return default_cache_root() / "synth" / self.config.key()

    def resolve_root(self, root: Path | None) -> Path:
        """The dataset folder (``root``, i.e. an explicit ``--data-root``, else the cache folder),
        generated first if needed."""
        return ensure_dataset(self.folder(root), self.config, self.progress)

    def check_root(self, root: Path | None) -> None:
        """The folder ``resolve_root`` would use holds this dataset or is free for generating it."""
        check_dataset_folder(self.folder(root), self.config)

    def folder(self, root: Path | None) -> Path:
        """Where the dataset is kept: an explicit ``--data-root``, else the cache folder."""
        return Path(root) if root is not None else self.cache_dir()

    def build(self, split: str, tasks: Sequence[TaskSpec], image_size: tuple[int, int], root: Path | None,
              train: bool) -> Any:
        from mtpeft_bench.tasks.nyud_layout import LayoutDataset, NyudLayout

        if split not in self.splits:
            raise UserError(f"dataset 'synth' has no split {split!r}; use one of {', '.join(self.splits)}")
        if split == "holdout" and not self.config.holdout:
            raise UserError("synth has no holdout split unless --set data.holdout=N sets training images aside")
        folder = self.resolve_root(root)
        layout = NyudLayout(folder, _synth_sources(), depth_unit="m")
        return LayoutDataset(layout, split, tasks, image_size, train, ids=self.split_ids(layout, split))

    def split_ids(self, layout: Any, split: str) -> list[str]:
        """The image ids of ``split``: with ``holdout`` = h, ``train`` is the first N − h training
        images and ``holdout`` the last h; ``val`` is always the generated validation split."""
        if split == "val":
            return layout.ids("val")
        train = layout.ids("train")
        cut = len(train) - self.config.holdout
        return train[cut:] if split == "holdout" else train[:cut]
