"""Writing files so that a reader never sees half of one: results, checkpoints, tables, figures.

Every file mtbench writes goes through :func:`atomic_file` (or the JSON and text shortcuts built on
it): the content goes to a temporary file in the same folder, which is fsynced and renamed onto the
destination. A crash leaves the old file or none, never a truncated one. A step that may fail
after making folders records them with :func:`make_folders` and, on failure, takes away the empty
ones with :func:`remove_empty_folders`, so a failure leaves no empty folder behind either.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Mapping


@contextmanager
def atomic_file(path: Path) -> Iterator[str]:
    """A temporary file name in ``path``'s folder that becomes ``path`` when the block succeeds.

    The caller writes the temporary file; on leaving the block it is fsynced, given the mode a plain
    ``open()`` would give, and renamed onto ``path``, so a reader never sees a half-written file and
    a crash leaves the old file (or none). If the block raises, the temporary file is removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield tmp
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        _default_mode(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_json_atomic(path: Path, data: Mapping[str, Any]) -> Path:
    """Write ``data`` as JSON to ``path`` atomically (:func:`atomic_file`)."""
    with atomic_file(path) as tmp, open(tmp, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=2, sort_keys=False, default=json_default, allow_nan=False)
        handle.write("\n")
    return Path(path)


def _default_mode(path: str) -> None:
    """Give a temporary file the mode a plain ``open()`` would (mkstemp makes it private, 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def write_text_atomic(path: Path, text: str | bytes) -> Path:
    """Write ``text`` (or bytes) to ``path`` atomically (:func:`atomic_file`)."""
    with atomic_file(path) as tmp, open(tmp, "wb") as handle:
        handle.write(text.encode("utf-8") if isinstance(text, str) else text)
    return Path(path)


def json_default(value: Any) -> Any:
    """``json.dump``'s hook for the values results and checkpoints hold beyond JSON's own types."""
    if isinstance(value, (set, tuple)):
        return list(value)
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"cannot store a {type(value).__name__} as JSON")


def make_folders(path: Path) -> list[Path]:
    """Create folder ``path`` with its missing parents; the folders this created, deepest first."""
    path = Path(path)
    created = [p for p in (path, *path.parents) if not p.exists()]
    path.mkdir(parents=True, exist_ok=True)
    return created


def remove_empty_folders(folders: list[Path]) -> None:
    """Remove ``folders`` (deepest first, as :func:`make_folders` lists them) up to the first one that
    is not empty; those already gone are passed over."""
    for folder in folders:
        if not folder.exists():
            continue
        try:
            folder.rmdir()
        except OSError:
            return
