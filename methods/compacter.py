"""Compacter and Compacter++: adapters built from PHM layers with shared Kronecker factors.

Karimi Mahabadi, Henderson, Ruder. "Compacter: Efficient Low-Rank Hypercomplex Adapter Layers",
NeurIPS 2021 (arXiv:2106.04647); code rabeehk/compacter (seq2seq/hypercomplex/layers.py,
adapters/adapter_modeling.py, configs/compacter.json and compacter++.json), read at commit
bf8c555 for the facts and written anew here. The multi-task dense-prediction papers (Polyhistor,
NeurIPS 2022; MTLoRA, CVPR 2024) list both as baselines with one adapter set shared by the tasks.

- **PHM layer** (Zhang et al., ICLR 2021): ``y = x·H + b`` with ``H = Σ_{i=1..n} A_i ⊗ W_i``
  (in × out). ``A_i`` (n × n, the "rule") is ONE tensor shared by every PHM layer of the model
  (``shared_rule``); ``W_i = s_i·t_i`` is low rank: ``s_i`` (in/n × k), ``t_i`` (k × out/n), rank
  ``k`` = ``rank`` (1). Initialisation as the official configs: ``A`` normal with std 1e-4,
  ``s_i`` and ``t_i`` Xavier-uniform with gain √2, ``b`` zero.
- **Adapter**: ``h + up(GELU(down(h)))`` with PHM ``down`` (C → m) and ``up`` (m → C) and the tanh
  GELU (the code's ``gelu_new``). **Compacter** (``compacter``) puts one after the attention's output
  projection and one after the MLP of every block (Houlsby's places); **Compacter++**
  (``compacter_pp``) only the one after the MLP.
- Width ``m = C / reduction_factor`` (32 in both configs). A PHM layer needs ``n`` to divide ``m``,
  which Swin's widths break (96/32 = 3); ``m`` is therefore rounded UP to a multiple of ``n``:
  ``m = n·⌈C / (reduction_factor·n)⌉`` (4, 8, 12, 24 on Swin-T), a necessary deviation.
- Trained: the PHM factors, biases and shared rule, and every LayerNorm of the backbone
  (``unfreeze_layer_norms`` in both configs; ``train_norms``). Nothing else of the backbone.

Per adapter of width ``m`` on ``C`` channels: ``2k·(C + m) + C + m`` parameters (``3·(C + m)`` at
``k`` = 1), plus ``n³`` once for the shared rule (one ``n³`` per PHM layer without it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mtpeft_bench.methods.base import Method, MethodConfig, freeze
from mtpeft_bench.methods.adapter import WithAdapter
from mtpeft_bench.model.encoder import MultiTaskSwinEncoder
from mtpeft_bench.registry import register_method


def kronecker_sum(rule: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """``Σ_i rule[i] ⊗ factors[i]`` for rule (T, a, b) and factors (T, p, q) → (a·p, b·q); PHM has T = a = b = n."""
    _, a, b = rule.shape
    _, p, q = factors.shape
    return torch.einsum("iab,icd->acbd", rule, factors).reshape(a * p, b * q)


class PHMLinear(nn.Module):
    """A PHM layer ``y = x·H + b``, ``H = Σ_i A_i ⊗ (s_i t_i)``.

    Args:
        in_features, out_features: both multiples of ``n``.
        n: number of Kronecker terms (the "hypercomplex division").
        rank: rank ``k`` of each ``W_i = s_i t_i``.
        rule: the shared (n, n, n) rule ``A``; ``None``: a rule of this layer's own.

    ``forward(x (..., in)) -> (..., out)``.
    """

    def __init__(self, in_features: int, out_features: int, n: int, rank: int, rule: nn.Parameter | None):
        super().__init__()
        if in_features % n or out_features % n:
            raise ValueError(f"PHM widths {in_features}→{out_features} must be multiples of n={n}")
        self.in_features, self.out_features, self.n = in_features, out_features, n
        self.rule = rule if rule is not None else new_rule(n)
        self.left = nn.Parameter(torch.empty(n, in_features // n, rank))  # s_i
        self.right = nn.Parameter(torch.empty(n, rank, out_features // n))  # t_i
        for i in range(n):  # "glorot-uniform" of the official code: Xavier with gain √2, per slice
            nn.init.xavier_uniform_(self.left.data[i], gain=math.sqrt(2))
            nn.init.xavier_uniform_(self.right.data[i], gain=math.sqrt(2))
        self.bias = nn.Parameter(torch.zeros(out_features))

    def weight(self) -> torch.Tensor:
        """H (in × out)."""
        return kronecker_sum(self.rule, torch.bmm(self.left, self.right))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight() + self.bias


def new_rule(n: int) -> nn.Parameter:
    """The (n, n, n) rule ``A``, normal with std 1e-4 (``phm_c_init: normal``, ``phm_init_range``)."""
    return nn.Parameter(torch.empty(n, n, n).normal_(0.0, 1e-4))


def adapter_width(channels: int, reduction_factor: int, n: int) -> int:
    """``C / reduction_factor`` rounded up to a multiple of ``n`` (at least ``n``)."""
    return n * math.ceil(channels / (reduction_factor * n))


class PHMAdapter(nn.Module):
    """``h + up(GELU_tanh(down(h)))`` with PHM ``down`` (C → m) and ``up`` (m → C).

    ``forward(h (..., C)) -> (..., C)``.
    """

    def __init__(self, dim: int, width: int, n: int, rank: int, rule: nn.Parameter | None):
        super().__init__()
        self.down = PHMLinear(dim, width, n, rank, rule)
        self.up = PHMLinear(width, dim, n, rank, rule)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.up(F.gelu(self.down(h), approximate="tanh"))


class WithPHMAdapter(WithAdapter):
    """``adapter(layer(x))``: a frozen linear followed by its Compacter (PHM) adapter."""


def _positive_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


@dataclass(frozen=True)
class CompacterConfig(MethodConfig):
    """Options of ``compacter`` / ``compacter_pp`` (Karimi Mahabadi et al., NeurIPS 2021, arXiv:2106.04647).

    Attributes:
        n: Kronecker terms per PHM layer (``hypercomplex_division``; 4).
        rank: rank of each ``W_i`` (``phm_rank``; 1).
        reduction_factor: adapter width ``C / reduction_factor``, rounded up to a multiple of ``n`` (32).
        shared_rule: one rule ``A`` for every PHM layer (``shared_phm_rule``; true).
        train_norms: the backbone's LayerNorms train too (``unfreeze_layer_norms``; true).
    """

    n: int = 4
    rank: int = 1
    reduction_factor: int = 32
    shared_rule: bool = True
    train_norms: bool = True

    def __post_init__(self):
        for name in ("n", "rank", "reduction_factor"):
            _positive_int(name, getattr(self, name))
        for name in ("shared_rule", "train_norms"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")


class CompacterEncoder(MultiTaskSwinEncoder):
    def __init__(self, backbone, tasks, cfg: CompacterConfig, after_attention: bool, rule: nn.Parameter | None):
        super().__init__(backbone, tasks)
        self._info = {"n": cfg.n, "rank": cfg.rank, "reduction_factor": cfg.reduction_factor,
                      "shared_rule": cfg.shared_rule, "train_norms": cfg.train_norms,
                      "after_attention": after_attention,
                      "widths": [adapter_width(int(s.blocks[0].norm1.normalized_shape[0]), cfg.reduction_factor, cfg.n)
                                 for s in backbone.layers]}
        self.rule = rule  # registered here as well, so the shared rule has one home in the encoder

    def method_info(self):
        return {**super().method_info(), **self._info}


class _Compacter(Method):
    after_attention = True
    paper = "https://arxiv.org/abs/2106.04647"
    Config = CompacterConfig

    def build(self, backbone, tasks, cfg):
        freeze(backbone)
        norms = [p for m in backbone.modules() if isinstance(m, nn.LayerNorm) for p in m.parameters()]
        rule = new_rule(cfg.n) if cfg.shared_rule else None
        for stage in backbone.layers:
            for block in stage.blocks:
                dim = block.mlp.fc2.out_features
                width = adapter_width(dim, cfg.reduction_factor, cfg.n)

                def adapter() -> PHMAdapter:
                    return PHMAdapter(dim, width, cfg.n, cfg.rank, rule)

                if self.after_attention:
                    block.attn.proj = WithPHMAdapter(block.attn.proj, adapter())
                block.mlp.fc2 = WithPHMAdapter(block.mlp.fc2, adapter())
        for param in norms:
            param.requires_grad_(cfg.train_norms)
        return CompacterEncoder(backbone, tasks, cfg, self.after_attention, rule)


@register_method("compacter")
class Compacter(_Compacter):
    """Compacter: PHM adapters (shared Kronecker rule, rank-1 factors) after the attention and the MLP."""


@register_method("compacter_pp")
class CompacterPP(_Compacter):
    """Compacter++: the Compacter adapter after the MLP of every block only."""

    after_attention = False
