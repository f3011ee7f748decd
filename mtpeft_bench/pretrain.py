"""Pretraining of mtbench's built-in Swin backbones (``mtbench pretrain``).

Objective, on the procedural corpus of :mod:`mtpeft_bench.tasks.pretrain_corpus` (disjoint from
``synth``), none of whose targets is one of the benchmark's tasks:

- **Albedo** (intrinsic-image decomposition): the benchmark's own decoder head
  (:class:`~mtpeft_bench.heads.HRNetHead`) on the encoder's four features predicts the surfaces'
  colours without shading and shadows (L1, all pixels, normalised like the input); telling
  texture from light needs surface orientation and occlusion, which the dense tasks use too.
- **Scene properties**: a linear head on the average-pooled last stage predicts which primitive
  kinds and object families the image holds (binary cross-entropy), and the number of objects,
  the palette and the sun position (cross-entropy); weighted by ``label_weight``.
- **Masked-image modelling** (Xie et al., "SimMIM: A Simple Framework for Masked Image Modeling",
  CVPR 2022, https://arxiv.org/abs/2111.09886), off by default (``mask_ratio`` 0): a share of
  ``mask_patch``-px squares is replaced by a learnt mask token after the patch embedding and a
  one-layer head (1x1 conv + pixel shuffle) predicts their pixels from the last stage (L1 on the
  masked pixels). It is off because a first pilot (MIM + labels, 200 steps) gave frozen features
  that fitted ``synth`` worse than a random initialisation under decoder-only training.

Determinism: the model is initialised from ``seed``; every step draws its batch, flips and masks
from ``numpy.random.default_rng([seed, step])``; the LR is a function of the step; torch runs
with deterministic algorithms on ``threads`` CPU threads; there is no dropout or drop-path.
Resuming from the checkpoint (model, optimizer state, step) therefore continues exactly where an
uninterrupted run would be.

Files, for ``--out DIR/NAME.safetensors``: ``NAME.safetensors`` (the backbone's state dict, the
format ``--weights PATH`` and ``--weights builtin`` load), ``NAME.json`` (configuration, command,
loss history, time), and the checkpoint ``NAME.ckpt/`` (``state.safetensors`` + ``state.json``,
written atomically every ``checkpoint_every`` steps).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mtpeft_bench.errors import UserError
from mtpeft_bench.tasks.pretrain_corpus import LABELS


#: Backbone configurations that can be pretrained: name -> (backbone alias, pretraining image size).
SETUPS: dict[str, tuple[str, tuple[int, int]]] = {
    "micro": ("swin_micro", (64, 64)),  # the smoke preset's backbone and size
    "mini": ("swin_mini", (64, 64)),  # the cpu preset's backbone (it runs at 96x128: timm resizes the last stage's bias table)
}


#: Dense pretraining heads: ``hrnet`` (the benchmark's decoder) or ``linear`` (its reducers and a 1x1 conv, no hidden layer).
HEADS = ("hrnet", "linear")


class LinearHead(nn.Module):
    """The benchmark decoder's layout without its hidden layer: per-feature bias-free 1x1 reducers,
    bilinear alignment to the first feature's size, concatenation and one 1x1 conv (a linear map of
    the features), upsampled to the output size. features: 4 x (B, C_i, H_i, W_i) -> (B, K, *out_size)."""

    def __init__(self, in_channels, num_outputs: int):
        super().__init__()
        from mtpeft_bench.heads import DECODER_CHANNELS

        self.reduce = nn.ModuleList(nn.Conv2d(c, r, 1, bias=False) for c, r in zip(in_channels, DECODER_CHANNELS))
        self.out = nn.Conv2d(sum(DECODER_CHANNELS), num_outputs, 1)

    def forward(self, features, out_size):
        reduced = [conv(f) for conv, f in zip(self.reduce, features)]
        size = reduced[0].shape[-2:]
        aligned = [reduced[0], *(F.interpolate(r, size=size, mode="bilinear", align_corners=False) for r in reduced[1:])]
        out = self.out(torch.cat(aligned, 1))
        return out if out_size is None else F.interpolate(out, size=out_size, mode="bilinear", align_corners=False)


@dataclass(frozen=True)
class PretrainConfig:
    """Everything a pretraining run depends on (all of it is recorded with the weights).

    Attributes:
        config: ``micro`` or ``mini`` (:data:`SETUPS`).
        seed: model initialisation and the data/mask stream.
        steps: optimizer steps.
        batch_size: images per step.
        lr, min_lr, warmup_steps: AdamW peak LR, cosine floor, linear warm-up from ``lr / 100``
            (the benchmark's schedule, :func:`mtpeft_bench.train.make_optimizer`, stepped per step).
        weight_decay, clip_grad: as in the benchmark's recipe (0.05, 5).
        mask_ratio, mask_patch: share and size (px) of the masked squares (SimMIM: 0.6); 0 turns
            masked-image modelling off (the default: see the module docstring).
        albedo_weight: weight of the albedo loss.
        shading_weight: weight of the shading loss (0: no shading output, the head predicts albedo only).
        label_weight: weight of the scene-property losses.
        corpus_images, corpus_seed: the corpus (:class:`~mtpeft_bench.tasks.pretrain_corpus.CorpusConfig`).
        threads: torch CPU threads (fixed, because the summation order may depend on it).
        store_dtype: ``float16`` or ``float32`` for the exported backbone weights.
    """

    config: str = "micro"
    seed: int = 0
    steps: int = 3000
    batch_size: int = 32
    lr: float = 1e-3
    min_lr: float = 1e-5
    warmup_steps: int = 100
    weight_decay: float = 0.05
    clip_grad: float = 5.0
    mask_ratio: float = 0.0
    mask_patch: int = 8
    albedo_weight: float = 1.0
    shading_weight: float = 0.0
    label_weight: float = 0.5
    head: str = "hrnet"
    recon_weight: float = 0.0
    height_weight: float = 0.0
    group_weight: float = 0.0
    group_dim: int = 32
    group_temperature: float = 0.1
    corpus_images: int = 4000
    corpus_seed: int = 0
    threads: int = 1
    store_dtype: str = "float16"

    def __post_init__(self) -> None:
        if self.config not in SETUPS:
            raise UserError(f"unknown pretraining config '{self.config}'; use one of {', '.join(SETUPS)}")
        for name in ("steps", "batch_size", "corpus_images", "threads", "mask_patch"):
            if getattr(self, name) <= 0:
                raise UserError(f"{name} must be positive, got {getattr(self, name)}")
        if not 0 <= self.mask_ratio < 1:
            raise UserError(f"mask_ratio must be in [0, 1), got {self.mask_ratio}")
        for name in ("albedo_weight", "shading_weight", "label_weight"):
            if getattr(self, name) < 0:
                raise UserError(f"{name} must not be negative, got {getattr(self, name)}")
        if self.mask_patch % 4:
            raise UserError(f"mask_patch must be a multiple of the patch size 4, got {self.mask_patch}")
        h, w = self.image_size
        if h % self.mask_patch or w % self.mask_patch:
            raise UserError(f"mask_patch {self.mask_patch} must divide the image size {h}x{w}")
        if self.head not in HEADS:
            raise UserError(f"head must be one of {', '.join(HEADS)}, got {self.head!r}")
        if self.store_dtype not in ("float16", "float32"):
            raise UserError(f"store_dtype must be float16 or float32, got {self.store_dtype!r}")
        if self.batch_size > self.corpus_images:
            raise UserError(f"batch_size {self.batch_size} exceeds the corpus of {self.corpus_images} images")

    @property
    def backbone(self) -> str:
        return SETUPS[self.config][0]

    @property
    def image_size(self) -> tuple[int, int]:
        return SETUPS[self.config][1]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class PretrainModel(nn.Module):
    """The backbone with a mask token and the pretraining heads.

    ``forward(images (B, 3, H, W), mask (B, H/4, W/4) bool or None)`` → ``{"albedo": (B, 3, H, W),
    "pixels": (B, 3, H, W) or None, "logits": (B, K)}``. The albedo head is the benchmark's decoder
    (:class:`~mtpeft_bench.heads.HRNetHead`) on the encoder's four features (PROTOCOL.md 4.1: stages
    1-3 after the next PatchMerging, stage 4), so pretraining shapes the very features the benchmark's
    heads read. Only ``backbone`` is exported; the heads and the mask token are not.
    """

    def __init__(self, backbone: nn.Module, num_logits: int, shading: bool = False, head: str = "hrnet",
                 recon: bool = False, height: bool = False, group_dim: int = 0):
        super().__init__()
        from mtpeft_bench.backbone import feature_channels, stage_channels
        from mtpeft_bench.heads import HRNetHead

        self.backbone = backbone
        channels = stage_channels(backbone)
        self.stride = 4 * 2 ** (len(channels) - 1)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, 1, channels[0]))
        nn.init.trunc_normal_(self.mask_token, std=0.02)  # as SimMIM
        self.pixels = nn.Sequential(nn.Conv2d(channels[-1], self.stride ** 2 * 3, 1), nn.PixelShuffle(self.stride))
        self.dense_layout = {"albedo": 3, "shading": int(shading), "height": int(height), "recon": 3 * int(recon)}
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


# -- data --------------------------------------------------------------------------------------

class CorpusBatches:
    """Batches of step ``s`` drawn from ``default_rng([seed, s])`` (so any step can be replayed).

    ``batch(step)`` → images (B, 3, H, W) normalised like the benchmark's inputs (bicubic resize to
    the training size, ImageNet mean/std), the token mask (B, H/4, W/4; None when ``mask_ratio``
    is 0), the albedo (B, 3, H, W; resized, flipped and normalised like the image) and the labels.
    """

    def __init__(self, arrays: dict[str, np.ndarray], cfg: PretrainConfig):
        from mtpeft_bench.tasks.transforms import IMAGENET_MEAN, IMAGENET_STD

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
            from mtpeft_bench.tasks.pretrain_corpus import HEIGHT_SCALE, SKY

            raw = self._nearest("height", idx, flip)
            labels["height"] = torch.where(raw == SKY, -1.0, raw / HEIGHT_SCALE)
        if cfg.group_weight > 0:
            labels["object"] = self._nearest("object", idx, flip)
        albedo = self._pixels("albedo", idx, flip)
        if cfg.shading_weight > 0:
            albedo = torch.cat([albedo, self._shading(idx, flip)], dim=1)
        return self._pixels("images", idx, flip), mask if k else None, albedo, labels


def pretrain_losses(model: nn.Module, images: torch.Tensor, mask: torch.Tensor | None, albedo: torch.Tensor,
                    labels: dict[str, torch.Tensor], cfg: PretrainConfig) -> dict[str, torch.Tensor]:
    """``{"loss", "mim", "albedo", "labels"}``: the masked-pixel L1 (0 without a mask), the albedo L1
    over all pixels, the mean of the label losses, and their weighted sum."""
    out = model(images, mask)
    if mask is not None:
        stride = images.shape[-1] // mask.shape[-1]
        pixel_mask = mask.repeat_interleave(stride, 1).repeat_interleave(stride, 2).unsqueeze(1).to(images.dtype)
        mim = (F.l1_loss(out["pixels"], images, reduction="none") * pixel_mask).sum() / (pixel_mask.sum() * 3 + 1e-6)
    else:
        mim = images.new_zeros(())
    dense = dict(zip(("albedo", "shading", "height", "recon"),
                     torch.split(out["albedo"], list(_dense_layout(cfg).values()), dim=1)))
    albedo_loss = F.l1_loss(dense["albedo"], albedo[:, :3])
    shading_loss = F.l1_loss(dense["shading"], albedo[:, 3:4]) if cfg.shading_weight > 0 else images.new_zeros(())
    recon = F.l1_loss(dense["recon"], images) if cfg.recon_weight > 0 else images.new_zeros(())
    if cfg.height_weight > 0:
        ground = labels["height"] >= 0  # the sky (-1) has no height
        error = F.l1_loss(dense["height"], labels["height"].clamp_min(0), reduction="none")
        height_loss = (error * ground).sum() / ground.sum().clamp_min(1)
    else:
        height_loss = images.new_zeros(())
    if cfg.group_weight > 0:
        group_loss = grouping_loss(out["embed"], labels["object"], cfg.group_temperature)
    else:
        group_loss = images.new_zeros(())
    terms, start = [], 0
    for name, (kind, size) in LABELS.items():
        logits = out["logits"][:, start:start + size]
        start += size
        if kind == "multi_hot":
            terms.append(F.binary_cross_entropy_with_logits(logits, labels[name].float()))
        else:
            terms.append(F.cross_entropy(logits, labels[name]))
    label_loss = torch.stack(terms).mean()
    total = mim + cfg.albedo_weight * albedo_loss + cfg.shading_weight * shading_loss + cfg.label_weight * label_loss
    total = total + cfg.recon_weight * recon + cfg.height_weight * height_loss + cfg.group_weight * group_loss
    return {"loss": total, "mim": mim, "recon": recon, "height": height_loss, "group": group_loss,
            "albedo": albedo_loss, "shading": shading_loss, "labels": label_loss}


def _dense_layout(cfg: PretrainConfig) -> dict[str, int]:
    return {"albedo": 3, "shading": int(cfg.shading_weight > 0), "height": int(cfg.height_weight > 0),
            "recon": 3 * int(cfg.recon_weight > 0)}


def grouping_loss(embed: torch.Tensor, objects: torch.Tensor, temperature: float) -> torch.Tensor:
    """Supervised contrastive loss (Khosla et al., NeurIPS 2020) over the cells of the feature grid.

    embed (B, D, h, w): a linear read-out of the encoder's features; objects (B, 1, H, W) int: which
    object each pixel sees (0 sky, 1 ground, 2+ objects). Every cell whose pixels mostly (> 50 %)
    see one object is an anchor; its positives are the other cells of the same image that see the
    same object, and every other cell of the batch is a negative. Pulls the features of one object
    together and pushes different objects (and images) apart: instance grouping, not a class label.
    """
    b, d, h, w = embed.shape
    ids = objects.long().squeeze(1)
    n_ids = int(ids.max()) + 1
    share = F.adaptive_avg_pool2d(F.one_hot(ids, n_ids).permute(0, 3, 1, 2).float(), (h, w))  # (B, K, h, w)
    purity, cell = share.max(dim=1)
    z = F.normalize(embed.permute(0, 2, 3, 1).reshape(-1, d), dim=1)
    key = (torch.arange(b).view(b, 1, 1) * n_ids + cell).reshape(-1)
    valid = purity.reshape(-1) > 0.5
    z, key = z[valid], key[valid]
    logits = z @ z.T / temperature
    eye = torch.eye(len(z), dtype=torch.bool)
    logits = logits.masked_fill(eye, float("-inf"))
    pos = (key[:, None] == key[None, :]) & ~eye
    has = pos.any(dim=1)
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    per_anchor = -(log_prob.masked_fill(~pos, 0).sum(dim=1) / pos.sum(dim=1).clamp_min(1))
    return per_anchor[has].mean() if has.any() else embed.new_zeros(())


# -- checkpoints -------------------------------------------------------------------------------

def _save_safetensors_atomic(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file({k: v.contiguous() for k, v in tensors.items()}, tmp, metadata=metadata)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def paths_for(out: Path) -> dict[str, Path]:
    out = Path(out)
    stem = out.with_suffix("")
    return {"weights": out, "log": stem.with_suffix(".json"), "ckpt": Path(f"{stem}.ckpt")}


def save_checkpoint(folder: Path, model: nn.Module, optimizer: torch.optim.Optimizer, step: int,
                    state: dict[str, Any]) -> None:
    """Write ``state.json`` (step, config, history) and then ``state.safetensors`` (model + AdamW state).

    The JSON goes first: if the process dies in between, the tensors are one checkpoint older and
    resuming trusts their step and drops the JSON's extra history.
    """
    from mtpeft_bench.results import write_json_atomic

    write_json_atomic(folder / "state.json", {**state, "step": step})
    tensors = {f"model.{k}": v.detach().clone() for k, v in model.state_dict().items()}
    for i, entry in optimizer.state_dict()["state"].items():
        for key, value in entry.items():
            tensors[f"optim.{i}.{key}"] = torch.as_tensor(value).clone()
    _save_safetensors_atomic(folder / "state.safetensors", tensors, {"step": str(step)})


def load_checkpoint(folder: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                    config: dict[str, Any]) -> tuple[int, list[dict[str, Any]]] | None:
    """Restore a checkpoint made with ``config``; returns ``(step, history)`` or None if there is none.

    Raises:
        UserError: the checkpoint was made with other settings.
    """
    from safetensors import safe_open

    tensors_path, state_path = folder / "state.safetensors", folder / "state.json"
    if not (tensors_path.is_file() and state_path.is_file()):
        return None
    state = json.loads(state_path.read_text())
    if state.get("config") != config:
        differ = sorted(k for k in set(config) | set(state.get("config", {}))
                        if config.get(k) != state.get("config", {}).get(k))
        raise UserError(f"checkpoint {folder} was made with other settings ({', '.join(differ)} differ); "
                        "delete it, pass the same settings, or choose another --out")
    with safe_open(str(tensors_path), framework="pt") as f:
        step = int(f.metadata()["step"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")}, strict=True)
    saved = optimizer.state_dict()
    saved["state"] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, index, name = key.split(".", 2)
            saved["state"].setdefault(int(index), {})[name] = value
    optimizer.load_state_dict(saved)
    return step, [h for h in state.get("history", []) if h["step"] <= step]


def export_backbone(model: PretrainModel, path: Path, cfg: PretrainConfig, extra: dict[str, Any]) -> str:
    """Write the backbone's state dict (``store_dtype``) as safetensors; returns its SHA-256."""
    from mtpeft_bench.backbone import sha256_of

    dtype = getattr(torch, cfg.store_dtype)
    tensors = {k: v.detach().to(dtype) for k, v in model.backbone.state_dict().items()}
    # One metadata key only: safetensors writes several keys in a random order, which would make
    # the file's bytes (and its SHA-256) differ between identical runs.
    info = {"backbone": cfg.backbone, "pretrain_config": cfg.to_dict(), **extra}
    _save_safetensors_atomic(Path(path), tensors, {"mtbench": json.dumps(info, sort_keys=True)})
    os.chmod(path, 0o644)
    return sha256_of(Path(path))


