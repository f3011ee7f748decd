"""Per-task attention projections: a minimal task-specific method plugin (the README's example).

The backbone stays frozen. In the last block of every stage, each task gets its own trainable
copy of the attention projection (initialised from the pretrained one), so the stage features
become task-specific, while qkv, the attention maps and everything else stay shared.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

from torch import nn

from mtpeft_bench.methods.base import Method, MethodConfig, freeze
from mtpeft_bench.model.branching import SharedStream, StreamLayer
from mtpeft_bench.model.encoder import MultiTaskSwinEncoder
from mtpeft_bench.registry import register_method


class PerTaskCopies(StreamLayer):
    """The frozen shared layer for the shared stream, a trainable copy of it for each task."""

    def __init__(self, linear: nn.Linear, tasks):
        super().__init__()
        self.tasks = tuple(tasks)
        self.shared = linear
        self.per_task = nn.ModuleDict({t: copy.deepcopy(linear).requires_grad_(True) for t in self.tasks})

    def forward(self, x, task_x):
        inputs = {t: x for t in self.tasks} if task_x is None else task_x
        return self.shared(x), {t: self.per_task[t](inputs[t]) for t in self.tasks}


@dataclass(frozen=True)
class TaskProjConfig(MethodConfig):
    """Options of ``task_proj``.

    Attributes:
        stages: the stages (0-based) whose last block gets per-task projections.
    """

    stages: tuple[int, ...] = (0, 1, 2, 3)

    def __post_init__(self):
        if not self.stages or any(s not in (0, 1, 2, 3) for s in self.stages):
            raise ValueError(f"stages must be a non-empty subset of 0..3, got {self.stages}")


@register_method("task_proj")
class TaskProjections(Method):
    """Frozen encoder with a trainable per-task attention projection in the last block of each stage."""

    Config = TaskProjConfig

    def build(self, backbone, tasks, cfg):
        freeze(backbone)

        def streams(stage: int, role: str, linear: nn.Linear) -> StreamLayer:
            return PerTaskCopies(linear, tasks) if role == "proj" else SharedStream(linear, tasks)

        return MultiTaskSwinEncoder(backbone, tasks, stream_factory=streams, stages_with_streams=cfg.stages)
