"""NYUD-v2 as re-packaged by ATRC/InvPT (``NYUDv2.tar.gz``), a separate dataset from ``nyud``.

prismformore/Multi-Task-Transformer:InvPT/data/nyud.py (docs/protocol.md 1.4): the same ``gt_sets``
splits, but images are PNG and smaller than NYUD_MT's 480x640 (425x560 per the InvPT config),
edges are PNGs (v / 255), normals PNGs (2 v / 255 - 1), semseg PNGs (v - 1, -1 → ignore) and depth
``.npy`` in metres. Numbers on it are not comparable with NYUD_MT numbers, so it has its own
registry name, version and results. Samples go through the same protocol presets as ``nyud``
(the InvPT crop/pad protocol itself is not implemented).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mtpeft_bench.errors import UserError
from mtpeft_bench.registry import register_dataset
from mtpeft_bench.tasks.nyud import NyudDataset, looks_like_atrc


ATRC_FOLDER_NAMES = ("NYUDv2",)


@register_dataset("nyud_atrc")
class NyudAtrcDataset(NyudDataset):
    """NYUD-v2 in the ATRC/InvPT package (NYUDv2.tar.gz): PNG images and targets, smaller frames."""

    version = 1
    folder_names = ATRC_FOLDER_NAMES
    archive = "NYUDv2.tar.gz"
    image_suffix = ".png"

    def check_variant(self, folder: Path) -> None:
        if not looks_like_atrc(folder):
            raise UserError(f"{folder} is the NYUD_MT package (JPEG images), not ATRC's NYUDv2: use --dataset nyud")

    def sources(self) -> dict[str, Any]:
        from mtpeft_bench.tasks.nyud_layout import TargetSource

        return {
            "semseg": TargetSource("segmentation", "label_png"),
            "depth": TargetSource("depth", "npy"),
            "normals": TargetSource("normals", "normals_png"),
            "edge": TargetSource("edge", "edge_png"),
        }
