"""Task-specific streams inside a Swin block: attention once, per-task projection and MLP.

MTLoRA (Agiza et al., CVPR 2024) and DiTASK (Mantri et al., CVPR 2025) both specialise the last
block of every stage: the window attention (its qkv and attention maps) is computed once and
shared; the attention projection, the residual, the shared LayerNorm and the MLP then run once for
the shared stream and once per task (docs/protocol.md 5.1, docs/ditask.md 3.2). The shared stream continues
into the next stage; the task streams become that stage's task features.

This module does that without copying timm's attention code. ``attn.proj`` is a per-token linear
map and everything timm does after it inside the attention path (window reverse, reverse shift,
crop of the padding) only moves tokens, so :class:`TaskBranchingBlock` takes ``proj`` (and its
dropout) out of the attention module, runs timm's attention path once to get the pre-projection
features, and applies the stream layers to them.

A method says what each stream layer computes by giving a factory that turns the block's original
``nn.Linear`` into a :class:`StreamLayer`; :class:`SharedStream` is the do-nothing default.
"""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

import torch
from torch import nn


TaskTensors = dict[str, torch.Tensor]

#: The three linears of a block that carry task streams, in the order they run.
STREAM_ROLES = ("proj", "fc1", "fc2")


class StreamLayer(nn.Module):
    """A layer that maps the shared stream and the task streams.

    ``forward(x, task_x)`` takes the shared input ``x`` (..., in) and either ``None`` (no task
    stream exists yet: the attention projection, whose input is the shared attention output) or a
    dict of per-task inputs of the same shape, and returns ``(shared_output, {task: output})``.
    A task output may be the very same tensor object as the shared output: the block then knows
    the streams have not diverged and skips the duplicate work.
    """

    tasks: tuple[str, ...]

    def forward(self, x: torch.Tensor, task_x: Mapping[str, torch.Tensor] | None) -> tuple[torch.Tensor, TaskTensors]:
        raise NotImplementedError


class SharedStream(StreamLayer):
    """The same layer for the shared stream and every task stream.

    Args:
        layer: the module applied to every stream (usually the block's original ``nn.Linear``).
        tasks: task names.
    """

    def __init__(self, layer: nn.Module, tasks: Sequence[str]):
        super().__init__()
        self.layer = layer
        self.tasks = tuple(tasks)

    def forward(self, x: torch.Tensor, task_x: Mapping[str, torch.Tensor] | None) -> tuple[torch.Tensor, TaskTensors]:
        y = self.layer(x)
        if task_x is None:
            return y, {t: y for t in self.tasks}
        return y, {t: y if task_x[t] is x else self.layer(task_x[t]) for t in self.tasks}


StreamFactory = Callable[[str, nn.Linear], StreamLayer]


def _per_task(fn: Callable[[torch.Tensor], torch.Tensor], shared_in: torch.Tensor, shared_out: torch.Tensor,
              task_in: Mapping[str, torch.Tensor]) -> TaskTensors:
    """Apply ``fn`` to each task tensor, reusing ``shared_out`` where a task shares the input."""
    return {t: shared_out if v is shared_in else fn(v) for t, v in task_in.items()}


class TaskBranchingBlock(nn.Module):
    """A timm ``SwinTransformerBlock`` whose projection and MLP run per task.

    Args:
        block: the stock timm block; its ``attn.proj``, ``attn.proj_drop``, ``mlp.fc1`` and
            ``mlp.fc2`` are moved into this wrapper (an identity is left in their place).
        tasks: task names.
        make_layer: ``make_layer(role, linear) -> StreamLayer`` for role in ``proj``, ``fc1``, ``fc2``.

    ``forward(x)`` with x (B, H, W, C) returns ``(shared (B, H, W, C), {task: (B, H, W, C)})``.
    """

    branches_tasks = True

    def __init__(self, block: nn.Module, tasks: Sequence[str], make_layer: StreamFactory):
        super().__init__()
        if not hasattr(block, "_attn") or not hasattr(block.attn, "proj"):
            raise TypeError(f"{type(block).__name__} is not a timm SwinTransformerBlock this version supports")
        self.tasks = tuple(tasks)
        self.proj = make_layer("proj", block.attn.proj)
        self.fc1 = make_layer("fc1", block.mlp.fc1)
        self.fc2 = make_layer("fc2", block.mlp.fc2)
        self.proj_drop = block.attn.proj_drop
        block.attn.proj = nn.Identity()
        block.attn.proj_drop = nn.Identity()
        block.mlp.fc1 = nn.Identity()
        block.mlp.fc2 = nn.Identity()
        self.block = block

    def _mlp_hidden(self, h: torch.Tensor) -> torch.Tensor:
        mlp = self.block.mlp
        return mlp.norm(mlp.drop1(mlp.act(h)))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, TaskTensors]:
        blk = self.block
        # Shared window attention up to (not including) the projection: (B, H, W, C).
        attn = blk._attn(blk.norm1(x))
        out, out_t = self.proj(attn, None)

        z = x + blk.drop_path1(self.proj_drop(out))
        z_t = _per_task(lambda o: x + blk.drop_path1(self.proj_drop(o)), out, z, out_t)

        n = blk.norm2(z)
        n_t = _per_task(blk.norm2, z, n, z_t)
        h, h_t = self.fc1(n, n_t)
        a = self._mlp_hidden(h)
        a_t = _per_task(self._mlp_hidden, h, a, h_t)
        m_raw, m_raw_t = self.fc2(a, a_t)
        m = blk.mlp.drop2(m_raw)
        m_t = _per_task(blk.mlp.drop2, m_raw, m, m_raw_t)
        shared = z + blk.drop_path2(m)
        tasks = {t: shared if (z_t[t] is z and m_t[t] is m) else z_t[t] + blk.drop_path2(m_t[t]) for t in self.tasks}
        return shared, tasks
