"""Live logs of a run while it trains: ``metrics.jsonl`` in the run folder, always, and TensorBoard
or Weights & Biases when ``--logger`` names them.

``metrics.jsonl`` holds one JSON object per line, written and flushed as it happens, so a long run
can be followed (``tail -f``) and plotted (``mtbench plot --curves RUN_FOLDER``) while it trains:

- a training step: ``{"kind": "train", "step", "epoch", "loss", "task_losses": {task: loss}, "lr",
  "time", "elapsed_s"}`` (``step`` counts optimisation steps from 1 over the whole run; ``loss`` is
  the weighted total; under torchrun, the losses of rank 0's share of the batch);
- an evaluation: ``{"kind": "eval", "step", "epoch", "final", "metrics": {task: {metric: value}},
  "primary": {task: metric}, "time", "elapsed_s"}`` (periodic evaluations skip the expensive
  metrics; ``final`` marks the run's last one).

The file is only appended to. A resumed run first drops the lines past the step its checkpoint
holds (the steps it will take again), so every step appears once. TensorBoard (``SummaryWriter``
in ``<run folder>/tensorboard``, purging the same steps) and wandb (``wandb.init`` in the run
folder, offline unless ``WANDB_MODE`` says otherwise; the run id is the wandb id, so a resumed
run continues its wandb run) receive the same numbers. Both are optional extras (``pip install
'mtpeft-bench[tensorboard]'`` / ``[wandb]``), imported only when named.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

from mtpeft_bench.atomic import write_text_atomic
from mtpeft_bench.errors import UserError

METRICS_NAME = "metrics.jsonl"
# logger name -> (module to import, pip extra)
EXTRAS = {"tensorboard": ("tensorboard", "tensorboard"), "wandb": ("wandb", "wandb")}


def check_available(names: Sequence[str]) -> None:
    """Refuse, before any work, a logger whose library is not installed.

    Raises:
        UserError: one line naming the package to install.
    """
    for name in names:
        module, extra = EXTRAS[name]
        if importlib.util.find_spec(module) is None:
            raise UserError(f"--logger {name} needs the {module} package, which is not installed: "
                            f"pip install 'mtpeft-bench[{extra}]' (or leave {name} out of --logger)")


def _finite(value: Any) -> Any:
    """JSON has no NaN or infinity: such a value is written as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    return value


class MetricsFile:
    """``metrics.jsonl``: one line per event, appended and flushed at once.

    Args:
        path: the file.
        resume_step: the step a resumed run continues after; lines of later steps are dropped first
            (None: a new run, the file is started afresh).
    """

    def __init__(self, path: Path, resume_step: int | None = None):
        self.path = Path(path)
        if resume_step is not None and self.path.exists():
            self._keep_up_to(resume_step)
        elif self.path.exists():
            self.path.unlink()
        self.handle = open(self.path, "a", encoding="utf-8")

    def _keep_up_to(self, step: int) -> None:
        kept = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:  # a line cut short when the process was killed
                continue
            if isinstance(entry, dict) and int(entry.get("step", 0)) <= step:
                kept.append(line)
        write_text_atomic(self.path, "".join(f"{line}\n" for line in kept))

    def write(self, entry: Mapping[str, Any]) -> None:
        self.handle.write(json.dumps(_finite(dict(entry)), allow_nan=False) + "\n")
        self.handle.flush()

    def close(self) -> None:
        self.handle.close()


class TensorBoardSink:
    """Scalars for TensorBoard: ``train/loss``, ``train/loss/<task>``, ``train/lr``, ``val/<task>/<metric>``."""

    def __init__(self, folder: Path, resume_step: int | None):
        from torch.utils.tensorboard import SummaryWriter

        # purge_step: events a killed session wrote past the checkpoint are dropped from the graphs
        self.writer = SummaryWriter(log_dir=str(folder / "tensorboard"),
                                    purge_step=None if resume_step is None else resume_step + 1)

    def write(self, entry: Mapping[str, Any]) -> None:
        step = entry["step"]
        for name, value in scalars(entry).items():
            if value is not None:
                self.writer.add_scalar(name, value, step, walltime=entry.get("time"))
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbSink:
    """The same scalars in a wandb run (offline unless ``WANDB_MODE``), in the run folder."""

    def __init__(self, folder: Path, run_id: str, config: Mapping[str, Any]):
        import wandb

        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "mtbench"), id=run_id, name=run_id,
                              dir=str(folder), config=dict(config), resume="allow",
                              mode=os.environ.get("WANDB_MODE", "offline"))

    def write(self, entry: Mapping[str, Any]) -> None:
        self.run.log({k: v for k, v in scalars(entry).items() if v is not None}, step=entry["step"])

    def close(self) -> None:
        import wandb

        self.run.finish()
        # finish() returns before wandb's service process has written the offline log (wandb 0.31);
        # teardown waits for it, so the run's log is complete when the run is (the next run that
        # logs to wandb in this process starts the service again)
        wandb.teardown()


def scalars(entry: Mapping[str, Any]) -> dict[str, float | None]:
    """The named numbers of a ``metrics.jsonl`` entry, as TensorBoard and wandb get them."""
    if entry.get("kind") == "train":
        out = {"train/loss": entry.get("loss"), "train/lr": entry.get("lr")}
        out.update({f"train/loss/{t}": v for t, v in (entry.get("task_losses") or {}).items()})
        return out
    return {f"val/{task}/{name}": value for task, metrics in (entry.get("metrics") or {}).items()
            for name, value in metrics.items() if isinstance(value, (int, float)) or value is None}


class LiveLog:
    """Every sink of one run; on processes other than rank 0 it does nothing.

    Args:
        folder: the run folder; run_id: its id; config: the stored configuration (for wandb).
        loggers: extra libraries (``tensorboard``, ``wandb``); resume_step: see :class:`MetricsFile`.
        primary: ``{task: primary metric}``, written with each evaluation.
    """

    def __init__(self, folder: Path, run_id: str, config: Mapping[str, Any], loggers: Sequence[str],
                 resume_step: int | None, primary: Mapping[str, str], active: bool = True):
        self.primary = dict(primary)
        self.sinks: list[Any] = []
        if not active:
            return
        folder = Path(folder)
        self.sinks.append(MetricsFile(folder / METRICS_NAME, resume_step))
        try:
            for name in loggers:
                if name == "tensorboard":
                    self.sinks.append(TensorBoardSink(folder, resume_step))
                elif name == "wandb":
                    self.sinks.append(WandbSink(folder, run_id, config))
        except BaseException:
            self.close()
            raise

    def train_step(self, info: Mapping[str, Any], elapsed_s: float) -> None:
        """Log one optimisation step (``info``: the trainer's ``step, epoch, loss, task_losses, lr``)."""
        self._write({"kind": "train", **info, "time": time.time(), "elapsed_s": round(elapsed_s, 3)})

    def evaluation(self, step: int, epoch: int, metrics: Mapping[str, Mapping[str, float]], elapsed_s: float,
                   final: bool = False) -> None:
        self._write({"kind": "eval", "step": step, "epoch": epoch, "final": final, "metrics": dict(metrics),
                     "primary": self.primary, "time": time.time(), "elapsed_s": round(elapsed_s, 3)})

    def _write(self, entry: Mapping[str, Any]) -> None:
        for sink in self.sinks:
            sink.write(entry)

    def close(self) -> None:
        for sink in self.sinks:
            try:
                sink.close()
            except Exception:  # noqa: BLE001 - closing a logger must not hide how the run ended
                pass
        self.sinks = []
