"""How busy the machine was while a run's speed was measured, and whether that makes its speed
figures suspect (the record's ``efficiency.load``, flagged by ``mtbench compare``).

Two trainings on one machine slow each other down (torch's threads oversubscribe the cores), so a
speed figure means little without knowing what else ran. :class:`LoadWindow` collects, over the
timed sections of :class:`~mtpeft_bench.measure.Throughput`, this process's CPU time and the
1-minute load average; :func:`load_record` turns the windows into the record's block and
:func:`judge` says whether the machine was busy, and by which rule. Imports torch only to ask CUDA
about the GPU's other processes.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any, Sequence

#: Below this share of its threads' time, the process waited for CPUs that others held.
CPU_SHARE_MIN = 0.7
#: Load an idle machine shows anyway (daemons, the shell): not counted as another job.
LOAD_SLACK = 0.5


def loadavg_1m() -> float | None:
    """The 1-minute load average (None where the platform has none)."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def cpu_count() -> int:
    """CPUs this process may run on (the affinity mask where the platform has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


@dataclass
class LoadWindow:
    """This process's CPU time and wall time over timed sections, and the load average at the
    start of the first one (the one after all of them is read by :func:`load_record`)."""

    wall_s: float = 0.0
    cpu_s: float = 0.0
    load_before: float | None = None

    def add(self, wall_s: float, cpu_s: float) -> None:
        self.wall_s += wall_s
        self.cpu_s += cpu_s


def judge(*, load_before: float | None, load_after: float | None, cpus: int, threads: int, workers: int,
          cpu_share: float | None, gpu_others: int | None, on_cuda: bool) -> tuple[bool, str | None]:
    """Whether the machine was busy while speed was measured, and the rule that said so.

    Rules, first match wins:

    - other processes on the run's GPU (CUDA);
    - on CPU, a CPU share below :data:`CPU_SHARE_MIN` (on CUDA the process waits for the GPU by design);
    - the load of others, the 1-minute load average (the larger of before and after) less this run's
      own (its busy threads, ``cpu_share × threads``, and its data-loader workers), above the CPUs this
      run leaves free (``cpus − threads − workers``) by more than :data:`LOAD_SLACK`.

    Returns:
        ``(busy, rule)``; ``rule`` is None when not busy.
    """
    if gpu_others:
        return True, f"{gpu_others} other process(es) on the GPU"
    if not on_cuda and cpu_share is not None and cpu_share < CPU_SHARE_MIN:
        return True, f"CPU share {cpu_share:.2f} < {CPU_SHARE_MIN}: the run waited for CPUs held by others"
    loads = [value for value in (load_before, load_after) if value is not None]
    if loads:
        own = (cpu_share if cpu_share is not None else 1.0) * threads + workers
        others = max(loads) - own
        free = max(cpus - threads - workers, 0)
        if others > free + LOAD_SLACK:
            return True, (f"load average {max(loads):.2f} less this run's {own:.1f} = {others:.1f} "
                          f"> {free} free CPU(s) + {LOAD_SLACK}")
    return False, None


def gpu_other_processes(device: Any) -> int | None:
    """How many other processes use the run's GPU (None where CUDA cannot tell: no pynvml)."""
    if getattr(device, "type", None) != "cuda":
        return None
    try:
        import torch

        text = torch.cuda.list_gpu_processes(device)
    except Exception:  # noqa: BLE001 - an optional reading; any failure means "unknown"
        return None
    if "not found" in text or "error" in text.lower():
        return None
    pids = [int(pid) for pid in re.findall(r"process\s+(\d+)\s+uses", text)]
    # This process is one of them (in a container the GPU lists host pids, so it may not show as ours).
    return max(len(pids) - 1, 0)


def load_record(windows: Sequence[LoadWindow], device: Any, threads: int, workers: int) -> dict[str, Any]:
    """The record's ``efficiency.load`` block from the timed windows (training and inference).

    ``loadavg_1m_after`` is read now, after every measurement (the latency timings included).
    """
    wall = sum(w.wall_s for w in windows)
    cpu = sum(w.cpu_s for w in windows)
    befores = [w.load_before for w in windows if w.load_before is not None]
    cpus = cpu_count()
    share = round(cpu / (wall * threads), 3) if wall > 0 and threads > 0 else None
    on_cuda = getattr(device, "type", None) == "cuda"
    block: dict[str, Any] = {
        "loadavg_1m_before": befores[0] if befores else None, "loadavg_1m_after": loadavg_1m(),
        "cpus": cpus, "threads": threads, "workers": workers, "cpu_share": share, "timed_s": round(wall, 3),
        "gpu_other_processes": gpu_other_processes(device),
    }
    busy, rule = judge(load_before=block["loadavg_1m_before"], load_after=block["loadavg_1m_after"], cpus=cpus,
                       threads=threads, workers=workers, cpu_share=share,
                       gpu_others=block["gpu_other_processes"], on_cuda=on_cuda)
    block.update(busy=busy, busy_rule=rule)
    return block
