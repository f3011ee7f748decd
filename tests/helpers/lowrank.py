"""``lowrank_fc2``: a test method whose encoder can merge its trainable update for inference.

It adds a rank-2 term ``s·B·A`` to every block's ``mlp.fc2`` (LoRA-style, but with B initialised
non-zero so that merging has something to fold). Used by the merge tests (test_measure_merge.py)
and the bench test; the ``lowrank_method`` fixture (conftest.py) registers it for one test.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from mtpeft_bench.encoder import MultiTaskSwinEncoder
from mtpeft_bench.methods.base import Method, MethodConfig, freeze


RANK = 2


class LowRankLinear(nn.Module):
    """``y = W x + b + s · B (A x)`` with frozen W, b and trainable A (r×in), B (out×r)."""

    def __init__(self, base: nn.Linear, rank: int = RANK, scale: float = 0.5):
        super().__init__()
        self.base, self.scale = base, scale
        generator = torch.Generator().manual_seed(base.in_features)
        self.A = nn.Parameter(torch.randn(rank, base.in_features, generator=generator) * 0.1)
        self.B = nn.Parameter(torch.randn(base.out_features, rank, generator=generator) * 0.1)

    def forward(self, x):
        return self.base(x) + self.scale * (x @ self.A.t()) @ self.B.t()

    def merged(self) -> nn.Linear:
        linear = copy.deepcopy(self.base)
        with torch.no_grad():
            linear.weight += self.scale * self.B @ self.A
        return linear


class MergeableEncoder(MultiTaskSwinEncoder):
    def merge_for_inference(self) -> nn.Module:
        merged = copy.deepcopy(self)
        for module in list(merged.modules()):
            for name, child in list(module.named_children()):
                if isinstance(child, LowRankLinear):
                    setattr(module, name, child.merged())
        return merged


@dataclass(frozen=True)
class LowRankConfig(MethodConfig):
    """No options."""


class LowRankFc2(Method):
    """Frozen backbone, a rank-2 update on every fc2 that can be merged for inference."""

    Config = LowRankConfig

    def build(self, backbone, tasks, cfg):
        freeze(backbone)
        for stage in backbone.layers:
            for block in stage.blocks:
                block.mlp.fc2 = LowRankLinear(block.mlp.fc2)
        return MergeableEncoder(backbone, tasks)
