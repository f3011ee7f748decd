"""The multi-task Swin encoder every method returns.

``MultiTaskSwinEncoder(images)`` gives, per task, the four stage features of docs/protocol.md 4.1 in
NCHW: the outputs of stages 1-3 after the following PatchMerging (which timm keeps at the start of
the next stage), and the output of stage 4 — (192, 56²), (384, 28²), (768, 14²), (768, 14²) for
Swin-T at 448 px. Shared-feature methods give every task the same tensors. With a stream factory
the last block of each stage becomes a :class:`~mtpeft_bench.model.branching.TaskBranchingBlock`; its
task streams pass through the next stage's (shared) PatchMerging to become that stage's task
features, while only the shared stream continues into the next stage (as in MTLoRA and DiTASK).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch import nn

from mtpeft_bench.model.backbone import feature_channels
from mtpeft_bench.model.branching import StreamLayer, TaskBranchingBlock


#: ``factory(stage_index, role, linear) -> StreamLayer`` for the last block of each stage.
StageStreamFactory = Callable[[int, str, nn.Linear], StreamLayer]


class MultiTaskSwinEncoder(nn.Module):
    """Swin backbone → ``{task: [4 × (B, C_i, H_i, W_i)]}``.

    Args:
        backbone: a timm ``SwinTransformer`` from :func:`mtpeft_bench.model.backbone.create_backbone`
            (the method may already have injected its layers).
        tasks: task names.
        stream_factory: if given, called as ``stream_factory(stage, role, linear)`` for role in
            ``proj``, ``fc1``, ``fc2`` of the last block of every stage, to build task streams.
        stages_with_streams: the stages (0-based) that get task streams (default: all).
    """

    def __init__(self, backbone: nn.Module, tasks: Sequence[str], stream_factory: StageStreamFactory | None = None,
                 stages_with_streams: Sequence[int] | None = None):
        super().__init__()
        self.backbone = backbone
        self.tasks = tuple(tasks)
        self.out_channels = feature_channels(backbone)
        if stream_factory is not None:
            stages = range(len(backbone.layers)) if stages_with_streams is None else stages_with_streams
            for i in stages:
                blocks = backbone.layers[i].blocks
                blocks[-1] = TaskBranchingBlock(blocks[-1], self.tasks,
                                                lambda role, linear, i=i: stream_factory(i, role, linear))

    @property
    def task_specific(self) -> bool:
        """Whether any block produces task-specific streams."""
        return any(isinstance(m, TaskBranchingBlock) for m in self.modules())

    def _run_blocks(self, blocks: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        streams: dict[str, torch.Tensor] | None = None
        for blk in blocks:
            if getattr(blk, "branches_tasks", False):
                x, streams = blk(x)
            else:
                x = blk(x)
                streams = None
        return x, streams if streams is not None else {t: x for t in self.tasks}

    def forward(self, images: torch.Tensor) -> dict[str, list[torch.Tensor]]:
        """images (B, 3, H, W) → {task: [4 NCHW features]}."""
        x = self.backbone.patch_embed(images)  # (B, H/4, W/4, C)
        feats: dict[str, list[torch.Tensor]] = {t: [] for t in self.tasks}
        streams: dict[str, torch.Tensor] | None = None
        for stage in self.backbone.layers:
            before = x
            x = stage.downsample(x)
            if streams is not None:
                for t in self.tasks:
                    # A task stream equal to the shared one has already been merged as `x`.
                    feats[t].append(x if streams[t] is before else stage.downsample(streams[t]))
            x, streams = self._run_blocks(stage.blocks, x)
        for t in self.tasks:
            feats[t].append(streams[t])
        nchw: dict[int, torch.Tensor] = {}
        return {t: [nchw.setdefault(id(f), f.permute(0, 3, 1, 2)) for f in feats[t]] for t in self.tasks}

    def method_info(self) -> dict[str, Any]:
        return {"task_specific_streams": self.task_specific}
