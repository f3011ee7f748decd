"""``tadformer``: the method plugin (options, what trains, how the encoder is built).

Baek et al., "TADFormer: Task-Adaptive Dynamic TransFormer for Efficient Multi-Task Learning",
CVPR 2025, arXiv:2501.04293; code ``Min100KM/TADFormer``, read at commit 1f53b9f and written anew.

- Every qkv, proj, fc1 and fc2 carries one shared LoRA (rank r, scale s = 4 used as is, dropout
  0.05 on its input; A Kaiming-uniform, B zero), the same layer as MTLoRA's TA-LoRA.
- The last block of every stage adds task paths on proj, fc1, fc2 that reuse the shared A and B
  with a task filter between them (:mod:`.filters`); the projection's task input comes from the
  task-prompt-conditioned operator (:mod:`.block`). No task-specific LoRA matrices exist.
- Trained: the LoRA factors, the filters, the task prompts, ``prompt_up``, the stage gates, the
  prompt LayerNorms, the patch embedding (conv + LayerNorm), every LayerNorm and the
  relative-position tables. Frozen: the linears' weights and biases and the PatchMerging
  reductions (``FREEZE_DOWNSAMPLE_REDUCTION``).

Trainable parameters on Swin-T, 4 PASCAL tasks, decoders included (docs/methods.md):
``filter=static`` 3,532,350 / 4,670,526 / 6,946,878 and ``filter=dtf`` 3,557,502 / 4,776,126 /
7,379,262 at r = 16 / 32 / 64 (the paper prints 3.56 / 4.78 / 7.38 M).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import nn

from mtpeft_bench.methods.base import Method, MethodConfig, freeze
from mtpeft_bench.methods.mtlora import BLOCK_LINEARS, SharedLoRALinear
from mtpeft_bench.methods.tadformer.block import SKIP_LAYOUTS
from mtpeft_bench.methods.tadformer.encoder import SKIP_MODES, TADFormerEncoder
from mtpeft_bench.methods.tadformer.filters import FILTERS
from mtpeft_bench.model.params import set_extras_trainable
from mtpeft_bench.registry import register_method


def _check_choice(name: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}, got {value!r}")


@dataclass(frozen=True)
class TADFormerConfig(MethodConfig):
    """Options of ``tadformer`` (Baek et al., CVPR 2025, arXiv:2501.04293; configs/TADFormer/*.yaml).

    Attributes:
        rank: rank of the shared LoRA (16, 32, 64 in the paper's configurations).
        scale: LoRA scale, used as is (``SHARED_SCALE`` 4.0).
        dropout: dropout on the LoRA input (0.05).
        filter: ``static`` — the released code's filter, one input-independent depthwise 3×3 conv
            per task; ``dtf`` — the paper's Dynamic Task Filter, kernels generated from the input by
            one module shared by the tasks (what the paper's parameter counts imply).
        skip_layout: ``release`` — the released code's skip feature, a channel-first tensor read as
            channel-last (channels and positions scrambled within each window); ``corrected`` —
            the TPC map on its own grid.
        skip: how a stage mixes each task map with its skip feature: ``gate`` (σ(g)-weighted, one
            learned scalar per stage; the r32/r64 configurations), ``average`` or ``none``.
        train_patch_embed: whether the patch-embedding conv trains (the released code: yes, and the
            paper's counts include it; its LayerNorm always trains).
    """

    rank: int = 16
    scale: float = 4.0
    dropout: float = 0.05
    filter: str = "static"
    skip_layout: str = "release"
    skip: str = "gate"
    train_patch_embed: bool = True

    def __post_init__(self):
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1:
            raise ValueError(f"rank must be a positive integer, got {self.rank!r}")
        if (isinstance(self.scale, bool) or not isinstance(self.scale, (int, float)) or not self.scale > 0
                or math.isinf(self.scale)):
            raise ValueError(f"scale must be a positive number, got {self.scale!r}")
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) or not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")
        _check_choice("filter", self.filter, FILTERS)
        _check_choice("skip_layout", self.skip_layout, SKIP_LAYOUTS)
        _check_choice("skip", self.skip, SKIP_MODES)
        if not isinstance(self.train_patch_embed, bool):
            raise ValueError(f"train_patch_embed must be true or false, got {self.train_patch_embed!r}")


@register_method("tadformer")
class TADFormer(Method):
    """TADFormer (CVPR 2025): shared LoRA, task prompts, TPC and task filters in the last block of each stage."""

    paper = "https://arxiv.org/abs/2501.04293"
    Config = TADFormerConfig

    def build(self, backbone, tasks, cfg):
        freeze(backbone)
        set_extras_trainable(backbone, True, ("patch_embed", "norms", "rel_pos"))  # not the reductions
        if not cfg.train_patch_embed:
            backbone.patch_embed.proj.requires_grad_(False)
        for stage in backbone.layers:
            for block in stage.blocks:
                for parent, child in BLOCK_LINEARS:
                    owner = getattr(block, parent)
                    linear = getattr(owner, child)
                    if not isinstance(linear, nn.Linear):
                        raise TypeError(f"tadformer expects nn.Linear at {parent}.{child}, "
                                        f"found {type(linear).__name__}")
                    setattr(owner, child, SharedLoRALinear(linear, cfg.rank, cfg.scale, cfg.dropout))
        info = {"rank": cfg.rank, "scale": float(cfg.scale), "dropout": float(cfg.dropout), "filter": cfg.filter,
                "skip_layout": cfg.skip_layout, "skip": cfg.skip, "train_patch_embed": cfg.train_patch_embed}
        return TADFormerEncoder(backbone, tasks, cfg.filter, cfg.skip_layout, cfg.skip, info)
