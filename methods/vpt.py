"""VPT-shallow and VPT-deep on the Swin backbone: learned prompt tokens, shared by all tasks.

Jia, Tang, Chen, Cardie, Belongie, Hariharan, Lim. "Visual Prompt Tuning", ECCV 2022
(arXiv:2203.12119); code KMnP/vpt (src/models/vit_prompt/swin_transformer.py, commit 7f3942e),
read for the facts and written anew here on timm's stock Swin. The multi-task PEFT papers
(Polyhistor, NeurIPS 2022; MTLoRA, CVPR 2024) list VPT-shallow and VPT-deep as baselines with
one encoder shared by the tasks and one decoder per task, which is what this plugin builds.

How VPT puts prompts into Swin's windowed attention:

- ``L`` prompt tokens (``prompt_length``) sit in front of the image tokens. In every block they
  are layer-normalised with the image tokens (``norm1``) and appended to the keys and values of
  EVERY window, with zero relative-position bias and zero shift mask (a prompt is visible from
  every window, also across the shifted-window boundaries).
- **VPT-shallow** (``vpt_shallow``): one set of prompts (L × C₁) enters after the patch
  embedding and flows through the network as tokens: in each block a prompt's attention output
  is computed in every window (its query sees that window's tokens and the prompts) and averaged
  over the windows, then the residual, ``norm2`` and the MLP update it like any token. At a
  PatchMerging the prompt is concatenated with itself four times (4C) and goes through the
  merging's LayerNorm and reduction. Trainable: ``L·C₁`` (4,800 for Swin-T at L = 50).
- **VPT-deep** (``vpt_deep``): every block gets its own prompts (the first block of stage 1 the
  input prompts, every other block ``deep_prompt_embeddings``); the prompts a block outputs are
  thrown away, so a deep prompt only ever acts as keys and values. Trainable:
  ``L·Σ_blocks C`` (= 4,416·L for Swin-T; 220,800 at L = 50).
- The features given to the decoders are the image tokens only (prompts are dropped).
- Initialisation as in VPT: uniform in ±√(6 / (3·p² + C₁)) (Xavier for the patch projection, patch
  size p), the same bound for every stage; prompt dropout (``dropout``, VPT's ``PROMPT.DROPOUT``)
  on the prompt parameters. Only the prompts (and the decoders) train.

The official code orders windows inconsistently when it spreads a shallow prompt over the windows
(window-major) and when it averages it back (also window-major), while the windows themselves are
batch-major: with a batch of more than one image, the prompt stream of one image is mixed with
those of the others (deep prompts are the same for all images at each block input, so VPT-deep
is unaffected). ``window_order=per_image`` (default) keeps each image's prompts to itself, as the
paper describes; ``window_order=official`` reproduces the released code.

Which prompt length the multi-task papers used is not stated; 50 is one value of VPT's own sweep
(1, 5, 10, 50, 100, 200).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from mtpeft_bench.methods.base import Method, MethodConfig, freeze
from mtpeft_bench.model.encoder import MultiTaskSwinEncoder
from mtpeft_bench.registry import register_method


WINDOW_ORDERS = ("per_image", "official")


def window_bias(attn: nn.Module, mask: torch.Tensor | None) -> torch.Tensor:
    """Relative-position bias of a timm ``WindowAttention`` plus the shift mask.

    Returns:
        (nW or 1, heads, N, N) with N the window area; ``mask`` is timm's (nW, N, N) 0/-inf mask.
    """
    n = attn.window_area
    table = attn.relative_position_bias_table[attn.relative_position_index.view(-1)]
    bias = table.view(n, n, -1).permute(2, 0, 1).unsqueeze(0)  # (1, h, N, N)
    return bias if mask is None else bias + mask.unsqueeze(1).to(bias.dtype)


def prompted_attention(attn: nn.Module, windows: torch.Tensor, prompts: torch.Tensor, mask: torch.Tensor | None,
                       prompt_queries: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Window attention with ``L`` prompt tokens appended to every window's keys and values.

    Args:
        attn: the block's frozen timm ``WindowAttention`` (its qkv, proj and bias table are used).
        windows: (B, nW, N, C) normalised window tokens.
        prompts: (B or 1, nW or 1, L, C) normalised prompt tokens seen by each window.
        mask: timm's (nW, N, N) shift mask or None.
        prompt_queries: also compute the prompts' own outputs (VPT-shallow's prompt stream).

    Returns:
        ``(window outputs (B, nW, N, C), prompt outputs (B, nW, L, C) or None)``. A prompt row and
        column get zero bias and zero mask, as in VPT.
    """
    b, nw, n, _ = windows.shape
    length = prompts.shape[-2]
    heads = attn.num_heads
    width = attn.qkv.out_features // 3

    def split(t: torch.Tensor) -> list[torch.Tensor]:  # (..., T, 3·h·d) → 3 × (..., h, T, d)
        *lead, tokens, _ = t.shape
        parts = t.view(*lead, tokens, 3, heads, width // heads).movedim(-3, 0)
        return [p.transpose(-3, -2) for p in parts]

    q, k, v = split(attn.qkv(windows))  # (B, nW, h, N, d)
    pq, pk, pv = split(attn.qkv(prompts))  # (B|1, nW|1, h, L, d)
    keys = torch.cat([pk.expand(b, nw, -1, -1, -1), k], dim=-2)
    values = torch.cat([pv.expand(b, nw, -1, -1, -1), v], dim=-2)
    bias = window_bias(attn, mask)  # (nW|1, h, N, N)
    bias = F.pad(bias, (length, 0))  # zero bias towards the prompts: (.., h, N, L+N)
    if prompt_queries:
        q = torch.cat([pq.expand(b, nw, -1, -1, -1), q], dim=-2)
        bias = F.pad(bias, (0, 0, length, 0))  # prompt rows: zero bias and mask
    out = F.scaled_dot_product_attention(q, keys, values, attn_mask=bias.to(q.dtype),
                                         dropout_p=attn.attn_drop.p if attn.training else 0.0, scale=attn.scale)
    out = attn.proj_drop(attn.proj(out.transpose(-3, -2).flatten(-2)))  # (B, nW, Nq, C)
    if prompt_queries:
        return out[..., length:, :], out[..., :length, :]
    return out, None


def spread(prompts: torch.Tensor, windows: int, order: str) -> torch.Tensor:
    """The prompts each window sees: (B, L, C) → (B, nW, L, C)."""
    if order == "per_image":
        return prompts.unsqueeze(1).expand(-1, windows, -1, -1)
    # Released code: window-major copies laid over batch-major windows (row i gets image i mod B).
    b = prompts.shape[0]
    return prompts.repeat(windows, 1, 1).view(b, windows, *prompts.shape[1:])


def gather(outputs: torch.Tensor, order: str) -> torch.Tensor:
    """Average a prompt's outputs over the windows: (B, nW, L, C) → (B, L, C)."""
    if order == "per_image":
        return outputs.mean(1)
    b, nw = outputs.shape[:2]
    return outputs.reshape(b * nw, *outputs.shape[2:]).view(nw, b, *outputs.shape[2:]).mean(0)


def prompted_block(block: nn.Module, x: torch.Tensor, prompts: torch.Tensor, stream: bool,
                   order: str = "per_image") -> tuple[torch.Tensor, torch.Tensor | None]:
    """A timm ``SwinTransformerBlock`` run with prompt tokens (its own modules, frozen).

    Args:
        block: the stock block (shift, padding and masks as timm's ``_attn`` does them).
        x: (B, H, W, C) image tokens.
        prompts: (B, L, C) prompt tokens (``stream``) or (1, L, C) static prompts.
        stream: also update the prompts (VPT-shallow); otherwise they only serve as keys/values.
        order: ``per_image`` or ``official`` (see the module docstring).

    Returns:
        ``(x' (B, H, W, C), prompts' (B, L, C) or None)``.
    """
    from timm.models.swin_transformer import window_partition, window_reverse

    b, h, w, c = x.shape
    wh, ww = block.window_size
    shifted = block.norm1(x)
    shift = tuple(block.shift_size)
    if any(shift):
        shifted = torch.roll(shifted, shifts=(-shift[0], -shift[1]), dims=(1, 2))
    shifted = F.pad(shifted, (0, 0, 0, (ww - w % ww) % ww, 0, (wh - h % wh) % wh))
    hp, wp = shifted.shape[1:3]
    windows = window_partition(shifted, (wh, ww)).view(b, -1, wh * ww, c)
    mask = block.get_attn_mask(shifted) if getattr(block, "dynamic_mask", False) else block.attn_mask
    # A copy, not a view of the parameter: under no_grad torch (2.14) still marks such a view as
    # requiring grad, which breaks the module tracker of its FLOP counter when norm1 is called on it.
    normed = block.norm1(prompts.clone())
    seen = spread(normed, windows.shape[1], order) if stream else normed.unsqueeze(1)
    out, prompt_out = prompted_attention(block.attn, windows, seen, mask, prompt_queries=stream)
    out = window_reverse(out.reshape(-1, wh, ww, c), (wh, ww), hp, wp)[:, :h, :w, :]
    if any(shift):
        out = torch.roll(out, shifts=shift, dims=(1, 2))
    if not stream:
        y = x + block.drop_path1(out)
        y = y.reshape(b, -1, c)
        y = y + block.drop_path2(block.mlp(block.norm2(y)))
        return y.reshape(b, h, w, c), None
    # Prompts and image tokens share the residual, drop-path draw, norm2 and MLP, as one sequence in VPT.
    length = prompts.shape[1]
    seq = torch.cat([prompts, x.reshape(b, -1, c)], dim=1)
    seq = seq + block.drop_path1(torch.cat([gather(prompt_out, order), out.reshape(b, -1, c)], dim=1))
    seq = seq + block.drop_path2(block.mlp(block.norm2(seq)))
    return seq[:, length:].reshape(b, h, w, c), seq[:, :length]


def merge_prompts(downsample: nn.Module, prompts: torch.Tensor) -> torch.Tensor:
    """VPT's prompt through a PatchMerging: four copies side by side (4C), norm, reduction → (B, L, 2C)."""
    return downsample.reduction(downsample.norm(prompts.repeat(1, 1, 4)))


@dataclass(frozen=True)
class VPTConfig(MethodConfig):
    """Options of ``vpt_shallow`` / ``vpt_deep`` (Jia et al., ECCV 2022, arXiv:2203.12119).

    Attributes:
        prompt_length: prompt tokens ``L`` per set (input set for shallow, one set per block for deep).
        dropout: dropout on the prompt parameters (VPT's ``PROMPT.DROPOUT``; 0 by default).
        window_order: ``per_image`` (the paper) or ``official`` (the released code's window order
            when it spreads and averages a shallow prompt, which mixes the images of a batch).
    """

    prompt_length: int = 50
    dropout: float = 0.0
    window_order: str = "per_image"

    def __post_init__(self):
        if isinstance(self.prompt_length, bool) or not isinstance(self.prompt_length, int) or self.prompt_length < 1:
            raise ValueError(f"prompt_length must be a positive integer, got {self.prompt_length!r}")
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) or not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")
        if self.window_order not in WINDOW_ORDERS:
            raise ValueError(f"window_order must be one of {', '.join(WINDOW_ORDERS)}, got {self.window_order!r}")


