"""The optimizer and learning-rate schedule of every run (docs/protocol.md 4.4).

AdamW (weight decay 0.05 except on 1-D parameters and biases, as in the Swin/MTLoRA code), LR
linearly scaled by global batch / 512 (the caller scales :class:`Schedule`), timm's per-iteration
cosine schedule after a linear warm-up prefix.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn


def param_groups_for_optimizer(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Trainable parameters split into decayed and not decayed.

    No decay for 1-D parameters (norms, biases, ...) and anything named ``*.bias``; 2-D tensors
    such as the relative-position bias tables and DiTASK's θ are decayed, as in the reference code
    (docs/protocol.md 4.4, docs/ditask.md 4.4).
    """
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim <= 1 or name.endswith(".bias") else decay).append(param)
    groups = []
    if decay:
        groups.append({"params": decay, "weight_decay": weight_decay})
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


@dataclass
class Schedule:
    """The learning-rate plan of a run, already scaled by the batch."""

    lr: float
    warmup_lr: float
    min_lr: float
    total_steps: int
    warmup_steps: int


def make_optimizer(model: nn.Module, schedule: Schedule, weight_decay: float):
    """AdamW(β=(0.9, 0.999), eps=1e-8) and timm's ``CosineLRScheduler`` stepped per iteration."""
    from timm.scheduler import CosineLRScheduler

    groups = param_groups_for_optimizer(model, weight_decay)
    if not groups:
        raise ValueError("the model has no trainable parameter")
    optimizer = torch.optim.AdamW(groups, lr=schedule.lr, betas=(0.9, 0.999), eps=1e-8)
    scheduler = CosineLRScheduler(
        optimizer,
        t_initial=max(1, schedule.total_steps - schedule.warmup_steps),
        lr_min=schedule.min_lr,
        warmup_lr_init=schedule.warmup_lr,
        warmup_t=schedule.warmup_steps,
        warmup_prefix=True,
        cycle_limit=1,
        t_in_epochs=False,
    )
    return optimizer, scheduler
