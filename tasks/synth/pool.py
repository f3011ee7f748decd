"""Batch rendering helpers shared by the ``synth`` cache and the pretraining corpus: how many worker
processes to use, a progress bar that may be off, and a fork pool that runs chunks of work."""

from __future__ import annotations

import logging
import os
import sys
from typing import Any, Callable, Iterable, Iterator, TypeVar


Chunk = TypeVar("Chunk")
Done = TypeVar("Done")


def default_workers(num_jobs: int) -> int:
    """One process per available core, at most 8, on Linux and for 64 jobs or more; else 1."""
    if sys.platform != "linux" or num_jobs < 64:
        return 1
    return max(1, min(len(os.sched_getaffinity(0)), 8))


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def progress_bar(total: int, desc: str, enabled: bool) -> Any:
    """A tqdm bar on stderr counting images (``update``/``close``), or one that shows nothing."""
    if not enabled:
        return _NoBar()
    try:
        from tqdm import tqdm
    except ImportError:
        logging.getLogger(__name__).info(desc)  # no bar: say once what is being made
        return _NoBar()
    return tqdm(total=total, desc=desc, unit="img", file=sys.stderr, mininterval=0.5, leave=True)


def run_chunks(work: Callable[[Chunk], Done], chunks: Iterable[Chunk], workers: int) -> Iterator[Done]:
    """``work(chunk)`` for every chunk: in this process (``workers`` 1, in order) or in a pool of
    ``workers`` processes (in order of completion). ``work`` must be a module-level function."""
    if workers == 1:
        yield from map(work, chunks)
        return
    import multiprocessing

    # fork, like torch's DataLoader workers: spawn would re-run an unguarded user script
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        yield from pool.imap_unordered(work, chunks)
