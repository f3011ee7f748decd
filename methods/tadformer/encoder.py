"""The TADFormer encoder: prompt stream through every stage, task streams gated at each stage end.

Baek et al., CVPR 2025 (arXiv:2501.04293), Sec. 3; written anew from a reading of
``Min100KM/TADFormer`` @ 1f53b9f (``SwinTransformerTADFormer``, ``BasicLayer``, ``PatchMerging``).

- T = one learnable C₀-d prompt per task, initialised N(1, 1) truncated to [-2, 2] (timm's
  ``trunc_normal_`` with absolute bounds), enters stage 1 and runs through every block
  (:class:`~.block.PromptedBlock`); between stages a bias-free ``Linear(C → 2C)`` (``prompt_up``,
  init N(0, 0.02²) truncated) widens it, as the released PatchMerging does.
- At the end of stage s each task stream out_t is mixed with its TPC skip feature skip_t:
  ``skip='gate'``: σ(g_s)·skip_t + (1 − σ(g_s))·out_t with one scalar g_s per stage (init 0);
  ``skip='average'``: (skip_t + out_t)/2; ``skip='none'``: out_t (the released ABLATION flags).
- The mixed task maps of stages 1-3 go through the next stage's shared PatchMerging (timm keeps it
  at the start of the next stage) and become that stage's features; stage 4's are used as they are.
  Only the shared stream and the prompts continue into the next stage; the shared stream is not a
  feature (features are ``{task: [4 × (B, C_i, H_i, W_i)]}``, as every mtbench encoder returns).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from timm.layers import trunc_normal_
from torch import nn

from mtpeft_bench.model.backbone import feature_channels, stage_channels
from mtpeft_bench.methods.tadformer.block import PromptedBlock

SKIP_MODES = ("gate", "average", "none")


def mix_skip(out: torch.Tensor, skip: torch.Tensor, mode: str, gate: torch.Tensor) -> torch.Tensor:
    """A task map at the end of a stage: ``mode`` in :data:`SKIP_MODES` (module docstring)."""
    if mode == "gate":
        g = torch.sigmoid(gate)
        return skip * g + (1 - g) * out
    if mode == "average":
        return (skip + out) * 0.5
    return out


class TADFormerEncoder(nn.Module):
    """A timm Swin with TADFormer's prompts, task-adapting blocks and stage gates.

    Args:
        backbone: the timm ``SwinTransformer`` whose block linears are already shared-LoRA layers.
        tasks: task names.
        filter_kind, skip_layout: passed to every :class:`~.block.PromptedBlock`.
        skip: ``gate``, ``average`` or ``none``.
        info: facts recorded in the result (:meth:`method_info`).

    ``forward(images (B, 3, H, W)) -> {task: [4 NCHW features]}``.
    """

    # Eight of the twelve prompt LayerNorms (those outside task-adapting blocks) never run, and
    # with skip='none' nor do the gates: DDP must look for parameters without gradient.
    find_unused_parameters = True

    def __init__(self, backbone: nn.Module, tasks: Sequence[str], filter_kind: str, skip_layout: str, skip: str,
                 info: dict[str, Any] | None = None):
        super().__init__()
        if skip not in SKIP_MODES:
            raise ValueError(f"skip must be one of {', '.join(SKIP_MODES)}, got {skip!r}")
        self.backbone = backbone
        self.tasks = tuple(tasks)
        self.skip = skip
        self.out_channels = feature_channels(backbone)
        self._info = dict(info or {})
        widths = stage_channels(backbone)
        self.task_prompts = nn.Parameter(torch.empty(len(self.tasks), widths[0]))
        trunc_normal_(self.task_prompts, mean=1.0, std=1.0)  # absolute bounds [-2, 2], as released
        self.prompt_up = nn.ModuleList(nn.Linear(a, b, bias=False) for a, b in zip(widths[:-1], widths[1:]))
        for layer in self.prompt_up:
            trunc_normal_(layer.weight, std=0.02)
        self.stage_gates = nn.Parameter(torch.zeros(len(widths)))
        stages = list(backbone.layers)
        for s, stage in enumerate(stages):
            blocks = stage.blocks
            for j in range(len(blocks)):
                last = j == len(blocks) - 1
                blocks[j] = PromptedBlock(blocks[j], self.tasks, adapt=last, filter_kind=filter_kind,
                                          skip_layout=skip_layout,
                                          update_prompts=not (last and s == len(stages) - 1))

    @property
    def task_specific(self) -> bool:
        return True

    def forward(self, images: torch.Tensor) -> dict[str, list[torch.Tensor]]:
        """images (B, 3, H, W) → {task: [4 NCHW features]}."""
        x = self.backbone.patch_embed(images)  # (B, H/4, W/4, C)
        # A copy, not a view: a view made under no_grad still "requires grad" without a grad_fn, which
        # breaks torch's module tracker (FLOP counting) when passed to a block.
        prompts = self.task_prompts.repeat(x.shape[0], 1, 1)
        feats: dict[str, list[torch.Tensor]] = {t: [] for t in self.tasks}
        mixed: dict[str, torch.Tensor] | None = None
        for s, stage in enumerate(self.backbone.layers):
            x = stage.downsample(x)
            if mixed is not None:
                for t in self.tasks:
                    feats[t].append(stage.downsample(mixed[t]))
                prompts = self.prompt_up[s - 1](prompts)
            for blk in stage.blocks:
                x, prompts, tasks, skips = blk(x, prompts)
            mixed = {t: mix_skip(tasks[t], skips[t], self.skip, self.stage_gates[s]) for t in self.tasks}
        for t in self.tasks:
            feats[t].append(mixed[t])
        return {t: [f.permute(0, 3, 1, 2) for f in feats[t]] for t in self.tasks}

    def method_info(self) -> dict[str, Any]:
        return {"task_specific_streams": True, **self._info}
