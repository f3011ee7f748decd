"""Sweeps: a grid of runs (datasets × methods × seeds, one shared recipe), run one after another in
this process, or printed as one ``torchrun`` command per run for a cluster scheduler.

Every grid point is resolved exactly as ``mtbench run`` would resolve it (running/setup.py
``resolve_config``), and identified by its ``config_hash`` (``run_hash``). A point whose completed
result (same hash) is in the results folder is skipped; a point with an interrupted run in the runs
folder is resumed from its checkpoint; the rest start (the decision of running/resume.py, as for one run). Re-running a finished sweep therefore does no work, and re-running an
interrupted one continues where it stopped. A run that fails (divergence, out of memory) is
reported and the sweep goes on; Ctrl-C stops the sweep after the current run saved its checkpoint.

Runs go one at a time, each with all of torch's threads, unless ``--jobs N`` starts N − 1 more
sweep processes on the same grid, all with CPUs/N threads. Several sweeps may share a grid: each
point is run under its lock (running/run_lock.py), taken before the point's "done, resume or new"
decision is made again and held to the end of the run, so a point another sweep is running is
skipped, and one it finished meanwhile is found completed. (A sweep under torchrun takes no lock:
its processes run every point together.)
"""

from __future__ import annotations

import shlex
import sys
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence


@dataclass
class GridPoint:
    """One run of the sweep."""

    dataset: str
    method: str
    seed: int
    cfg: Any
    config_hash: str
    state: str = "new"  # new | resume | done
    detail: str = ""
    name: str = ""  # how progress lines call it (default: dataset/method/seed)


@dataclass
class SweepResult:
    """What a sweep did: run ids by outcome, and the failures' messages."""

    skipped: list[str] = field(default_factory=list)
    completed: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    elsewhere: list[str] = field(default_factory=list)  # labels of points another process was running


def expand(datasets: Sequence[str], methods: Sequence[str], seeds: Sequence[int], preset: str | None,
           options: Mapping[str, Any], sets: Mapping[str, Any], world_size: int = 1,
           config_file: Any = None) -> list[GridPoint]:
    """Resolve every grid point (all bad input is found here, before anything runs); ``config_file``:
    the shared settings of a sweep file (running/config_file.py), under ``options`` and ``sets``."""
    from mtpeft_bench.running.setup import prepare, resolve_config, run_hash

    points = []
    for dataset in datasets:
        for method in methods:
            for seed in seeds:
                cfg = resolve_config(preset, {**options, "dataset": dataset, "method": method, "seed": seed}, sets,
                                     config_file=config_file)
                points.append(GridPoint(dataset, method, seed, cfg, run_hash(cfg, prepare(cfg), world_size)))
    return points


def classify(points: Sequence[GridPoint]) -> None:
    """Set each point's ``state``: ``done`` (a completed result with its hash exists), ``resume`` (an
    interrupted run with its hash can be resumed) or ``new``; and its ``detail`` (the run id, and
    where a run to resume stands)."""
    from mtpeft_bench.running.folders import runs_root
    from mtpeft_bench.running.resume import decide, read_results

    records: dict[Path, list[dict[str, Any]]] = {}
    for point in points:
        out = Path(point.cfg.out).expanduser()
        if out not in records:
            records[out] = read_results(out)
        decision = decide(point.config_hash, out, runs_root(point.cfg), resume=True, records=records[out])
        point.state, point.detail = decision.kind, decision.detail


def start_jobs(sweep_args: Sequence[str], count: int, threads: int) -> list[Any]:
    """Start ``count`` more ``mtbench sweep`` processes with ``sweep_args`` (the same grid), each with
    ``threads`` torch threads; the run locks share the points out between them and this process."""
    import os
    import subprocess

    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    return [subprocess.Popen([sys.executable, "-m", "mtpeft_bench", *sweep_args], env=env) for _ in range(count)]


def wait_jobs(procs: Sequence[Any], stop: bool = False) -> list[int]:
    """Wait for the processes of :func:`start_jobs` (asking them to stop first, as Ctrl-C would, when
    ``stop``); their exit statuses."""
    import signal

    for proc in procs:
        if stop and proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # each saves its run's checkpoint, as after Ctrl-C
    return [proc.wait() for proc in procs]


