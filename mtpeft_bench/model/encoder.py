"""The multi-task Swin encoder every method returns.

``MultiTaskSwinEncoder(images)`` gives, per task, the four stage features of docs/protocol.md 4.1 in
NCHW: the outputs of stages 1-3 after the following PatchMerging (which timm keeps at the start of
the next stage), and the output of stage 4 — (192, 56²), (384, 28²), (768, 14²), (768, 14²) for
Swin-T at 448 px. Shared-feature methods give every task the same tensors. With a stream factory
the last block of each stage becomes a :class:`~mtpeft_bench.model.branching.TaskBranchingBlock`; its
task streams pass through the next stage's (shared) PatchMerging to become that stage's task
features, while only the shared stream continues into the next stage (as in MTLoRA and DiTASK).

Activation checkpointing (``--set grad_checkpoint=true``, :func:`enable_grad_checkpointing`): timm's
``set_grad_checkpointing`` marks the Swin stages, and the encoder, which runs the blocks itself,
recomputes each block of a marked stage in the backward pass (``torch.utils.checkpoint``, with the
RNG state of the first pass, so drop-path draws the same paths and the gradients are unchanged).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from mtpeft_bench.errors import UserError

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

    #: Whether the blocks may be recomputed in the backward pass (a subclass whose blocks read state
    #: that lives only during its forward call sets it False).
    supports_grad_checkpointing = True

    def _run_blocks(self, blocks: nn.Module, x: torch.Tensor, recompute: bool = False
                    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        streams: dict[str, torch.Tensor] | None = None
        for blk in blocks:
            run = (lambda inp, blk=blk: checkpoint(blk, inp, use_reentrant=False)) if recompute else blk
            if getattr(blk, "branches_tasks", False):
                x, streams = run(x)
            else:
                x = run(x)
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
            recompute = bool(getattr(stage, "grad_checkpointing", False)) and torch.is_grad_enabled()
            x, streams = self._run_blocks(stage.blocks, x, recompute)
        for t in self.tasks:
            feats[t].append(streams[t])
        nchw: dict[int, torch.Tensor] = {}
        return {t: [nchw.setdefault(id(f), f.permute(0, 3, 1, 2)) for f in feats[t]] for t in self.tasks}

    def method_info(self) -> dict[str, Any]:
        return {"task_specific_streams": self.task_specific}


def enable_grad_checkpointing(model: nn.Module, backbone_name: str) -> None:
    """Switch on activation checkpointing of every Swin stage of ``model``'s encoder (timm's
    ``set_grad_checkpointing``).

    Raises:
        UserError: the encoder is not a :class:`MultiTaskSwinEncoder`, its backbone has no
            ``set_grad_checkpointing``, or the method's encoder cannot recompute its blocks.
    """
    encoders = [m for m in model.modules() if isinstance(m, MultiTaskSwinEncoder)]
    if not encoders:
        raise UserError("grad_checkpoint=true needs the method's encoder to be a MultiTaskSwinEncoder; "
                        "this one is not: use --set grad_checkpoint=false")
    for encoder in encoders:
        if not encoder.supports_grad_checkpointing:
            raise UserError(f"grad_checkpoint=true is not supported by {type(encoder).__name__} (its blocks read "
                            "state that exists only during the forward pass); use --set accum_steps=N to save "
                            "memory instead")
        switch = getattr(encoder.backbone, "set_grad_checkpointing", None)
        if not callable(switch):
            raise UserError(f"grad_checkpoint=true: backbone {backbone_name} has no set_grad_checkpointing; "
                            "use --set accum_steps=N to save memory instead")
        switch(True)
