"""The training step and epoch of every method: one :class:`Trainer` owns a run's optimisation state.

Gradient-norm clipping, AMP on CUDA (a gradient scaler for float16), the weighted multi-task loss
plus a method's extra loss, gradient accumulation over micro-batches, and a per-step agreement
between processes on stopping and on non-finite losses. The optimizer and schedule are
:mod:`~mtpeft_bench.train.optim`'s.

Gradient accumulation (``accum_steps`` N): the loader still yields the step's whole batch; each of
its N equal slices is forwarded and back-propagated on its own with its loss divided by N, so the
summed gradient is the gradient of the mean of the slices' losses — the batch's loss when each
loss is a mean over samples (a loss averaged over valid pixels averages per slice, as DDP averages
per process). Activations are held for one slice at a time.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from mtpeft_bench.losses import compute_losses
from mtpeft_bench.measure import Throughput
from mtpeft_bench.train.device import amp_active, autocast, to_device
from mtpeft_bench.train.optim import Schedule, make_optimizer


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


@dataclass
class EpochStats:
    """What one training epoch reports."""

    epoch: int
    loss: float
    task_losses: dict[str, float]
    lr: float
    steps: int
    seconds: float
    val: dict[str, dict[str, float]] | None = None
    data_seconds: float = 0.0  # of ``seconds``: waiting for the loader's next batch (its share of the step)
    complete: bool = True  # False: stopped on request inside the epoch (``steps`` taken so far)
    sums: dict[str, Any] = field(default_factory=dict)  # {"total": Σ loss, "tasks": {t: Σ}}: exact resumption

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k not in ("complete", "sums")}


@dataclass
class Trainer:
    """Owns the optimisation state of one run.

    Args:
        model: the multi-task model.
        task_specs: the tasks (their losses and weights).
        device: where to train.
        schedule: the LR plan.
        weight_decay, clip_grad, amp, amp_dtype: see :class:`~mtpeft_bench.config.RunConfig`.
        loss_weights: per-task overrides of ``TaskSpec.loss_weight``.
        progress: show tqdm bars.
        agree: element-wise OR of flags over all processes (DDP); every step agrees on "stop" and
            on which losses are non-finite, so all processes stop or fail at the same step.
        stop_requested: returns True once a stop was asked for (Ctrl-C); checked every step, acted on
            after the step completes (so the forward pass's side effects, e.g. BatchNorm statistics,
            belong to a step that counts).
        after_step: called with the global step (1, 2, ...) after every optimizer step, while the
            gradients are still in place (the fit loop sets it to the method's ``after_step`` hook).
        accum_steps: micro-batches per step (see the module docstring); the batch must split evenly.
        on_step: called after every step with ``{step, epoch, loss, task_losses, lr}`` (live logs).
    """

    model: nn.Module
    task_specs: Sequence[Any]
    device: torch.device
    schedule: Schedule
    weight_decay: float = 0.05
    clip_grad: float | None = 5.0
    amp: bool = True
    amp_dtype: str = "float16"
    loss_weights: Mapping[str, float] = field(default_factory=dict)
    progress: bool = True
    step: int = 0
    agree: Callable[[Sequence[bool]], list[bool]] | None = None
    stop_requested: Callable[[], bool] | None = None
    after_step: Callable[[int], None] | None = None
    stopping: bool = False  # every process agreed to stop after the current step
    accum_steps: int = 1  # micro-batches per step (the batch is split into this many equal slices)
    on_step: Callable[[dict[str, Any]], None] | None = None  # told of every step (train/logging_sinks.py)

    def __post_init__(self) -> None:
        self.optimizer, self.scheduler = make_optimizer(self.model, self.schedule, self.weight_decay)
        use_scaler = amp_active(self.device, self.amp) and self.amp_dtype == "float16"
        self.scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)
        # Skip the first steps (allocator and kernel warm-up), but keep some timed steps in short runs.
        self.train_throughput = Throughput(self.device, warmup=min(5, self.schedule.total_steps // 2))
        self.tasks = [s.name for s in self.task_specs]
        bare = getattr(self.model, "module", self.model)  # inside a DDP wrapper
        self.encoder = getattr(bare, "encoder", bare)
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]

    def _loss(self, outputs: dict[str, torch.Tensor], targets: dict[str, torch.Tensor]):
        _, per_task = compute_losses({t: o.float() for t, o in outputs.items()}, targets, self.task_specs)
        # The weighted sum is formed here so that --set loss_weights.<task>=... can override it.
        total = sum(self.loss_weights.get(s.name, s.loss_weight) * per_task[s.name] for s in self.task_specs)
        extra = getattr(self.encoder, "extra_loss", None)
        if callable(extra):
            term = extra()
            if term is not None:
                total = total + term
        return total, per_task

    def train_step(self, images: torch.Tensor, targets: dict[str, torch.Tensor]) -> tuple[float, dict[str, float]]:
        """One optimisation step on a batch (B, 3, H, W), taken in ``accum_steps`` micro-batches of
        B / accum_steps; returns the loss and the per-task (unweighted) losses, averaged over the slices."""
        n = self.accum_steps
        if images.shape[0] % n:
            raise ValueError(f"a batch of {images.shape[0]} does not split into {n} equal micro-batches")
        image_slices = images.chunk(n)
        target_slices = [dict(zip(targets, parts)) for parts in zip(*(t.chunk(n) for t in targets.values()))] \
            if targets else [{} for _ in range(n)]
        no_sync = getattr(self.model, "no_sync", None)  # DDP: reduce gradients once, after the last slice
        total_sum = 0.0
        task_sums = dict.fromkeys(self.tasks, 0.0)
        with self.train_throughput.time(images.shape[0]):
            self.optimizer.zero_grad(set_to_none=True)
            for i, (micro_images, micro_targets) in enumerate(zip(image_slices, target_slices)):
                last = i == n - 1
                with (no_sync() if no_sync is not None and not last else nullcontext()):
                    with autocast(self.device, self.amp, self.amp_dtype):
                        outputs = self.model(micro_images)
                    total, per_task = self._loss(outputs, micro_targets)
                    stop = self._check(total, per_task)
                    self.scaler.scale(total / n if n > 1 else total).backward()
                total_sum += total.item()
                for t, v in per_task.items():
                    task_sums[t] += v.item()
            self.stopping = stop
            if self.clip_grad:
                self.scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_(self.trainable, self.clip_grad)
            self.scaler.step(self.optimizer)
            self.scaler.update()
        self.step += 1
        self.scheduler.step_update(self.step)
        if self.after_step is not None:
            self.after_step(self.step)
        return total_sum / n, {t: v / n for t, v in task_sums.items()}

    def _check(self, total: torch.Tensor, per_task: dict[str, torch.Tensor]) -> bool:
        """Agree with the other processes on non-finite losses (raise) and on stopping after this step
        (returned); one sync per step."""
        finite = torch.stack([torch.isfinite(total.detach())]
                             + [torch.isfinite(v.detach()) for v in per_task.values()]).tolist()
        flags = [bool(self.stop_requested and self.stop_requested()), *(not f for f in finite)]
        if self.agree is not None:
            flags = self.agree(flags)
        stop, total_bad, task_bad = flags[0], flags[1], flags[2:]
        if total_bad or any(task_bad):
            bad = [t for t, b in zip(per_task, task_bad) if b]
            where = f"in the loss of task {', '.join(bad)}" if bad else "in the method's extra loss"
            raise TrainingDiverged(f"the loss became non-finite (nan or inf) at step {self.step} {where}; "
                                   "lower the learning rate (--set base_lr=...)"
                                   + (" or disable AMP (--set amp=false)" if amp_active(self.device, self.amp) else ""))
        return stop

    def train_epoch(self, loader: Iterable, epoch: int, epochs: int, limit: int | None = None,
                    start: EpochStats | None = None) -> EpochStats:
        """Train one epoch (or its rest: ``start`` holds the stats of the steps already taken, and the
        loader yields only the remaining batches). Returns ``complete=False`` when a stop was requested."""
        self.model.train()
        began = time.perf_counter()
        done = start.steps if start is not None else 0
        sums = start.sums if start is not None else {}
        total = sums.get("total", 0.0)
        per_task = {t: sums.get("tasks", {}).get(t, 0.0) for t in self.tasks}
        steps = done
        complete = True
        n_batches = len(loader) if hasattr(loader, "__len__") else None
        if limit is not None and n_batches is not None:
            n_batches = min(n_batches, limit)
        bar = tqdm(loader, total=n_batches, initial=done, desc=f"epoch {epoch}/{epochs}", disable=not self.progress,
                   leave=False, dynamic_ncols=True, unit="batch")
        waited = start.data_seconds if start is not None else 0.0
        asked = time.perf_counter()
        for batch in bar:
            waited += time.perf_counter() - asked  # how long the loader kept the step waiting
            if limit is not None and steps >= limit:
                break
            images, targets = to_device(batch, self.tasks, self.device)
            loss, losses = self.train_step(images, targets)
            if self.on_step is not None:
                self.on_step({"step": self.step, "epoch": epoch, "loss": loss, "task_losses": losses,
                              "lr": self.current_lr()})
            total += loss
            for t, v in losses.items():
                per_task[t] += v
            steps += 1
            rate = self.train_throughput.last_rate
            bar.set_postfix(loss=f"{loss:.3f}", lr=f"{self.current_lr():.2e}",
                            **({"img/s": f"{rate:.1f}"} if rate else {}))
            if self.stopping:
                complete = False
                break
            asked = time.perf_counter()
        bar.close()
        n = max(steps, 1)
        seconds = time.perf_counter() - began + (start.seconds if start is not None else 0.0)
        return EpochStats(epoch=epoch, loss=total / n, task_losses={t: v / n for t, v in per_task.items()},
                          lr=self.current_lr(), steps=steps, seconds=seconds, data_seconds=waited, complete=complete,
                          sums={"total": total, "tasks": dict(per_task)})

    def current_lr(self) -> float:
        return max(group["lr"] for group in self.optimizer.param_groups)