def busy_machine_warning() -> str | None:
    """One line when the 1-minute load average is already above the CPU count as the sweep starts."""
    from mtpeft_bench.machine_load import cpu_count, loadavg_1m

    load, cpus = loadavg_1m(), cpu_count()
    if load is None or load <= cpus:
        return None
    return (f"sweep: warning: the load average ({load:.1f}) is already above the {cpus} CPUs: other jobs share "
            "this machine, so runs are slower and compare marks their speed as measured on a busy machine; "
            f"run one sweep at a time (--jobs n for n runs at once), or give each of n sweeps "
            f"OMP_NUM_THREADS={cpus}/n")


def label(point: GridPoint) -> str:
    return point.name or f"{point.dataset}/{point.method}/seed {point.seed}"


def run_grid(points: Sequence[GridPoint], echo: Callable[[str], None] | None = None,
             show: Callable[[Any], None] = lambda result: None) -> SweepResult:
    """Run the points that are not done, one after another; failures are collected, not raised.

    ``echo`` reports the sweep's progress (default: the ``mtpeft_bench`` logger at INFO);
    ``show`` receives each completed run's :class:`~mtpeft_bench.running.pipeline.RunResult`
    (``mtbench sweep`` prints its summary).
    """
    from mtpeft_bench.running.folders import runs_root
    from mtpeft_bench.running.run_lock import run_lock
    from mtpeft_bench.running.summary import LOG
    from mtpeft_bench.train.distributed import env_world_size

    echo = echo or LOG.info
    lock = env_world_size() == 1  # under torchrun, all processes run each point together
    result = SweepResult()
    todo = [p for p in points if p.state != "done"]
    for point in points:
        if point.state == "done":
            result.skipped.append(point.detail)
            echo(f"sweep: skip {label(point)} (completed: {point.detail})")
    for i, point in enumerate(todo, 1):
        guard = run_lock(runs_root(point.cfg), point.config_hash) if lock else nullcontext(True)
        with guard as held:
            if not held:
                result.elsewhere.append(label(point))
                echo(f"sweep: {label(point)} is running in another process; skipped")
                continue
            if lock:
                classify([point])  # again, under the lock: another sweep may have run it meanwhile
                if point.state == "done":
                    result.skipped.append(point.detail)
                    echo(f"sweep: skip {label(point)} (completed by another process: {point.detail})")
                    continue
            verb = f"resume {point.detail}" if point.state == "resume" else "start"
            echo(f"sweep: [{i}/{len(todo)}] {label(point)}: {verb}")
            _run_point(point, result, echo, show)
    return result


def _run_point(point: GridPoint, result: SweepResult, echo: Callable[[str], None],
               show: Callable[[Any], None]) -> None:
    """Run one point (deciding again: another sweep may have completed it) and note how it went."""
    import gc

    from mtpeft_bench.running.pipeline import run
    from mtpeft_bench.train.failures import RunFailed

    try:
        outcome = run(point.cfg, resume=True)
    except RunFailed as exc:
        result.failed.append((label(point), str(exc)))
        echo(f"sweep: {label(point)} failed: {exc}")
        return
    finally:
        gc.collect()
        _empty_cuda_cache()
    if outcome.outcome == "already_completed":  # by another sweep, since this one looked
        result.skipped.append(outcome.record.get("run_id", ""))
        return
    show(outcome)
    result.completed.append(outcome.record.get("run_id", ""))


def _empty_cuda_cache() -> None:
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


def torchrun_command(point: GridPoint, run_args: Sequence[str], nproc_per_node: int, nnodes: int) -> str:
    """The shell command that runs ``point`` under torchrun (``--resume``, so a re-issued command
    continues an interrupted run, or does nothing once the run completed).

    Several nodes rendezvous at ``$MASTER_ADDR:$MASTER_PORT`` (left for the scheduler's shell to fill).
    """
    head = ["torchrun"]
    if nnodes == 1:
        head += ["--standalone", f"--nproc_per_node={nproc_per_node}"]
    else:
        head += [f"--nnodes={nnodes}", f"--nproc_per_node={nproc_per_node}", "--rdzv_backend=c10d",
                 f"--rdzv_id=mtbench-{point.config_hash}"]
    args = ["-m", "mtpeft_bench", "run", "--method", point.method, "--dataset", point.dataset,
            "--seed", str(point.seed), *run_args, "--no-progress", "--resume"]
    text = shlex.join(head)
    if nnodes > 1:
        text += ' --rdzv_endpoint="$MASTER_ADDR:$MASTER_PORT"'
    return text + " " + shlex.join(args)
