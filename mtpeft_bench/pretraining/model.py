"""The pretraining model: the backbone with a mask token, a dense head, a grouping head and a label head."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mtpeft_bench.model.backbone import create_backbone, feature_channels, stage_channels
from mtpeft_bench.model.heads import DECODER_CHANNELS, HRNetHead
from mtpeft_bench.pretraining.config import PretrainConfig, dense_layout
from mtpeft_bench.pretraining.corpus import LABELS


class LinearHead(nn.Module):
    """The benchmark decoder's layout without its hidden layer: per-feature bias-free 1x1 reducers,
    bilinear alignment to the first feature's size, concatenation and one 1x1 conv (a linear map of
    the features), upsampled to the output size. features: 4 x (B, C_i, H_i, W_i) -> (B, K, *out_size)."""

    def __init__(self, in_channels, num_outputs: int):
        super().__init__()
        self.reduce = nn.ModuleList(nn.Conv2d(c, r, 1, bias=False) for c, r in zip(in_channels, DECODER_CHANNELS))
        self.out = nn.Conv2d(sum(DECODER_CHANNELS), num_outputs, 1)

    def forward(self, features, out_size):
        reduced = [conv(f) for conv, f in zip(self.reduce, features)]
        size = reduced[0].shape[-2:]
        aligned = [reduced[0], *(F.interpolate(r, size=size, mode="bilinear", align_corners=False) for r in reduced[1:])]
        out = self.out(torch.cat(aligned, 1))
        return out if out_size is None else F.interpolate(out, size=out_size, mode="bilinear", align_corners=False)


class PretrainModel(nn.Module):
    """The backbone with a mask token and the pretraining heads.

    ``forward(images (B, 3, H, W), mask (B, H/4, W/4) bool or None)`` → ``{"albedo": (B, 3, H, W),
    "pixels": (B, 3, H, W) or None, "logits": (B, K)}``. The albedo head is the benchmark's decoder
    (:class:`~mtpeft_bench.model.heads.HRNetHead`) on the encoder's four features (docs/protocol.md 4.1: stages
    1-3 after the next PatchMerging, stage 4), so pretraining shapes the very features the benchmark's
    heads read. Only ``backbone`` is exported; the heads and the mask token are not.
    """

    def __init__(self, backbone: nn.Module, num_logits: int, shading: bool = False, head: str = "hrnet",
                 recon: bool = False, height: bool = False, group_dim: int = 0):
        super().__init__()
        self.backbone = backbone
        channels = stage_channels(backbone)
        self.stride = 4 * 2 ** (len(channels) - 1)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, 1, channels[0]))
        nn.init.trunc_normal_(self.mask_token, std=0.02)  # as SimMIM
        self.pixels = nn.Sequential(nn.Conv2d(channels[-1], self.stride ** 2 * 3, 1), nn.PixelShuffle(self.stride))
        self.dense_layout = dense_layout(shading, height, recon)
        self.albedo = (HRNetHead if head == "hrnet" else LinearHead)(feature_channels(backbone),
                                                                     sum(self.dense_layout.values()))
        self.group = LinearHead(feature_channels(backbone), group_dim) if group_dim else None
        self.norm = nn.LayerNorm(channels[-1])
        self.labels = nn.Linear(channels[-1], num_logits)

    def forward(self, images: torch.Tensor, mask: torch.Tensor | None = None) -> dict[str, torch.Tensor | None]:
        layers = list(self.backbone.layers)
        x = self.backbone.patch_embed(images)  # (B, H/4, W/4, C)
        if mask is not None:
            m = mask.unsqueeze(-1).to(x.dtype)
            x = x * (1 - m) + self.mask_token * m
        outs = []
        for stage in layers:
            x = stage(x)  # (B, h, w, C_i), NHWC
            outs.append(x)
        # the encoder's features: stages 1-3 through the next stage's PatchMerging, then stage 4
        feats = [layers[i + 1].downsample(outs[i]) for i in range(len(outs) - 1)] + [outs[-1]]
        nchw = [f.permute(0, 3, 1, 2) for f in feats]
        return {
            "albedo": self.albedo(nchw, tuple(images.shape[-2:])),
            "pixels": self.pixels(nchw[-1]) if mask is not None else None,
            "logits": self.labels(self.norm(x.mean(dim=(1, 2)))),
            "embed": self.group(nchw, None) if self.group is not None else None,
        }


def build_pretrain_model(cfg: PretrainConfig) -> PretrainModel:
    """The model of ``cfg``: a randomly initialised backbone (seeded by ``cfg.seed``, no drop-path) and
    the heads the objective trains."""
    torch.manual_seed(cfg.seed)
    backbone, _ = create_backbone(cfg.backbone, cfg.image_size, "none", drop_path_rate=0.0)
    return PretrainModel(backbone, sum(size for _, size in LABELS.values()), shading=cfg.shading_weight > 0,
                         head=cfg.head, recon=cfg.recon_weight > 0, height=cfg.height_weight > 0,
                         group_dim=cfg.group_dim if cfg.group_weight > 0 else 0)
