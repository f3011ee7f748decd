"""Speed switches of a run: fused attention, channels-last memory order, torch.compile.

Each is a setting of :class:`~mtpeft_bench.config.RunConfig` (off by default; the ``paper`` preset
turns fused attention on), recorded with every result and part of the run's identity when on,
since none of them computes bit for bit what the eager fp32 path computes: the tests check each
against that path on the CPU (the same losses to a tolerance over a few steps).

- ``fused_attention``: timm's ``WindowAttention`` has a fused path (one
  ``scaled_dot_product_attention`` call with the relative-position bias and the shift mask as its
  additive mask) that timm leaves off for Swin by default; this switches it on in every window
  attention of the model. Methods that compute their own attention (TADFormer's task prompts,
  VPT's prompt tokens) call ``scaled_dot_product_attention`` already.
- ``channels_last``: the model's parameters and each input image batch (B, 3, H, W) in NHWC order,
  so the convolutions (patch embedding, decoders) take the layouts cuDNN prefers.
- ``compile``: ``nn.Module.compile`` (torch.compile in place, so checkpoints and state dicts keep
  their parameter names) with ``compile_mode``; ``reduce-overhead`` replays CUDA graphs, which
  needs fixed shapes (training batches are; evaluation at original image sizes recompiles).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

#: The compiler backend of ``compile`` (tests swap in a cheaper one; ``mode`` is inductor's).
COMPILE_BACKEND = "inductor"


def use_fused_attention(model: nn.Module) -> int:
    """Switch timm's window attention to its fused path everywhere in ``model``.

    Returns:
        How many attention modules were switched (0 when the model has no timm window attention).
    """
    switched = 0
    for module in model.modules():
        if hasattr(module, "fused_attn") and hasattr(module, "relative_position_bias_table"):
            module.fused_attn = True
            switched += 1
    return switched


def _images_channels_last(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
    images, *rest = args
    return (images.contiguous(memory_format=torch.channels_last), *rest)


def use_channels_last(model: nn.Module) -> None:
    """Convert ``model``'s 4-D parameters to NHWC and make its forward take (B, 3, H, W) images in NHWC."""
    model.to(memory_format=torch.channels_last)
    model.register_forward_pre_hook(_images_channels_last)


def compile_in_place(model: nn.Module, mode: str = "default") -> None:
    """``torch.compile`` ``model``'s forward in place (``nn.Module.compile``) with ``mode``."""
    options: dict[str, Any] = {"backend": COMPILE_BACKEND}
    if COMPILE_BACKEND == "inductor":
        options["mode"] = mode
    model.compile(**options)


def apply_speed_switches(model: nn.Module, cfg: Any) -> dict[str, Any]:
    """Apply the run configuration's speed switches to the bare model (before any DDP wrapper).

    Returns:
        What was applied, for the result record (``{"fused_attention_modules": n, ...}``).
    """
    applied: dict[str, Any] = {}
    if cfg.fused_attention:
        applied["fused_attention_modules"] = use_fused_attention(model)
    if cfg.channels_last:
        use_channels_last(model)
        applied["channels_last"] = True
    if cfg.compile:
        compile_in_place(model, cfg.compile_mode)
        applied["compiled"] = {"backend": COMPILE_BACKEND, "mode": cfg.compile_mode}
    return applied