def init_bound(backbone: nn.Module) -> float:
    """VPT's uniform bound √(6 / (3·p² + C₁)) from the patch size p and the first stage's width C₁."""
    patch = backbone.patch_embed.proj.kernel_size
    return math.sqrt(6.0 / float(3 * patch[0] * patch[1] + backbone.patch_embed.proj.out_channels))


class VPTEncoder(MultiTaskSwinEncoder):
    """The shared Swin encoder with VPT prompts; every task gets the same four features.

    ``prompts[s]`` is (depth_s, L, C_s) for VPT-deep (one set per block) and, for VPT-shallow, only
    ``prompts[0]`` of shape (1, L, C₁) exists.
    """

    def __init__(self, backbone: nn.Module, tasks: Sequence[str], cfg: VPTConfig, deep: bool):
        super().__init__(backbone, tasks)
        self.deep = deep
        self.order = cfg.window_order
        self.dropout = float(cfg.dropout)
        bound = init_bound(backbone)
        shapes = [(len(stage.blocks), stage.blocks[0].norm1.normalized_shape[0]) for stage in backbone.layers]
        if not deep:
            shapes = shapes[:1]
        ref = backbone.patch_embed.proj.weight
        self.prompts = nn.ParameterList(
            nn.Parameter(ref.new_empty(depth if deep else 1, cfg.prompt_length, width).uniform_(-bound, bound))
            for depth, width in shapes)
        self._info = {"prompt_length": cfg.prompt_length, "deep": deep, "dropout": float(cfg.dropout),
                      "window_order": cfg.window_order}

    def method_info(self):
        return {**super().method_info(), **self._info}

    def drop(self, prompts: torch.Tensor) -> torch.Tensor:
        # Functional dropout: torch's FLOP counter cannot hook a module whose input is a parameter.
        return F.dropout(prompts, self.dropout, self.training) if self.dropout > 0 else prompts

    def forward(self, images: torch.Tensor) -> dict[str, list[torch.Tensor]]:
        """images (B, 3, H, W) → {task: [4 NCHW features]} (the image tokens; prompts are dropped)."""
        x = self.backbone.patch_embed(images)  # (B, H/4, W/4, C)
        stream = None if self.deep else self.drop(self.prompts[0][0].expand(x.shape[0], -1, -1))
        feats = []
        for s, stage in enumerate(self.backbone.layers):
            if s > 0:
                x = stage.downsample(x)
                feats.append(x)
                if stream is not None:
                    stream = merge_prompts(stage.downsample, stream)
            deep = self.drop(self.prompts[s]) if self.deep else None
            for i, block in enumerate(stage.blocks):
                if deep is not None:
                    x, _ = prompted_block(block, x, deep[i:i + 1], stream=False)
                else:
                    x, stream = prompted_block(block, x, stream, stream=True, order=self.order)
        feats.append(x)
        nchw = [f.permute(0, 3, 1, 2) for f in feats]
        return {t: list(nchw) for t in self.tasks}


class _VPT(Method):
    deep = False
    paper = "https://arxiv.org/abs/2203.12119"
    Config = VPTConfig

    def build(self, backbone, tasks, cfg):
        freeze(backbone)
        return VPTEncoder(backbone, tasks, cfg, deep=self.deep)


@register_method("vpt_shallow")
class VPTShallow(_VPT):
    """VPT-shallow: L prompt tokens after the patch embedding, in every window's attention, shared by all tasks."""


@register_method("vpt_deep")
class VPTDeep(_VPT):
    """VPT-deep: L prompt tokens per Swin block, in every window's keys/values, shared by all tasks."""

    deep = True
