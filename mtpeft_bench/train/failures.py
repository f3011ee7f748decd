"""How a run ends when it does not complete: stop requests, divergence, out-of-memory.

- **Ctrl-C / SIGTERM** (:class:`StopOnSignal`): the first signal asks the run to stop; every
  process agrees at the next training step, a checkpoint of that exact point is saved, the run is
  marked ``cancelled`` and :class:`RunCancelled` is raised (exit status 130). A second signal,
  at least ``grace_s`` later, interrupts at once (``KeyboardInterrupt``; the last periodic checkpoint
  is kept). The grace period matters under torchrun, which forwards a signal the workers may also
  have received from the terminal.
- **NaN / infinite loss** (``train.trainer.TrainingDiverged``) and **out of memory** (CUDA, or the
  CPU allocator and ``MemoryError`` in RAM): the run is marked ``failed`` with the message, its last
  good checkpoint is kept, and :class:`RunFailed` carries one line (exit status 1); for
  out-of-memory the line says what to change.
"""

from __future__ import annotations

import logging
import re
import signal
import threading
import time
from typing import Any

from mtpeft_bench.errors import UserError


class RunFailed(Exception):
    """A run stopped on an error that is not bad input (divergence, out of memory); one line."""

    exit_code = 1

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


class RunCancelled(KeyboardInterrupt):
    """A run stopped on request (Ctrl-C, SIGTERM) after saving a checkpoint."""

    def __init__(self, message: str, run_id: str | None = None):
        super().__init__(message)
        self.run_id = run_id


class StopOnSignal:
    """Context manager: SIGINT/SIGTERM set :attr:`requested` instead of interrupting.

    Installed only in the main thread (Python delivers signals there); elsewhere it does nothing
    and Ctrl-C raises ``KeyboardInterrupt`` as usual.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, grace_s: float = 3.0, announce: bool = True):
        self.grace_s = grace_s
        self.announce = announce
        self.requested = False
        self.first_at: float | None = None
        self.signal_name: str | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        now = time.monotonic()
        if not self.requested:
            self.requested = True
            self.first_at = now
            self.signal_name = signal.Signals(signum).name
            if self.announce:
                # a warning: shown even where logging is not configured (Python's last-resort handler)
                logging.getLogger("mtpeft_bench").warning(
                    f"\nmtbench: {self.signal_name} received: stopping after the current step and saving a "
                    "checkpoint (press Ctrl-C again to stop at once)")
            return
        if self.first_at is not None and now - self.first_at >= self.grace_s:
            raise KeyboardInterrupt

    def __enter__(self) -> "StopOnSignal":
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


# What torch's CPU allocator says when RAM runs out (Linux/macOS, then Windows); its errors are plain RuntimeErrors.
CPU_OUT_OF_MEMORY = ("DefaultCPUAllocator: can't allocate memory", "not enough memory")


def out_of_memory_where(exc: BaseException) -> str | None:
    """``"cpu"`` when ``exc`` says RAM ran out (torch's CPU allocator, ``MemoryError``), ``"cuda"`` for
    CUDA (or another accelerator) out-of-memory, None for any other error."""
    import torch

    text = str(exc)
    if isinstance(exc, MemoryError) or (isinstance(exc, RuntimeError) and any(m in text for m in CPU_OUT_OF_MEMORY)):
        return "cpu"
    oom = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", None)
    if oom is not None and isinstance(exc, oom):
        return "cuda"
    if isinstance(exc, RuntimeError) and "out of memory" in text.lower():
        return "cuda"
    return None


def oom_advice(cfg: Any, image_size: tuple[int, int], phase: str, world_size: int = 1, where: str = "cuda") -> str:
    """One line of concrete changes for an out-of-memory error during ``phase`` (train or eval);
    ``where`` ran out (:func:`out_of_memory_where`: ``cuda``, or ``cpu`` for RAM)."""
    on_gpu = where != "cpu"
    tips = []
    if phase == "eval":
        current = cfg.eval_batch_size or cfg.batch_size
        tips.append(f"--set eval_batch_size={max(1, current // 2)}")
    else:
        # First what keeps the recipe (the effective batch and the LR): smaller micro-batches, recomputed
        # activations; only then a smaller batch.
        accum = getattr(cfg, "accum_steps", 1)
        if cfg.batch_size % (2 * accum) == 0:
            tips.append(f"--set accum_steps={2 * accum} (micro-batches of {cfg.batch_size // (2 * accum)}: the batch "
                        "and the LR stay)")
        if on_gpu and not getattr(cfg, "grad_checkpoint", False):
            tips.append("--set grad_checkpoint=true (recompute the Swin blocks' activations in the backward pass)")
        half = max(1, cfg.batch_size // 2)
        if half == cfg.batch_size:
            tips.append("a smaller model or more GPU memory (batch size is already 1)" if on_gpu
                        else "a smaller model or more RAM (batch size is already 1)")
        elif on_gpu:
            tips.append(f"--batch-size {half} (changes the recipe: the LR follows the global batch; keep it with "
                        f"twice the processes via torchrun --nproc_per_node {2 * world_size})")
        else:
            tips.append(f"--batch-size {half} (changes the recipe: the LR follows the batch)")
    if on_gpu and not cfg.amp:
        tips.append("--set amp=true (float16/bfloat16 activations)")
    h, w = image_size
    tips.append(f"--set image_size={max(32, h * 3 // 4)},{max(32, w * 3 // 4)} (now {h}x{w})")
    if not on_gpu and cfg.num_workers > 0:
        tips.append(f"--set num_workers={cfg.num_workers // 2} (each data worker holds its own batches)")
    during = "training" if phase == "train" else "evaluation"
    accum = getattr(cfg, "accum_steps", 1)
    micro = f" in {accum} micro-batches" if accum > 1 and phase == "train" else ""
    if not on_gpu:
        return (f"the CPU ran out of memory (RAM) during {during} (batch {cfg.batch_size} per process{micro}, {h}x{w} px, "
                f"{cfg.num_workers} data workers); try: " + "; ".join(tips))
    return (f"CUDA ran out of memory during {during} (batch {cfg.batch_size} per process{micro}, {h}x{w} px, "
            f"AMP {'on' if cfg.amp else 'off'}); try: " + "; ".join(tips))


def user_error_from_worker(exc: BaseException) -> UserError | None:
    """The one-line :class:`UserError` (e.g. a corrupt data file) that a DataLoader worker raised, or None.

    Torch hands a worker's exception back as a RuntimeError (or the same class) whose text is the
    worker's whole traceback, "Caught DataFileError in DataLoader worker process 0. Original
    Traceback ... module.DataFileError: <message>"; this recovers the message when the class is a
    UserError.
    """
    text = str(exc)
    match = re.match(r"Caught (\w+) in DataLoader worker process \d+", text)
    if match is None or not isinstance(exc, (RuntimeError, UserError)):
        return None
    name, classes, names = match.group(1), [UserError], set()
    while classes:  # every UserError subclass defined so far
        cls = classes.pop()
        names.add(cls.__name__)
        classes.extend(cls.__subclasses__())
    if name not in names:
        return None
    last = text.rstrip().splitlines()[-1]
    message = last.partition(f"{name}: ")[2]
    return UserError(message) if message else None
