"""Full fine-tuning: every encoder parameter trains, shared by all tasks.

The "MTL – full fine-tuning" row of the MTLoRA table (Agiza et al., CVPR 2024,
arXiv:2403.20320): Swin encoder and the per-task decoders all train (29,464,442 parameters for
Swin-T with the 4 PASCAL tasks). Run with a single task (``--tasks depth``) it is the single-task
baseline that Δm is measured against.
"""

from __future__ import annotations

from dataclasses import dataclass

from mtpeft_bench.methods.base import Method, MethodConfig
from mtpeft_bench.model.encoder import MultiTaskSwinEncoder
from mtpeft_bench.registry import register_method


@dataclass(frozen=True)
class FullConfig(MethodConfig):
    """Full fine-tuning has no hyper-parameters of its own."""


@register_method("full")
class FullFineTuning(Method):
    """Full fine-tuning of the whole encoder (shared by all tasks)."""

    paper = "https://arxiv.org/abs/2403.20320"
    Config = FullConfig

    def build(self, backbone, tasks, cfg):
        for param in backbone.parameters():
            param.requires_grad_(True)
        return MultiTaskSwinEncoder(backbone, tasks)
