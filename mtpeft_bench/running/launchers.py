"""Sweeps beyond this process: one job per grid point through submitit, on Slurm or as local processes.

``mtbench sweep --launcher slurm`` submits every point still to do as its own Slurm job
(``submitit.SlurmExecutor``); ``--launcher local`` runs the same jobs as local subprocesses
(``submitit.LocalExecutor``), at most ``--jobs`` at a time. Each job runs its point through
:func:`mtpeft_bench.running.sweep.run_grid`, as the in-process sweep does: under the point's lock,
the "done, resume or new" decision of running/resume.py is made again, so a point another sweep or
job completed meanwhile is skipped, and an interrupted one is resumed from its checkpoint.

A job that dies (killed, out of host memory, preempted, over its time limit) leaves the run folder
with its last checkpoint, and is submitted again, at most ``reruns`` times (default 1): the rerun
resumes that run, so it ends with one result record, not two. A job whose run *failed* (the loss
diverged, out of GPU memory, bad input) is reported and not rerun: it would fail again.

submitit is an optional dependency (``pip install 'mtpeft-bench[slurm]'``), imported only here.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from mtpeft_bench.errors import UserError
from mtpeft_bench.registry import did_you_mean

LAUNCHERS = ("inprocess", "local", "slurm")

#: ``--launcher-opts`` keys: (sbatch parameter of submitit's SlurmExecutor, LocalExecutor parameter,
#: type, meaning); an empty name: not passed to that executor.
OPTIONS: dict[str, tuple[str, str, type, str]] = {
    "partition": ("partition", "", str, "Slurm partition"),
    "time": ("time", "timeout_min", int, "time limit of each job in minutes (default 1440)"),
    "gpus": ("gpus_per_node", "gpus_per_node", int, "GPUs per job (default: 1 on slurm, 0 on local)"),
    "cpus": ("cpus_per_task", "", int, "CPUs per job (default 10 on slurm)"),
    "mem_gb": ("mem", "", int, "host memory per job in GB"),
    "account": ("account", "", str, "Slurm account"),
    "qos": ("qos", "", str, "Slurm quality of service"),
    "constraint": ("constraint", "", str, "Slurm node constraint"),
    "reruns": ("", "", int, "times a job that died is submitted again (default 1)"),
    "folder": ("", "", str, "where submitit keeps job scripts and logs (default <runs_dir>/submitit)"),
}

DEFAULTS = {"time": 1440, "reruns": 1}
SLURM_DEFAULTS = {"gpus": 1, "cpus": 10}


def parse_launcher_opts(items: Sequence[str]) -> dict[str, Any]:
    """``("partition=gpu,time=120", "gpus=1")`` → ``{"partition": "gpu", "time": 120, "gpus": 1}``.

    Raises:
        UserError: an item without ``=``, an unknown key (with did-you-mean) or a value of the wrong type.
    """
    opts: dict[str, Any] = {}
    for item in items:
        for part in filter(None, (p.strip() for p in item.split(","))):
            key, sep, value = part.partition("=")
            key = key.strip().replace("-", "_")
            if not sep:
                raise UserError(f"--launcher-opts takes KEY=VALUE items, got {part!r}")
            if key not in OPTIONS:
                hint = did_you_mean(key, list(OPTIONS))
                raise UserError(f"unknown launcher option '{key}'{'; ' + hint if hint else ''} "
                                f"(options: {', '.join(OPTIONS)})")
            kind = OPTIONS[key][2]
            try:
                opts[key] = kind(value.strip())
            except ValueError:
                raise UserError(f"launcher option {key} must be an integer, got {value!r}") from None
            if kind is int and opts[key] < 0:
                raise UserError(f"launcher option {key} must be 0 or more, got {opts[key]}")
    return opts


def import_submitit() -> Any:
    try:
        import submitit
    except ImportError:
        raise UserError("--launcher local/slurm needs submitit: pip install 'mtpeft-bench[slurm]'") from None
    return submitit


def executor_parameters(launcher: str, opts: Mapping[str, Any]) -> dict[str, Any]:
    """The submitit parameters of ``launcher`` for the ``--launcher-opts`` (with the defaults; the
    Slurm ones are sbatch's names, the options a local process cannot use are left out)."""
    chosen = {**DEFAULTS, **(SLURM_DEFAULTS if launcher == "slurm" else {}), **opts}
    column = 0 if launcher == "slurm" else 1
    params = {OPTIONS[key][column]: value for key, value in chosen.items() if OPTIONS[key][column]}
    if launcher == "slurm":
        params.update(nodes=1, ntasks_per_node=1, job_name="mtbench")
        if "mem" in params:
            params["mem"] = f"{params['mem']}GB"
    return params


def make_executor(launcher: str, folder: Path, opts: Mapping[str, Any]) -> Any:
    """A submitit executor for ``launcher`` (``local`` or ``slurm``) with the ``--launcher-opts`` set.

    Raises:
        UserError: submitit is not installed, or ``slurm`` where there is no Slurm (no ``srun``).
    """
    submitit = import_submitit()
    if launcher == "slurm":
        try:
            executor = submitit.SlurmExecutor(folder=str(folder))
        except RuntimeError as exc:  # submitit: 'Could not detect "srun"'
            raise UserError(f"--launcher slurm finds no Slurm here ({exc}); start the sweep on a machine that "
                            "submits to the cluster, or use --launcher local") from None
    else:
        executor = submitit.LocalExecutor(folder=str(folder))
    executor.update_parameters(**executor_parameters(launcher, opts))
    return executor


@dataclass
class JobOutcome:
    """What one job returns: the sweep's account of its point, and whether the run was interrupted
    (Ctrl-C, SIGTERM of a preemption) after saving its checkpoint."""

    result: Any
    interrupted: bool = False


def run_point_job(point: Any, threads: int | None = None) -> JobOutcome:
    """The body of one job: the point through the in-process sweep's code (lock, decide again, run)."""
    import logging

    from mtpeft_bench.errors import UserError as BadInput
    from mtpeft_bench.running.summary import LOG, log_to_stderr, print_summary
    from mtpeft_bench.running.sweep import SweepResult, label, run_grid
    from mtpeft_bench.train.failures import RunCancelled

    log_to_stderr(logging.INFO)
    if threads:
        import torch

        torch.set_num_threads(threads)
    try:
        return JobOutcome(run_grid([point], LOG.info, show=print_summary))
    except RunCancelled:
        return JobOutcome(SweepResult(), interrupted=True)
    except BadInput as exc:
        return JobOutcome(SweepResult(failed=[(label(point), str(exc))]))


def launch_grid(points: Sequence[Any], launcher: str, opts: Mapping[str, Any], jobs: int = 1,
                echo: Callable[[str], None] = print, poll_s: float = 1.0, executor: Any = None) -> Any:
    """Run the points not done as one job each; return the merged
    :class:`~mtpeft_bench.running.sweep.SweepResult`.

    ``jobs``: at most this many local jobs at a time (Slurm jobs are all submitted; the cluster
    schedules them). ``executor``: a submitit executor to use instead of :func:`make_executor`'s.
    """
    from mtpeft_bench.machine_load import cpu_count
    from mtpeft_bench.running.folders import runs_root
    from mtpeft_bench.running.sweep import SweepResult, label

    submitit = import_submitit()
    result = SweepResult()
    todo = []
    for point in points:
        if point.state == "done":
            result.skipped.append(point.detail)
            echo(f"sweep: skip {label(point)} (completed: {point.detail})")
        else:
            todo.append(point)
    if not todo:
        return result
    folder = Path(opts.get("folder") or runs_root(todo[0].cfg) / "submitit").expanduser()
    executor = executor or make_executor(launcher, folder, opts)
    reruns = int(opts.get("reruns", DEFAULTS["reruns"]))
    limit = jobs if launcher == "local" else None
    threads = max(cpu_count() // jobs, 1) if launcher == "local" else None
    pending: list[tuple[Any, int]] = [(p, 0) for p in todo]
    running: dict[Any, tuple[Any, int]] = {}
    try:
        while pending or running:
            while pending and (limit is None or len(running) < limit):
                point, attempt = pending.pop(0)
                job = executor.submit(run_point_job, point, threads)
                running[job] = (point, attempt)
                echo(f"sweep: {label(point)}: job {job.job_id} submitted" + (f" (rerun {attempt})" if attempt else ""))
            time.sleep(poll_s)
            for job in [j for j in running if j.done()]:
                point, attempt = running.pop(job)
                why = _died(job, submitit)
                if why is None:
                    outcome = job.result()
                    _merge(result, outcome.result)
                    if not outcome.interrupted:
                        continue
                    why = "its run was interrupted after saving a checkpoint"
                if why.startswith("raised"):
                    result.failed.append((label(point), f"job {job.job_id} {why}"))
                    echo(f"sweep: {label(point)} failed: job {job.job_id} {why}")
                elif attempt < reruns:
                    echo(f"sweep: {label(point)}: job {job.job_id} died ({why}); submitting it again, its run "
                         "resumes from its last checkpoint")
                    pending.append((point, attempt + 1))
                else:
                    result.failed.append((label(point), f"job {job.job_id} died ({why}) {attempt + 1} time(s)"))
                    echo(f"sweep: {label(point)} failed: job {job.job_id} died ({why}); no reruns left "
                         "(--launcher-opts reruns=N)")
    except KeyboardInterrupt:
        if launcher == "local":
            for job in running:
                job.cancel(check=False)  # the run saves its checkpoint, as after Ctrl-C
        else:
            echo(f"sweep: {len(running)} Slurm job(s) keep running: {', '.join(j.job_id for j in running)}")
        raise
    return result


def _died(job: Any, submitit: Any) -> str | None:
    """None when the job returned; ``raised ...`` when its function raised (a bug: not rerun); else
    why it produced nothing (killed, preempted, timed out)."""
    try:
        job.result()
    except submitit.core.utils.UncompletedJobError as exc:
        return f"no result: {str(exc).strip().splitlines()[0][:200]}"
    except submitit.core.utils.FailedJobError as exc:
        lines = [line for line in str(exc).strip().splitlines() if line.strip()]
        return f"raised {lines[-1][:300] if lines else 'an error'} (log: {job.paths.stderr})"
    return None


def _merge(into: Any, part: Any) -> None:
    for name in ("skipped", "completed", "failed", "elsewhere"):
        getattr(into, name).extend(getattr(part, name))
