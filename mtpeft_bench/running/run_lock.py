"""One process per configuration: a lock file per ``config_hash`` in the runs folder, held from the
"done, resume or new" decision to the end of the run, so that two sweeps started on the same grid
neither run a configuration twice nor write into the same run folder.

The lock is ``fcntl.flock`` on ``<runs_dir>/<config_hash>.lock``: the kernel releases it when its
process ends, however it ends, so a killed sweep leaves no stale lock. The holder deletes the file
before releasing it; a process that locked a file another one has just deleted notices (the path no
longer names the file it holds) and tries again. Where ``fcntl`` does not exist (Windows) the lock
is always granted.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

try:
    import fcntl
except ImportError:  # Windows: no locking
    fcntl = None  # type: ignore[assignment]


def lock_path(runs: Path, config_hash: str) -> Path:
    return Path(runs) / f"{config_hash}.lock"


def _take(path: Path) -> int | None:
    """The open descriptor of ``path``, locked, or None when another process holds it."""
    while True:
        path.parent.mkdir(parents=True, exist_ok=True)  # another sweep may have removed an empty one
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)  # the previous holder deleted the file after we opened it: lock the new one


@contextmanager
def run_lock(runs: Path, config_hash: str) -> Iterator[bool]:
    """Hold the lock of ``config_hash`` under the runs folder ``runs`` for the ``with`` block.

    Yields:
        True when this process holds the lock (or cannot take one: the runs folder is not
        writable), False when another one does (then nothing is held). A runs folder this creates
        is removed again when it is still empty at the end.
    """
    runs = Path(runs)
    if fcntl is None:
        yield True
        return
    created = not runs.exists()
    path = lock_path(runs, config_hash)
    try:
        fd = _take(path)
        held = fd is not None
    except OSError:  # the runs folder cannot be written: the run reports that in its own words
        fd, held = None, True
    try:
        yield held
    finally:
        if fd is not None:
            path.unlink(missing_ok=True)  # while still held: see the module docstring
            os.close(fd)
        if created:
            try:
                runs.rmdir()
            except OSError:
                pass  # not empty: the run's folder is there
