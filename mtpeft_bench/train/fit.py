"""The epochs of one run (or of its rest, when resumed): train, evaluate periodically, write
checkpoints, log every step and evaluation as it happens (logging_sinks.py: ``metrics.jsonl`` and
the ``--logger`` libraries), and end cleanly when stopped (Ctrl-C/SIGTERM), when the loss diverges
or when memory runs out (failures.py). The run pipeline builds everything; the :class:`~mtpeft_bench.train.trainer.Trainer`
takes the steps; the run session (running/session.py) owns the run folder this loop saves into.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

import torch
from torch import nn

from mtpeft_bench.errors import UserError
from mtpeft_bench.measure import Throughput, peak_memory_mb, reset_peak_memory
from mtpeft_bench.train.distributed import DistContext, set_epoch
from mtpeft_bench.train.evaluation import evaluate
from mtpeft_bench.train.failures import (RunCancelled, RunFailed, StopOnSignal, oom_advice, out_of_memory_where,
                                          user_error_from_worker)
from mtpeft_bench.train.logging_sinks import LiveLog
from mtpeft_bench.train.trainer import EpochStats, Trainer, TrainingDiverged


class RunRecorder(Protocol):
    """What the loop needs of the run folder (running/session.py's ``RunSession`` is the one in use)."""

    run_id: str
    start_epoch: int
    partial: dict[str, Any] | None
    history: list[dict[str, Any]]
    elapsed_before: float
    resumed_from: list[int] | None  # [epoch, step in epoch] of the checkpoint resumed from; None: a new run

    @property
    def folder(self) -> Path: ...

    def has_checkpoint(self) -> bool: ...

    def save(self, *, model: nn.Module, trainer: Any, epoch: int, step_in_epoch: int,
             partial: dict[str, Any] | None, history: list[dict[str, Any]], elapsed_s: float) -> None: ...

    def mark(self, status: str, message: str = "", **fields: Any) -> None: ...


@dataclass
class FitResult:
    """What a finished fit reports.

    Attributes:
        metrics: ``{task: {metric: value}}`` of the final evaluation (every metric).
        inference: the final evaluation's timing.
        train_peak_mb, peak_mb: peak memory of training, and of training plus the final evaluation.
        memory_kind: what the peak measures (e.g. CUDA allocated, or process RSS on a CPU).
        history: one entry per epoch (losses, LR, time, periodic validation; the last one holds
            the final metrics).
    """

    metrics: dict[str, dict[str, float]]
    inference: Throughput
    train_peak_mb: float
    memory_kind: str
    peak_mb: float
    history: list[dict[str, Any]]


class FitLoop:
    """Runs epochs ``session.start_epoch … cfg.epochs`` and the final evaluation.

    Args:
        cfg: the run configuration; task_specs, image_size: the run's resolved tasks and size.
        ctx: this process's place in the run; device: where it computes.
        model: the bare model (evaluated without the DDP wrapper, whose forward would need every
            process to run the same number of batches); trainer: holds the (wrapped) model and the
            optimisation state.
        session: the run folder and the checkpoint to start from.
    """

    def __init__(self, cfg: Any, task_specs: Any, image_size: tuple[int, int], ctx: DistContext,
                 device: torch.device, model: nn.Module, trainer: Trainer, train_loader: Any, val_loader: Any,
                 session: RunRecorder):
        self.cfg, self.task_specs, self.image_size, self.ctx, self.device = cfg, task_specs, image_size, ctx, device
        self.model, self.trainer, self.session = model, trainer, session
        self.train_loader, self.val_loader = train_loader, val_loader
        self.history = session.history
        self.started = time.time()
        self.live: LiveLog | None = None

    def elapsed(self) -> float:
        """Training wall time of the run so far, over all its sessions."""
        return self.session.elapsed_before + time.time() - self.started

    def evaluate(self, periodic: bool = False) -> tuple[dict[str, dict[str, float]], Throughput]:
        """Evaluate on the validation split; ``periodic`` (during training) skips expensive metrics."""
        cfg = self.cfg
        return evaluate(self.model, self.val_loader, self.task_specs, self.device, cfg.amp, cfg.amp_dtype,
                        cfg.limit_eval_batches, cfg.progress and self.ctx.is_main,
                        reduce=lambda meter: meter.all_reduce(), skip_expensive=periodic)

    def save(self, epoch: int, step_in_epoch: int, partial: dict[str, Any] | None = None) -> None:
        self.session.save(model=self.model, trainer=self.trainer, epoch=epoch, step_in_epoch=step_in_epoch,
                          partial=partial, history=self.history, elapsed_s=self.elapsed())

    def run(self, say: Callable[[str], None]) -> FitResult:
        """Train and evaluate; ``say`` reports progress (one line per epoch).

        Raises:
            RunCancelled: stopped on request; a checkpoint of the exact step was saved.
            RunFailed: non-finite loss or out of memory; the last checkpoint is kept.
        """
        session, trainer = self.session, self.trainer
        self.phase = "train"
        stop = StopOnSignal(announce=self.ctx.is_main)
        trainer.stop_requested = lambda: stop.requested
        trainer.after_step = self._method_after_step()
        reset_peak_memory(self.device)
        try:
            self.live = self._open_live_log()
            trainer.on_step = lambda info: self.live.train_step(info, self.elapsed())
            with stop:
                for epoch in range(session.start_epoch, self.cfg.epochs + 1):
                    self._epoch(epoch, say, stop)
                train_peak, memory_kind = peak_memory_mb(self.device)
                self.phase = "eval"
                metrics, infer = self.evaluate()
                self.live.evaluation(trainer.step, self.cfg.epochs, metrics, self.elapsed(), final=True)
                if self.history:
                    self.history[-1]["val"] = metrics
                peak, _ = peak_memory_mb(self.device)
        except TrainingDiverged as exc:
            session.mark("failed", str(exc))
            kept = "its last checkpoint is kept" if session.has_checkpoint() else "no checkpoint was written"
            raise RunFailed(f"{exc} (run {session.run_id} stopped; {kept} in {session.folder})") from None
        except (RunCancelled, UserError):
            raise  # bad input found mid-run (a corrupt data file): the run session decides what stays
        except KeyboardInterrupt:
            session.mark("cancelled", "interrupted at once (second Ctrl-C); the last periodic checkpoint is kept")
            raise
        except Exception as exc:
            from_worker = user_error_from_worker(exc)
            if from_worker is not None:
                raise from_worker from None  # bad input, as if found without workers
            where = out_of_memory_where(exc)
            if where is None:
                session.mark("failed", f"{type(exc).__name__}: {exc}")
                raise
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            advice = oom_advice(self.cfg, self.image_size, self.phase, self.ctx.world_size, where)
            session.mark("failed", advice)
            raise RunFailed(advice) from None
        finally:
            trainer.on_step = None
            if self.live is not None:
                self.live.close()
        return FitResult(metrics, infer, train_peak, memory_kind, peak, self.history)

    def _method_after_step(self) -> Callable[[int], None] | None:
        """The encoder's optional ``after_step(global_step, total_steps)`` hook (methods/base.py),
        bound to this run's total number of optimizer steps; None when the method has none."""
        hook = getattr(getattr(self.model, "encoder", self.model), "after_step", None)
        if not callable(hook):
            return None
        total = self.trainer.schedule.total_steps
        return lambda step: hook(step, total)

    def _open_live_log(self) -> LiveLog:
        """The run's live logs; a resumed run continues them after its checkpoint's step."""
        from mtpeft_bench.config import logger_names

        resumed = self.session.resumed_from is not None
        return LiveLog(self.session.folder, self.session.run_id, self.cfg.to_dict(), logger_names(self.cfg.logger),
                       self.trainer.step if resumed else None, {s.name: s.primary.name for s in self.task_specs},
                       active=self.ctx.is_main)

    def _epoch(self, epoch: int, say: Callable[[str], None], stop: StopOnSignal) -> None:
        cfg, session = self.cfg, self.session
        start = None
        if epoch == session.start_epoch and session.partial:
            start = EpochStats(**session.partial)  # resuming inside this epoch
        set_epoch(self.train_loader, epoch, start.steps if start else 0)
        self.phase = "train"
        stats = self.trainer.train_epoch(self.train_loader, epoch, cfg.epochs, limit=cfg.limit_train_batches,
                                         start=start)
        if not stats.complete:
            self.save(epoch, stats.steps, {**stats.to_dict(), "val": None, "sums": stats.sums})
            session.mark("cancelled", f"stopped by {stop.signal_name or 'request'} at epoch {epoch}, step "
                                      f"{stats.steps}; checkpoint saved")
            say(f"mtbench: run {session.run_id} cancelled at epoch {epoch}, step {stats.steps}; checkpoint saved in "
                f"{session.folder}; continue it with the same command and --resume {session.run_id}")
            raise RunCancelled(f"run {session.run_id} cancelled", session.run_id)
        entry = stats.to_dict()
        # The losses of all processes (each averaged its own batches).
        means = self.ctx.mean({"loss": stats.loss, **{f"task.{t}": v for t, v in stats.task_losses.items()}})
        entry["loss"] = means["loss"]
        entry["task_losses"] = {t: means[f"task.{t}"] for t in stats.task_losses}
        last = epoch == cfg.epochs
        if cfg.eval_every and epoch % cfg.eval_every == 0 and not last:
            self.phase = "eval"
            entry["val"], _ = self.evaluate(periodic=True)
            self.live.evaluation(self.trainer.step, epoch, entry["val"], self.elapsed())
        self.history.append(entry)
        rate = self.trainer.train_throughput.last_rate
        say(f"epoch {epoch}/{cfg.epochs}: loss {entry['loss']:.4f} · lr {stats.lr:.3g} · {stats.seconds:.1f} s"
            + (f" · {rate:.1f} img/s" if rate else "")
            + (f" · data {100 * stats.data_seconds / stats.seconds:.0f} %" if stats.seconds > 0 else "")
            + (" · val " + ", ".join(f"{s.name} {entry['val'][s.name].get(s.primary.name, math.nan):.3f}"
                                      for s in self.task_specs) if entry.get("val") else ""))
        if cfg.checkpoint_every and (epoch % cfg.checkpoint_every == 0 or last):
            self.save(epoch + 1, 0)
