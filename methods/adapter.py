"""Bottleneck adapters after the attention and the MLP of every Swin block, shared by all tasks.

Houlsby et al., "Parameter-Efficient Transfer Learning for NLP", ICML 2019 (arXiv:1902.00751):
a small bottleneck ``h + W_up · GELU(W_down · h + b_down) + b_up`` is inserted after the attention
projection and after the MLP's second layer of every block, before the residual addition. The
up-projection starts at zero, so at the start of training each adapter is the identity and the
network computes exactly the pretrained function. The down-projection keeps ``nn.Linear``'s
initialisation (Kaiming-uniform, a = √5).

It stands for the "Adapter" row of the MTLoRA table (Agiza et al., CVPR 2024, arXiv:2403.20320).
That row's parameter count is not known precisely (docs/protocol.md 5.4: ≈ 8.7–11.2M, uncertain), so
no bottleneck width is claimed to reproduce it. With width ``m`` the adapters of Swin-T add
``Σ_blocks 2·(2·C·m + m + C) = 17,688·m + 8,832`` parameters.

By default the backbone's extras (patch embedding, LayerNorms, relative-position tables,
PatchMerging reductions) train, as for the other baselines under the MTLoRA/DiTASK protocol
(``train_extras``); the pretrained linears and their biases stay frozen.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from mtpeft_bench.methods._peft_util import set_trainable
from mtpeft_bench.methods.base import Method, MethodConfig, freeze
from mtpeft_bench.model.encoder import MultiTaskSwinEncoder
from mtpeft_bench.model.params import extra_parameters
from mtpeft_bench.registry import register_method


class BottleneckAdapter(nn.Module):
    """``h + up(GELU(down(h)))`` with ``up`` initialised to zero.

    Args:
        dim: channels of ``h``.
        width: bottleneck width.

    ``forward(h (..., dim)) -> (..., dim)``.
    """

    def __init__(self, dim: int, width: int):
        super().__init__()
        self.down = nn.Linear(dim, width)
        self.act = nn.GELU()
        self.up = nn.Linear(width, dim)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.up(self.act(self.down(h)))


class WithAdapter(nn.Module):
    """``adapter(layer(x))``: a frozen layer followed by its adapter (any module mapping the layer's
    output to the same shape; Compacter's PHM adapter uses it too)."""

    def __init__(self, layer: nn.Linear, adapter: nn.Module):
        super().__init__()
        self.layer = layer
        self.adapter = adapter

    @property
    def in_features(self) -> int:
        return self.layer.in_features

    @property
    def out_features(self) -> int:
        return self.layer.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.adapter(self.layer(x))


@dataclass(frozen=True)
class AdapterConfig(MethodConfig):
    """Options of ``adapter`` (Houlsby et al., ICML 2019, arXiv:1902.00751).

    Attributes:
        bottleneck: bottleneck width ``m`` of every adapter (all stages).
        train_extras: whether the patch embedding, LayerNorms, relative-position tables and
            PatchMerging reductions train (the MTLoRA/DiTASK protocol; default ``true``).
    """

    bottleneck: int = 64
    train_extras: bool = True

    def __post_init__(self):
        if isinstance(self.bottleneck, bool) or not isinstance(self.bottleneck, int) or self.bottleneck < 1:
            raise ValueError(f"bottleneck must be a positive integer, got {self.bottleneck!r}")
        if not isinstance(self.train_extras, bool):
            raise ValueError(f"train_extras must be true or false, got {self.train_extras!r}")


class AdapterEncoder(MultiTaskSwinEncoder):
    def __init__(self, backbone, tasks, cfg: AdapterConfig):
        super().__init__(backbone, tasks)
        self._info = {"bottleneck": cfg.bottleneck, "train_extras": cfg.train_extras}

    def method_info(self):
        return {**super().method_info(), **self._info}


@register_method("adapter")
class Adapter(Method):
    """Bottleneck adapters (Houlsby) after the attention and the MLP of every block, shared by all tasks."""

    paper = "https://arxiv.org/abs/1902.00751"
    Config = AdapterConfig

    def build(self, backbone, tasks, cfg):
        freeze(backbone)
        extras = extra_parameters(backbone)
        for stage in backbone.layers:
            for block in stage.blocks:
                block.attn.proj = WithAdapter(block.attn.proj, BottleneckAdapter(block.attn.proj.out_features,
                                                                                 cfg.bottleneck))
                block.mlp.fc2 = WithAdapter(block.mlp.fc2, BottleneckAdapter(block.mlp.fc2.out_features, cfg.bottleneck))
        set_trainable(extras, cfg.train_extras)
        return AdapterEncoder(backbone, tasks, cfg)
