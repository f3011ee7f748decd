"""PASCAL-Context multi-task benchmark (``PASCAL_MT.tgz``), MTLoRA's headline dataset: task specs only.

Tasks (PROTOCOL.md 1.2, 3, 4.3): ``semseg`` (21 classes), ``human_parts`` (6 parts + background,
person images only), ``sal`` (distilled saliency), ``normals`` (distilled normals) and ``edge``
(not in the headline benchmark); 4,998 train / 5,105 val images resized to 448x448. The loader
itself is planned; until then :meth:`PascalMTDataset.resolve_root` and :meth:`PascalMTDataset.build`
raise a :class:`~mtpeft_bench.errors.UserError`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NoReturn, Sequence

from mtpeft_bench.errors import UserError
from mtpeft_bench.registry import register_dataset
from mtpeft_bench.tasks.base import DatasetPlugin, TaskSpec
from mtpeft_bench.tasks.specs import edge_task, normals_task, saliency_task, segmentation_task


NOT_IMPLEMENTED = "the pascal_mt loader is not implemented yet (planned); use --dataset synth"


@register_dataset("pascal_mt")
class PascalMTDataset(DatasetPlugin):
    """PASCAL-Context MTL: semseg 21, human_parts 7, sal, normals (edge optional) at 448x448."""

    version = 1
    tasks = {
        "semseg": segmentation_task("semseg", 21, 1.0, "PASCAL-Context semantic segmentation (VOC 20 + background)"),
        "human_parts": segmentation_task("human_parts", 7, 2.0, "human parts (6 + background), person images only"),
        "sal": saliency_task("distilled salient-object mask"),
        "normals": normals_task("distilled surface normals (unit vectors)"),
        "edge": edge_task("odsF", 0.0075, "object boundaries from the Context label map"),
    }
    default_tasks = ("semseg", "human_parts", "sal", "normals")
    image_size = (448, 448)
    splits = ("train", "val")
    requires_root = True
    reference = "pascal_mt"

    def resolve_root(self, root: Path | None) -> NoReturn:
        raise UserError(NOT_IMPLEMENTED)

    def build(self, split: str, tasks: Sequence[TaskSpec], image_size: tuple[int, int], root: Path | None,
              train: bool) -> Any:
        raise UserError(NOT_IMPLEMENTED)
