"""One run, start to finish: resolve → plan (done, resume or new) → build → train and evaluate →
measure → write the result record.

:func:`run` is what ``mtbench run`` and every point of a sweep call; it prints nothing (progress
goes to the ``mtpeft_bench`` logger, see running/summary.py) and returns a :class:`RunResult`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mtpeft_bench.config import RunConfig
from mtpeft_bench.errors import UserError
from mtpeft_bench.running.build import build_training, seed_everything
from mtpeft_bench.running.folders import runs_root
from mtpeft_bench.running.record import build_record, global_rate, write_result
from mtpeft_bench.running.session import RunSession
from mtpeft_bench.running.setup import check_before_work, pick_device, prepare, resolve_config, run_hash
from mtpeft_bench.running.summary import LOG, start_lines


@dataclass
class RunResult:
    """What :func:`run` did.

    Attributes:
        record: the result record (``{}`` on processes other than rank 0, which writes it).
        path: where the record is (None on other processes).
        task_specs: the run's tasks (the summary table shows their metrics in order).
        peak_memory_mb: peak memory of training and evaluation, unrounded (None when nothing ran).
        outcome: ``completed`` (ran now and wrote ``record``), ``already_completed`` (``resume=True``
            found this configuration done: ``record`` is the earlier result) or ``other_process``.
    """

    record: dict[str, Any]
    path: Path | None
    task_specs: list
    peak_memory_mb: float | None
    outcome: str


def run(cfg: RunConfig | None = None, /, *, resume: bool | str | None = None, **options: Any) -> RunResult:
    """Train and evaluate one method on one dataset; write the result record and return it in a :class:`RunResult`.

    Call as ``run(RunConfig(...))`` or ``run(method="ditask", dataset="synth", preset="smoke",
    **overrides)`` (keyword overrides use the same keys as ``--set``; without ``preset``, the
    dataset's default preset, as on the command line), or ``run(config="run.yaml", **overrides)``
    with a run file (running/config_file.py) under the overrides. Under ``torchrun`` every process calls it;
    rank 0 writes. ``resume``: None (a new run), True (continue this configuration: resume its
    newest interrupted run, or return its completed record, or start one) or a run id (running/resume.py).

    Raises:
        UserError: bad input, found before training where possible (found later, e.g. a corrupt
            data file, it leaves the run folders as they were unless a checkpoint was saved).
        RunFailed: the loss diverged or memory ran out (the last checkpoint is kept).
        RunCancelled: stopped by Ctrl-C/SIGTERM after saving a checkpoint (a ``KeyboardInterrupt``).
    """
    from mtpeft_bench.train import distributed
    from mtpeft_bench.train.fit import FitLoop

    if cfg is None:
        config_file = options.pop("config", None)
        cfg = resolve_config(options.pop("preset", None), {}, options, config_file=config_file)
    started = time.time()
    resolved = prepare(cfg)  # names and values
    ctx, device = distributed.setup(cfg.device, pick_device)
    out, runs = Path(cfg.out).expanduser(), runs_root(cfg)
    check_before_work(resolved, out, runs, ctx.is_main)  # paths, then weights: before any slow work
    full_hash = run_hash(cfg, resolved, ctx.world_size)
    plan = RunSession.plan(ctx, cfg, resolved.stored_config(), full_hash, runs, out, resume)
    if plan.completed is not None:  # resume=True and this configuration is already done
        if ctx.is_main:
            LOG.info(f"mtbench: already completed, nothing to do: {plan.completed.get('_path')}")
        return RunResult(plan.completed, Path(plan.completed["_path"]), resolved.task_specs, None, "already_completed")
    seed_everything(cfg.seed, cfg.deterministic)
    training = build_training(resolved, ctx, device)
    session = RunSession.begin(ctx, plan, device)  # from here on, the run folder records how the run ends
    try:
        session.restore_model(training.model)
        session.restore_training(training.trainer)
        say = LOG.info if ctx.is_main else (lambda message: None)
        for line in start_lines(resolved, ctx, device, training, session):
            say(line)

        fit = FitLoop(cfg, resolved.task_specs, resolved.image_size, ctx, device, training.model, training.trainer,
                      training.train_loader, training.val_loader, session).run(say)
    except UserError as exc:  # bad input found mid-run: leave the folders as they were, bar a useful checkpoint
        kept = session.abandon(str(exc))
        if not kept:
            raise
        raise UserError(f"{exc}{kept}") from None
    rates = (global_rate(ctx, training.trainer.train_throughput.last_rate), global_rate(ctx, fit.inference.last_rate))
    if not ctx.is_main:
        ctx.barrier()  # rank 0 writes the record
        return RunResult({}, None, resolved.task_specs, fit.peak_mb, "other_process")
    record = build_record(resolved, full_hash, ctx, device, session, training, fit, rates, started)
    path = write_result(out, record)
    session.mark("completed", result=str(path))
    ctx.barrier()
    return RunResult(record, path, resolved.task_specs, fit.peak_mb, "completed")
