"""Relative-bias tuning: only Swin's relative-position bias tables train (and the decoders).

Every Swin window attention adds ``B[i, j] = T[index(i, j)]`` to its attention logits, read from a
table ``T`` of ``(2·Wh − 1)·(2·Ww − 1)`` rows × heads (Liu et al., "Swin Transformer", ICCV 2021,
arXiv:2103.14030). This baseline trains those tables and nothing else of the backbone, one set
shared by all tasks: the "Relative bias" row of the multi-task PEFT benchmark of Polyhistor
(Liu et al., NeurIPS 2022, arXiv:2210.03265) that the MTLoRA table (Agiza et al., CVPR 2024)
carries. For Swin-T at window 7: ``169 · Σ_blocks heads = 169 · 138 = 23,322`` parameters.
"""

from __future__ import annotations

from dataclasses import dataclass

from mtpeft_bench.methods.base import Method, MethodConfig, freeze
from mtpeft_bench.model.encoder import MultiTaskSwinEncoder
from mtpeft_bench.model.params import set_extras_trainable
from mtpeft_bench.registry import register_method


@dataclass(frozen=True)
class RelBiasConfig(MethodConfig):
    """Relative-bias tuning has no hyper-parameters of its own."""


@register_method("relbias")
class RelativeBias(Method):
    """Relative-bias tuning: only the relative-position bias tables of every block train, shared by all tasks."""

    paper = "https://arxiv.org/abs/2210.03265"
    Config = RelBiasConfig

    def build(self, backbone, tasks, cfg):
        freeze(backbone)
        set_extras_trainable(backbone, True, groups=("rel_pos",))
        return MultiTaskSwinEncoder(backbone, tasks)