# -- the run -----------------------------------------------------------------------------------

def build_pretrain_model(cfg: PretrainConfig) -> PretrainModel:
    from mtpeft_bench.backbone import create_backbone

    torch.manual_seed(cfg.seed)
    backbone, _ = create_backbone(cfg.backbone, cfg.image_size, "none", drop_path_rate=0.0)
    return PretrainModel(backbone, sum(size for _, size in LABELS.values()), shading=cfg.shading_weight > 0,
                         head=cfg.head, recon=cfg.recon_weight > 0, height=cfg.height_weight > 0,
                         group_dim=cfg.group_dim if cfg.group_weight > 0 else 0)


def pretrain(cfg: PretrainConfig, out: Path, *, progress: bool = True, checkpoint_every: int = 200,
             command: str | None = None, stop_after: int | None = None) -> dict[str, Any]:
    """Pretrain, checkpoint, export; returns the log record (also written to ``NAME.json``).

    Args:
        out: the ``.safetensors`` file to write the backbone to.
        checkpoint_every: steps between checkpoints (and at the end).
        command: the command line to record (default: this process's).
        stop_after: stop (after checkpointing) once this step is reached, without exporting —
            to test resuming.
    """
    from tqdm.auto import tqdm

    from mtpeft_bench.train import Schedule, make_optimizer
    from mtpeft_bench.results import write_json_atomic
    from mtpeft_bench.tasks.pretrain_corpus import CorpusConfig, load_corpus

    out = Path(out).expanduser()
    if out.suffix != ".safetensors":
        raise UserError(f"--out must name a .safetensors file, got {out}")
    files = paths_for(out)
    threads_before = torch.get_num_threads()
    deterministic_before = torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(cfg.threads)
    torch.use_deterministic_algorithms(True)
    try:
        started = time.time()
        corpus_cfg = CorpusConfig(num_images=cfg.corpus_images, seed=cfg.corpus_seed)
        arrays = load_corpus(corpus_cfg, progress=progress)
        if cfg.height_weight > 0 or cfg.group_weight > 0:
            from mtpeft_bench.tasks.pretrain_corpus import load_geometry

            arrays = {**arrays, **load_geometry(corpus_cfg, progress=progress)}
        data = CorpusBatches(arrays, cfg)
        model = build_pretrain_model(cfg)
        schedule = Schedule(lr=cfg.lr, warmup_lr=cfg.lr / 100, min_lr=cfg.min_lr, total_steps=cfg.steps,
                            warmup_steps=cfg.warmup_steps)
        # the benchmark's AdamW (decay groups) and per-step warm-up + cosine schedule
        optimizer, scheduler = make_optimizer(model, schedule, cfg.weight_decay)
        config = cfg.to_dict()
        resumed = load_checkpoint(files["ckpt"], model, optimizer, config)
        step, history = resumed if resumed else (0, [])
        elapsed_before = history[-1].get("elapsed_s", 0.0) if history else 0.0
        t0 = time.time()
        bar = tqdm(total=cfg.steps, initial=step, desc=f"pretrain {cfg.config}", disable=not progress,
                   dynamic_ncols=True, file=sys.stderr)
        model.train()
        while step < cfg.steps and (stop_after is None or step < stop_after):
            scheduler.step_update(step)  # the LR is a function of the step alone
            lr = optimizer.param_groups[0]["lr"]
            images, mask, albedo, labels = data.batch(step)
            losses = pretrain_losses(model, images, mask, albedo, labels, cfg)
            optimizer.zero_grad(set_to_none=True)
            losses["loss"].backward()
            nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad)
            optimizer.step()
            step += 1
            entry = {"step": step, "lr": lr, **{k: v.item() for k, v in losses.items()},
                     "elapsed_s": round(elapsed_before + time.time() - t0, 2)}
            if not math.isfinite(entry["loss"]):
                raise RuntimeError(f"pretraining diverged at step {step} (loss {entry['loss']})")
            history.append(entry)
            bar.update(1)
            bar.set_postfix(loss=f"{entry['loss']:.4f}", albedo=f"{entry['albedo']:.3f}", labels=f"{entry['labels']:.3f}")
            if step % checkpoint_every == 0 or step == cfg.steps or step == stop_after:
                save_checkpoint(files["ckpt"], model, optimizer, step, {"config": config, "history": history})
        bar.close()
        record: dict[str, Any] = {
            "config": config, "backbone": cfg.backbone, "image_size": list(cfg.image_size),
            "corpus": {**dataclasses.asdict(corpus_cfg), "key": corpus_cfg.key()},
            "command": command or " ".join(["mtbench", *sys.argv[1:]]),
            "steps_done": step, "history": history,
            "train_seconds": history[-1]["elapsed_s"] if history else 0.0,
            "wall_seconds_this_call": round(time.time() - started, 2),
            "environment": {"torch": torch.__version__, "threads": torch.get_num_threads(),
                            "deterministic": torch.are_deterministic_algorithms_enabled()},
        }
        if step < cfg.steps:
            record["status"] = "stopped"
            return record
        record["status"] = "completed"
        record["sha256"] = export_backbone(model, files["weights"], cfg, {"steps_done": step})
        record["weights"] = str(files["weights"])
        write_json_atomic(files["log"], record)
        return record
    finally:
        torch.set_num_threads(threads_before)
        torch.use_deterministic_algorithms(deterministic_before)


