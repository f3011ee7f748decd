"""MultiTaskModel: the method's encoder plus one decoder head per task."""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from mtpeft_bench.model.heads import HRNetHead


class MultiTaskModel(nn.Module):
    """``forward(images (B, 3, H, W)) -> {task: (B, num_outputs, H, W)}`` raw outputs (logits,
    unnormalised normals, metres).

    Args:
        encoder: what the method built (``forward(images) -> {task: [4 NCHW features]}`` and an
            ``out_channels`` attribute).
        task_outputs: ``{task: num_outputs}``.
    """

    def __init__(self, encoder: nn.Module, task_outputs: dict[str, int]):
        super().__init__()
        self.encoder = encoder
        self.tasks = tuple(task_outputs)
        self.heads = nn.ModuleDict({t: HRNetHead(encoder.out_channels, n) for t, n in task_outputs.items()})

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.encoder(images)
        size = tuple(images.shape[-2:])
        return {t: self.heads[t](features[t], size) for t in self.tasks}


def build_model(method: Any, method_cfg: Any, backbone: nn.Module, task_outputs: dict[str, int]
                ) -> tuple[MultiTaskModel, set[int]]:
    """Let ``method`` build the encoder around ``backbone`` and add the heads.

    Returns:
        ``(model, backbone_param_ids)``: the ids of the backbone's own parameters before the
        method touched it, so the parameter report can tell the method's additions apart.
    """
    original = {id(p) for p in backbone.parameters()}
    encoder = method.build(backbone, list(task_outputs), method_cfg)
    for attr in ("out_channels",):
        if not hasattr(encoder, attr):
            raise TypeError(f"method {method.name!r} returned an encoder without `{attr}`")
    return MultiTaskModel(encoder, task_outputs), original


def task_outputs_of(specs: Sequence[Any]) -> dict[str, int]:
    return {s.name: s.num_outputs for s in specs}
