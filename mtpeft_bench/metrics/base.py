"""The streaming meter protocol every task kind's meter follows (see :mod:`mtpeft_bench.metrics`).

A meter never keeps a prediction: each :meth:`Meter.update` reduces the batch to a few sums, counts or
histograms (``Meter.states``, float64 / int64 tensors) and :meth:`Meter.compute` turns them into the
numbers; :meth:`Meter.merge` and :meth:`Meter.all_reduce` add states. Also the small reductions the
meters share.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from mtpeft_bench.tasks.base import TaskSpec


def counts_above(k: Tensor, num_thresholds: int) -> Tensor:
    """Given ``k`` = number of thresholds a value passes (from ``torch.bucketize``), return for each
    threshold j the number of values that pass it, i.e. ``#{k > j}``, as int64[num_thresholds]."""
    hist = torch.bincount(k.reshape(-1), minlength=num_thresholds + 1)
    return hist.flip(0).cumsum(0).flip(0)[1:]


def single_channel(target: Tensor, pred: Tensor, what: str) -> Tensor:
    """``target`` as ``[B, 1, H, W]`` (a ``[B, H, W]`` one gains its channel), checked against a
    one-channel ``pred`` ``[B, 1, H, W]``; ``what`` names the task in the error messages."""
    if pred.shape[1] != 1:
        raise ValueError(f"{what}: prediction must have 1 channel, got shape {tuple(pred.shape)}")
    if target.dim() == 3:
        target = target.unsqueeze(1)
    if target.shape != pred.shape:
        raise ValueError(f"{what}: prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape "
                         "(the meter expects the prediction at the target's resolution)")
    return target


class Meter:
    """Base class of the streaming meters.

    Attributes:
        task: the :class:`TaskSpec` measured.
        states: name → float64/int64 tensor of sums; together they fully define the meter.
        metric_names: the keys :meth:`compute` returns.
    """

    kind: ClassVar[str] = ""
    metric_names: ClassVar[tuple[str, ...]] = ()
    #: metric names a task may ask for besides ``metric_names`` (handled specially by ``compute``).
    extra_names: ClassVar[tuple[str, ...]] = ()

    def __init__(self, task: TaskSpec, skip_expensive: bool = False) -> None:
        if task.kind != self.kind:
            raise ValueError(f"task {task.name!r} is of kind {task.kind!r}, not {self.kind!r}")
        known = self.metric_names + self.extra_names
        unknown = [m.name for m in task.metrics if m.name not in known]
        if unknown:
            raise ValueError(
                f"task {task.name!r} asks for metric {', '.join(map(repr, unknown))}, which the {self.kind} meter "
                f"does not compute; it computes: {', '.join(self.metric_names)}"
            )
        self.task = task
        # Periodic evaluations during training may leave out metrics that cost far more than the
        # forward passes (odsF's boundary matching); the final evaluation never does.
        self.skip_expensive = skip_expensive
        self.states: dict[str, Tensor] = self._new_states()

    # -- to implement --------------------------------------------------------------------------------
    def _new_states(self) -> dict[str, Tensor]:
        raise NotImplementedError

    def _update(self, pred: Tensor, target: Tensor) -> dict[str, Tensor]:
        """Return the increments of (some of) the states for one batch."""
        raise NotImplementedError

    def _compute(self, states: dict[str, Tensor]) -> dict[str, float]:
        raise NotImplementedError

    # -- public API ----------------------------------------------------------------------------------
    def update(self, pred: Tensor, target: Tensor) -> None:
        """Add one batch: ``pred`` the raw head output ``[B, C, H, W]``, ``target`` in the task's format.

        The states follow ``pred`` to its device (so GPU evaluation does not synchronise per batch
        for the additions).
        """
        with torch.no_grad():
            pred = pred.detach()
            if pred.dim() != 4:
                raise ValueError(f"task {self.task.name!r}: prediction must be [B, C, H, W], got {tuple(pred.shape)}")
            target = target.detach().to(pred.device)
            if target.shape[0] != pred.shape[0] or target.shape[-2:] != pred.shape[-2:]:
                raise ValueError(
                    f"task {self.task.name!r}: prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ "
                    "in batch or spatial size (the meter expects the prediction at the target's resolution)"
                )
            increments = self._update(pred, target)
            for name, inc in increments.items():
                state = self.states[name]
                if state.device != inc.device:
                    state = state.to(inc.device)
                    self.states[name] = state
                state += inc.to(state.dtype)

    def compute(self) -> dict[str, float]:
        """The metrics of everything seen so far (keys: ``metric_names``)."""
        return self._compute({k: v.detach().cpu() for k, v in self.states.items()})

    def reset(self) -> None:
        """Forget everything seen."""
        self.states = self._new_states()

    def merge(self, other: "Meter") -> "Meter":
        """Add the states of ``other`` (a meter of the same kind and shape) to this one; returns self."""
        if type(other) is not type(self) or other.states.keys() != self.states.keys():
            raise ValueError(f"cannot merge a {type(other).__name__} into a {type(self).__name__}")
        for name, state in self.states.items():
            theirs = other.states[name]
            if theirs.shape != state.shape:
                raise ValueError(f"cannot merge meters: state {name!r} has shape {tuple(theirs.shape)}, "
                                 f"not {tuple(state.shape)}")
            state += theirs.to(state.device, state.dtype)
        return self

    def all_reduce(self) -> None:
        """Sum the states over all ranks of ``torch.distributed`` (no-op when it is not initialised).

        Call it once, on every rank, after the last update; afterwards every rank's :meth:`compute`
        gives the numbers of the whole dataset.
        """
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return
        backend = str(dist.get_backend())
        current = next(iter(self.states.values())).device
        if current.type == "cuda" and "nccl" in backend:
            device = current
        elif current.type == "cpu" and ("gloo" in backend or "mpi" in backend):
            device = current
        elif "nccl" in backend:
            device = torch.device("cuda", torch.cuda.current_device())
        else:
            device = torch.device("cpu")
        for name in sorted(self.states):
            tensor = self.states[name].to(device)
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
            self.states[name] = tensor

    def __repr__(self) -> str:
        return f"{type(self).__name__}(task={self.task.name!r})"