# -- the model card ----------------------------------------------------------------------------

def objective_text(cfg: PretrainConfig) -> str:
    parts = [f"{cfg.albedo_weight} x albedo L1 (the benchmark's HRNet head on the four encoder features)",
             f"{cfg.label_weight} x image-level scene-property classification (primitive kinds, object families, "
             "object count, palette, sun position)"]
    if cfg.head == "linear":
        parts[0] = parts[0].replace("the benchmark's HRNet head",
                                    "a linear head (the decoder's reducers and a 1x1 conv)")
    if cfg.shading_weight > 0:
        parts.insert(1, f"{cfg.shading_weight} x shading L1 (same head)")
    if cfg.recon_weight > 0:
        parts.insert(1, f"{cfg.recon_weight} x RGB reconstruction L1 (same head)")
    if cfg.height_weight > 0:
        parts.insert(1, f"{cfg.height_weight} x height-above-ground L1 (same head)")
    if cfg.group_weight > 0:
        parts.insert(1, f"{cfg.group_weight} x supervised-contrastive object grouping of the feature-grid cells "
                        f"({cfg.group_dim}-d linear embedding, temperature {cfg.group_temperature})")
    if cfg.mask_ratio > 0:
        parts.insert(0, f"SimMIM masked-image modelling ({cfg.mask_ratio:.0%} of {cfg.mask_patch}-px squares)")
    return " + ".join(parts)


