"""PASCAL-Context multi-task benchmark (``PASCAL_MT.tgz``), MTLoRA's headline dataset.

Tasks (docs/protocol.md 1.2, 3, 4.3): ``semseg`` (21 classes), ``human_parts`` (6 parts + background,
person images only), ``sal`` (distilled saliency), ``normals`` (distilled normals on the
NYU-compatible Context classes) and ``edge`` (from the Context label map; not in the headline
benchmark); 4,998 train / 5,105 val images resized to 448x448. The folder is read by
:mod:`mtpeft_bench.tasks.pascal_layout`; ``mtbench data prepare pascal_mt --from PASCAL_MT.tgz``
puts the archive under the data root, ``mtbench data verify pascal_mt`` checks it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from mtpeft_bench.errors import UserError
from mtpeft_bench.registry import register_dataset
from mtpeft_bench.tasks.base import DatasetPlugin, TaskSpec
from mtpeft_bench.tasks.protocols import ProtocolConfig, edge_options, edge_task_with_approximation, protocol_transforms
from mtpeft_bench.tasks.roots import find_dataset_root
from mtpeft_bench.tasks.specs import normals_task, saliency_task, segmentation_task


PASCAL_MARKERS = ("JPEGImages", "ImageSets/Context")
PASCAL_FOLDER_NAMES = ("PASCAL_MT",)
#: Official split sizes (docs/protocol.md 1.2); ``mtbench data verify`` compares against them.
PASCAL_SPLIT_SIZES = {"train": 4998, "val": 5105}


@dataclass(frozen=True)
class PascalMTConfig(ProtocolConfig):
    """Options of ``pascal_mt`` (``--set data.<key>=<value>``), besides the protocol switches of
    :class:`~mtpeft_bench.tasks.protocols.ProtocolConfig`.

    Attributes:
        unannotated_persons: a person without part annotations, in an image with an annotated one:
            ``background`` (reference, docs/protocol.md 8 item 4) or ``ignore``.
        parts_only_person_images: when ``human_parts`` is the only task, keep only the images that
            contain a person (the reference does this "to allow batching"; it changes the single-task
            training set, not the metric, since other images are all-ignore).
        sal_maxf_double_sigmoid: reproduce the InvPT/MTLoRA "Beta maxF" bug of squashing the
            saliency probability through a second sigmoid (docs/protocol.md 8 item 2); off: one sigmoid.
    """

    unannotated_persons: str = "background"
    parts_only_person_images: bool = True
    sal_maxf_double_sigmoid: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.unannotated_persons not in ("background", "ignore"):
            raise ValueError(f"unannotated_persons must be background or ignore, not {self.unannotated_persons!r}")
        for key in ("parts_only_person_images", "sal_maxf_double_sigmoid"):
            if not isinstance(getattr(self, key), bool):
                raise ValueError(f"{key} must be true or false, not {getattr(self, key)!r}")


@register_dataset("pascal_mt")
class PascalMTDataset(DatasetPlugin):
    """PASCAL-Context MTL: semseg 21, human_parts 7, sal, normals (edge optional) at 448x448."""

    version = 2
    tasks = {
        "semseg": segmentation_task("semseg", 21, 1.0, "PASCAL-Context semantic segmentation (VOC 20 + background)"),
        "human_parts": segmentation_task("human_parts", 7, 2.0, "human parts (6 + background), person images only"),
        "sal": saliency_task("distilled salient-object mask"),
        "normals": normals_task("distilled surface normals (unit vectors) on NYU-compatible classes"),
        "edge": edge_task_with_approximation(0.0075, "object boundaries from the Context label map"),
    }
    default_tasks = ("semseg", "human_parts", "sal", "normals")
    image_size = (448, 448)
    splits = ("train", "val")
    requires_root = True
    reference = "pascal_mt"
    Config = PascalMTConfig
    split_sizes = PASCAL_SPLIT_SIZES
    folder_names = PASCAL_FOLDER_NAMES
    markers = PASCAL_MARKERS
    archive = "PASCAL_MT.tgz"

    def task_specs(self, names: Sequence[str] | None = None) -> list[TaskSpec]:
        specs = edge_options(super().task_specs(names), self.config)
        if self.config.sal_maxf_double_sigmoid:
            specs = [dataclasses.replace(s, options={**s.options, "double_sigmoid": True}) if s.kind == "saliency"
                     else s for s in specs]
        return specs

    def resolve_root(self, root: Path | None) -> Path:
        """The extracted PASCAL_MT folder: ``root`` itself or ``root/PASCAL_MT`` (``root`` defaults to $MTBENCH_DATA)."""
        return find_dataset_root(root, self.name, self.folder_names, self.markers, self.archive)

    def check_variant(self, folder: Path) -> None:
        """PASCAL_MT has one known packaging (ATRC's PASCALContext uses the same files, docs/protocol.md 1.4)."""

    def layout(self, folder: Path) -> Any:
        from mtpeft_bench.tasks.pascal_layout import PascalLayout

        return PascalLayout(folder, unannotated_persons=self.config.unannotated_persons)

    def build(self, split: str, tasks: Sequence[TaskSpec], image_size: tuple[int, int], root: Path | None,
              train: bool) -> Any:
        from mtpeft_bench.tasks.nyud_layout import LayoutDataset
        from mtpeft_bench.tasks.pascal_layout import person_ids
        from mtpeft_bench.tasks.synth.cache import default_cache_root

        if split not in self.splits:
            raise UserError(f"dataset 'pascal_mt' has no split {split!r}; use one of {', '.join(self.splits)}")
        layout = self.layout(self.resolve_root(root))
        ids = None
        if self.config.parts_only_person_images and [t.name for t in tasks] == ["human_parts"]:
            ids = person_ids(layout, split, default_cache_root())
            if not ids:
                raise UserError(f"split '{split}' of {layout.root} has no image with a person; human_parts cannot "
                                "train on it (or set data.parts_only_person_images=false)")
        transform = protocol_transforms("pascal", self.config, tuple(image_size), train)
        original = not train and self.config.eval_at_original_size
        return LayoutDataset(layout, split, tasks, image_size, train, transform=transform, original_size=original,
                             ids=ids)
