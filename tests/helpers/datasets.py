"""Miniature on-disk copies of the registered real-data datasets, for tests that load real items.

``tasks/miniature.py`` writes PASCAL_MT and NYUD_MT in their exact file formats; the ATRC packaging
of NYUDv2 (``nyud_atrc``) is derived from a NYUD_MT miniature here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from mtpeft_bench.tasks.miniature import write_nyud, write_pascal


def to_atrc_packaging(root: Path) -> Path:
    """Turn a miniature NYUD_MT folder into the ATRC packaging: PNG images, edge and normals PNGs."""
    for jpg in sorted((root / "images").glob("*.jpg")):
        Image.open(jpg).save(jpg.with_suffix(".png"))
        jpg.unlink()
    for npy in sorted((root / "edge").glob("*.npy")):
        Image.fromarray((np.load(npy) * 255).astype(np.uint8)).save(npy.with_suffix(".png"))
        npy.unlink()
    for npy in sorted((root / "normals").glob("*.npy")):
        n = np.load(npy)
        Image.fromarray(np.round((n + 1) / 2 * 255).astype(np.uint8)).save(npy.with_suffix(".png"))
        npy.unlink()
    return root


#: For every registered dataset that reads data from disk: a writer of its miniature data folder
#: under a given parent folder, returning the folder to pass as the dataset root.
MINIATURE_WRITERS: dict[str, Callable[[Path], Path]] = {
    "pascal_mt": lambda parent: write_pascal(parent / "PASCAL_MT"),
    "nyud": lambda parent: write_nyud(parent / "NYUD_MT"),
    "nyud_atrc": lambda parent: to_atrc_packaging(write_nyud(parent / "NYUD_MT")),
}
