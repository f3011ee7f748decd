"""Decoder-only training: the pretrained encoder stays frozen, only the task heads train.

The "MTL – decoders only" row of the MTLoRA table (Agiza et al., CVPR 2024, arXiv:2403.20320):
the lower bound of every parameter-efficient method.
"""

from __future__ import annotations

from dataclasses import dataclass

from mtpeft_bench.methods.base import Method, MethodConfig, freeze
from mtpeft_bench.model.encoder import MultiTaskSwinEncoder
from mtpeft_bench.registry import register_method


@dataclass(frozen=True)
class DecoderOnlyConfig(MethodConfig):
    """Decoder-only training has no hyper-parameters of its own."""


@register_method("decoder_only")
class DecoderOnly(Method):
    """Frozen encoder; only the per-task decoders train."""

    paper = "https://arxiv.org/abs/2403.20320"
    Config = DecoderOnlyConfig

    def build(self, backbone, tasks, cfg):
        freeze(backbone)
        return MultiTaskSwinEncoder(backbone, tasks)
