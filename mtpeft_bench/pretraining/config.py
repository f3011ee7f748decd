"""The settings of a pretraining run: which backbone, the schedule, the objective's weights, the corpus."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from mtpeft_bench.errors import UserError


#: Backbone configurations that can be pretrained: name -> (backbone alias, pretraining image size).
SETUPS: dict[str, tuple[str, tuple[int, int]]] = {
    "micro": ("swin_micro", (64, 64)),  # the smoke preset's backbone and size
    "mini": ("swin_mini", (64, 64)),  # the cpu preset's backbone (it runs at 96x128: timm resizes the last stage's bias table)
}


#: Dense pretraining heads: ``hrnet`` (the benchmark's decoder) or ``linear`` (its reducers and a 1x1 conv, no hidden layer).
HEADS = ("hrnet", "linear")


def dense_layout(shading: bool, height: bool, recon: bool) -> dict[str, int]:
    """Channels of the dense head's outputs, in the order they are stacked: albedo (3), shading (1),
    height above the ground (1), RGB reconstruction (3); an output that is off has 0 channels."""
    return {"albedo": 3, "shading": int(shading), "height": int(height), "recon": 3 * int(recon)}


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
        corpus_images, corpus_seed: the corpus (:class:`~mtpeft_bench.pretraining.corpus.CorpusConfig`).
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

    @property
    def dense_layout(self) -> dict[str, int]:
        """The dense head's outputs that this objective trains (:func:`dense_layout`)."""
        return dense_layout(self.shading_weight > 0, self.height_weight > 0, self.recon_weight > 0)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