#: The loss terms a card's loss curve records (terms whose weight is 0 stay 0).
LOSS_TERMS = ("loss", "mim", "albedo", "shading", "recon", "height", "group", "labels")

#: The setting that switches each optional loss term on (the term is drawn only where it is > 0).
TERM_WEIGHTS = {"mim": "mask_ratio", "shading": "shading_weight", "recon": "recon_weight",
                "height": "height_weight", "group": "group_weight"}


def card_entry(record: dict[str, Any], curve_every: int = 25, first: int = 20) -> dict[str, Any]:
    """The card.json entry of a completed pretraining run (its log record)."""
    cfg = PretrainConfig(**record["config"])
    history = record["history"]
    return {
        "file": f"{cfg.backbone}.safetensors",
        "sha256": record["sha256"],
        "stored_dtype": cfg.store_dtype,
        "backbone": cfg.backbone,
        "image_size": record["image_size"],
        "pretrain_config": record["config"],
        "objective": objective_text(cfg),
        "corpus": record["corpus"],
        "command": record["command"],
        "train_seconds": record["train_seconds"],
        "environment": record["environment"],
        "first_losses": [h["loss"] for h in history[:first]],
        "loss_curve_columns": ["step", *LOSS_TERMS],
        "loss_curve": [[h["step"], *(round(h.get(k, 0.0), 5) for k in LOSS_TERMS)]
                       for h in history if h["step"] % curve_every == 0 or h["step"] == 1],
    }


def compare_first_losses(history: list[dict[str, Any]], expected: list[float], rtol: float = 1e-4) -> dict[str, Any]:
    """Compare a run's first losses with a card's: ``{"steps", "max_rel_diff", "match"}``."""
    n = min(len(history), len(expected))
    diffs = [abs(history[i]["loss"] - expected[i]) / max(abs(expected[i]), 1e-12) for i in range(n)]
    worst = max(diffs, default=float("nan"))
    return {"steps": n, "max_rel_diff": worst, "match": n > 0 and worst <= rtol}
