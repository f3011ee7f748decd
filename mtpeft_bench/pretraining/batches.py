"""The batches of a pretraining run: a pure function of (seed, step), so any step can be replayed."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from mtpeft_bench.pretraining.config import PretrainConfig
from mtpeft_bench.pretraining.corpus import HEIGHT_SCALE, LABELS, SKY
from mtpeft_bench.tasks.transforms import IMAGENET_MEAN, IMAGENET_STD


class CorpusBatches:
    """Batches of step ``s`` drawn from ``default_rng([seed, s])`` (so any step can be replayed).

    ``batch(step)`` → images (B, 3, H, W) normalised like the benchmark's inputs (bicubic resize to
    the training size, ImageNet mean/std), the token mask (B, H/4, W/4; None when ``mask_ratio``
    is 0), the albedo (B, 3, H, W; resized, flipped and normalised like the image) and the labels.
    """

    def __init__(self, arrays: dict[str, np.ndarray], cfg: PretrainConfig):
        self.arrays = arrays
        self.cfg = cfg
        self.mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)

    def _pixels(self, name: str, idx: np.ndarray, flip: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(self.arrays[name][idx]).permute(0, 3, 1, 2).float() / 255.0
        return (self._resize_flip(x, flip) - self.mean) / self.std

    def _resize_flip(self, x: torch.Tensor, flip: np.ndarray) -> torch.Tensor:
        h, w = self.cfg.image_size
        if tuple(x.shape[-2:]) != (h, w):
            x = F.interpolate(x, size=(h, w), mode="bicubic", align_corners=False)
        return torch.where(torch.from_numpy(flip).view(-1, 1, 1, 1), x.flip(-1), x)

    def _nearest(self, name: str, idx: np.ndarray, flip: np.ndarray) -> torch.Tensor:
        """(B, 1, H, W) float: a uint8 map resized (nearest) to the training size and flipped like the image."""
        x = torch.from_numpy(self.arrays[name][idx]).unsqueeze(1).float()
        h, w = self.cfg.image_size
        if tuple(x.shape[-2:]) != (h, w):
            x = F.interpolate(x, size=(h, w), mode="nearest-exact")
        return torch.where(torch.from_numpy(flip).view(-1, 1, 1, 1), x.flip(-1), x)

    def _shading(self, idx: np.ndarray, flip: np.ndarray) -> torch.Tensor:
        """(B, 1, H, W): the light each pixel receives, image / albedo in linear light (mean over RGB,
        the sun is white), clamped to [0, 4]; where the albedo is nearly black it is undefined (0)."""
        image = (torch.from_numpy(self.arrays["images"][idx]).float() / 255.0) ** 2.2
        albedo = (torch.from_numpy(self.arrays["albedo"][idx]).float() / 255.0) ** 2.2
        ratio = torch.where(albedo > 1e-3, image / albedo.clamp_min(1e-3), torch.zeros_like(image)).clamp(0, 4)
        return self._resize_flip(ratio.mean(dim=-1, keepdim=True).permute(0, 3, 1, 2), flip)

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, dict[str, torch.Tensor]]:
        cfg = self.cfg
        rng = np.random.default_rng([cfg.seed, step])
        n = len(self.arrays["images"])
        idx = np.sort(rng.choice(n, cfg.batch_size, replace=False))
        flip = rng.random(cfg.batch_size) < 0.5
        h, w = cfg.image_size
        gh, gw = h // cfg.mask_patch, w // cfg.mask_patch
        k = int(round(cfg.mask_ratio * gh * gw))
        grid = np.zeros((cfg.batch_size, gh * gw), bool)
        for row in grid:
            row[rng.permutation(gh * gw)[:k]] = True

        scale = cfg.mask_patch // 4
        mask = torch.from_numpy(grid.reshape(-1, gh, gw)).repeat_interleave(scale, 1).repeat_interleave(scale, 2)
        labels = {name: torch.from_numpy(self.arrays[name][idx]) for name in LABELS}
        if cfg.height_weight > 0:  # metres, -1 on the sky
            raw = self._nearest("height", idx, flip)
            labels["height"] = torch.where(raw == SKY, -1.0, raw / HEIGHT_SCALE)
        if cfg.group_weight > 0:
            labels["object"] = self._nearest("object", idx, flip)
        albedo = self._pixels("albedo", idx, flip)
        if cfg.shading_weight > 0:
            albedo = torch.cat([albedo, self._shading(idx, flip)], dim=1)
        return self._pixels("images", idx, flip), mask if k else None, albedo, labels
