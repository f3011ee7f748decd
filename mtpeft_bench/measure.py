"""Measurements taken the same way for every method: parameter groups, memory, time.

Parameter groups (how the papers' counts decompose, PROTOCOL.md 5.3 and DITASK.md 4.2):

- ``method``: parameters the method added to the backbone (LoRA factors, θ of DiTASK, adapters),
  found by identity: they are not among the backbone's parameters before ``Method.build``;
- the backbone's own parameters by kind: ``patch_embed`` (conv + its LayerNorm), ``norms``
  (block and PatchMerging LayerNorms), ``rel_pos`` (relative-position bias tables),
  ``reductions`` (PatchMerging linear reductions) and ``linears`` (qkv/proj/fc1/fc2 weights and
  biases); the first four are the "extras" that MTLoRA and DiTASK train;
- ``decoder``: the per-task heads.
"""

from __future__ import annotations

import resource
import sys
import time
from contextlib import contextmanager
from typing import Any, Iterator

import torch
from torch import nn


BACKBONE_KINDS = ("patch_embed", "norms", "rel_pos", "reductions", "linears")
GROUPS = ("method", *BACKBONE_KINDS, "decoder")


def backbone_param_kind(name: str) -> str:
    """Kind of a backbone parameter from its name (relative to the backbone or any prefix)."""
    parts = name.split(".")
    if "relative_position_bias_table" in parts:
        return "rel_pos"
    if "patch_embed" in parts:
        return "patch_embed"
    if "reduction" in parts and "downsample" in parts:
        return "reductions"
    if any(p.startswith("norm") for p in parts[:-1]):
        return "norms"
    return "linears"


def parameter_groups(model: nn.Module, backbone_param_ids: set[int]) -> dict[str, dict[str, int]]:
    """Count parameters by group.

    Args:
        model: a :class:`~mtpeft_bench.model.MultiTaskModel`.
        backbone_param_ids: ids of the backbone's parameters before the method built the encoder.

    Returns:
        ``{group: {"trainable": n, "total": n}}`` for every group in :data:`GROUPS`; shared
        parameters are counted once.
    """
    counts = {g: {"trainable": 0, "total": 0} for g in GROUPS}
    seen: set[int] = set()
    for prefix, module in (("encoder", model.encoder), ("heads", model.heads)):
        for name, param in module.named_parameters():
            if id(param) in seen:
                continue
            seen.add(id(param))
            if prefix == "heads":
                group = "decoder"
            elif id(param) in backbone_param_ids:
                group = backbone_param_kind(name)
            else:
                group = "method"
            counts[group]["total"] += param.numel()
            if param.requires_grad:
                counts[group]["trainable"] += param.numel()
    return counts


def parameter_summary(groups: dict[str, dict[str, int]]) -> dict[str, int]:
    """The headline numbers papers quote, derived from :func:`parameter_groups`."""
    trainable = {g: c["trainable"] for g, c in groups.items()}
    extras = sum(trainable[g] for g in ("patch_embed", "norms", "rel_pos", "reductions"))
    encoder = trainable["method"] + extras + trainable["linears"]
    return {
        "method": trainable["method"],
        "backbone_trainable": extras + trainable["linears"],
        "extras_trainable": extras,
        "encoder_trainable": encoder,
        "decoder": trainable["decoder"],
        "total_trainable": encoder + trainable["decoder"],
        "total": sum(c["total"] for c in groups.values()),
    }


def peak_memory_mb(device: torch.device) -> tuple[float, str]:
    """Peak memory so far and how it was measured.

    CUDA: ``torch.cuda.max_memory_allocated`` (tensors only, reset by :func:`reset_peak_memory`);
    CPU: the peak resident set size of the whole process (``getrusage``), which includes Python,
    libraries and the data loader and can only grow.
    """
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "cuda_max_allocated"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes.
    return (rss / 2**20 if sys.platform == "darwin" else rss / 2**10), "cpu_peak_rss"


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Throughput:
    """Images per second over timed sections, skipping the first ``warmup`` sections.

    Only the model's compute is timed (the caller wraps forward/backward/step in :meth:`time`),
    with CUDA synchronised at both ends, so data loading does not blur the comparison of methods.
    """

    def __init__(self, device: torch.device, warmup: int = 5):
        self.device = device
        self.warmup = warmup
        self.sections = 0
        self.images = 0
        self.seconds = 0.0

    @contextmanager
    def time(self, images: int) -> Iterator[None]:
        synchronize(self.device)
        start = time.perf_counter()
        yield
        synchronize(self.device)
        elapsed = time.perf_counter() - start
        self.sections += 1
        if self.sections > self.warmup:
            self.images += images
            self.seconds += elapsed

    @property
    def last_rate(self) -> float | None:
        return self.images / self.seconds if self.seconds > 0 else None

    def result(self) -> dict[str, Any]:
        return {"images_per_s": self.last_rate, "timed_images": self.images, "warmup_sections": self.warmup}
