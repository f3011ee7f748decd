"""Finding a real dataset's folder from ``--data-root`` / ``$MTBENCH_DATA`` (docs/protocol.md 1.1).

A data root may be the extracted dataset folder itself or a parent holding it under its usual
name (``<data root>/PASCAL_MT``, ``<data root>/NYUD_MT``, which is where ``mtbench data prepare``
puts it). A folder is recognised by probing for marker paths, never by its name alone.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from mtpeft_bench.errors import UserError


ARCHIVE_SUFFIXES = (".tgz", ".tar.gz", ".tar")


def default_data_root() -> Path | None:
    """``$MTBENCH_DATA`` as a path, or None."""
    env = os.environ.get("MTBENCH_DATA")
    return Path(env).expanduser() if env else None


def has_markers(folder: Path, markers: Sequence[str]) -> bool:
    return all((folder / m).exists() for m in markers)


def find_dataset_root(root: Path | str | None, dataset: str, folder_names: Sequence[str], markers: Sequence[str],
                      archive: str) -> Path:
    """Return the dataset folder: ``root`` or ``root/<one of folder_names>``, whichever has every marker.

    Args:
        root: ``--data-root``; None falls back to ``$MTBENCH_DATA``.
        dataset: the registry name (for the messages).
        folder_names: usual names of the extracted folder.
        markers: paths (relative) that the folder must contain.
        archive: the archive's file name (for the messages).

    Raises:
        UserError: no root given, ``root`` is an archive, or no candidate has the markers.
    """
    how = f"`mtbench data prepare {dataset} --from {archive}` puts it there"
    if root is None:
        root = default_data_root()
        if root is None:
            raise UserError(f"no data folder given for {dataset}; set --data-root or MTBENCH_DATA to the folder "
                            f"holding {folder_names[0]} ({how})")
    root = Path(root).expanduser()
    if root.is_file():
        if root.name.endswith(ARCHIVE_SUFFIXES):
            raise UserError(f"{root} is an archive; run `mtbench data prepare {dataset} --from {root}` first and "
                            "point --data-root at the data root it reports")
        raise UserError(f"{root} is a file, not a data folder; set --data-root to the folder holding {folder_names[0]}")
    for candidate in [root, *(root / name for name in folder_names)]:
        if has_markers(candidate, markers):
            return candidate
    if not root.exists():
        raise UserError(f"data folder {root} does not exist; set --data-root or MTBENCH_DATA ({how})")
    raise UserError(f"{root} holds no {folder_names[0]} dataset (looked for {', '.join(markers)} in it and in "
                    f"{root / folder_names[0]}); {how}")
