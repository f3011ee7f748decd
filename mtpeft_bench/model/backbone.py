"""The Swin backbone: creation from timm, weight loading and provenance.

The backbone is timm's stock ``SwinTransformer`` (never a fork) with its classifier head and final
norm removed, so its parameters are exactly the features-only model's (27,517,818 for Swin-T).
Stage ``i`` of timm starts with the PatchMerging of the previous stage (the original Swin code,
which MTLoRA and DiTASK forked, keeps it at the end of the stage); the encoder accounts for that.

Weights (``--weights``):

- ``none``: timm's random initialisation;
- ``timm``: the pretrained weights of the timm model name from the Hugging Face hub
  (``swin_tiny_patch4_window7_224`` is the ImageNet-1k checkpoint; append a tag such as
  ``.ms_in22k`` to the backbone name for another);
- ``builtin``: the small backbones mtbench pretrained itself; :mod:`mtpeft_bench.model.builtin_weights`
  finds the shipped file and checks it against the model card, this module loads it;
- a path to ``.safetensors``, ``.pth`` or ``.pt``: a timm state dict or an original Microsoft
  Swin checkpoint (``{"model": ...}``), converted by :func:`convert_swin_state` (timm's own
  resampling helpers). Pickles are loaded with ``weights_only=True``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mtpeft_bench.digest import sha256_of
from mtpeft_bench.errors import UserError
from mtpeft_bench.model import builtin_weights, hub


# Small Swin configurations for CPU runs; none of them has hub weights (mtbench ships its own: --weights builtin).
BACKBONE_ALIASES: dict[str, tuple[str, dict[str, Any]]] = {
    "swin_micro": (
        "swin_tiny_patch4_window7_224",
        dict(embed_dim=32, depths=(1, 1, 2, 1), num_heads=(1, 2, 4, 8), window_size=4),
    ),
    # Swin-T's depths at a third of its width (3.07 M parameters): the `cpu` preset's backbone.
    "swin_mini": (
        "swin_tiny_patch4_window7_224",
        dict(embed_dim=32, depths=(2, 2, 6, 2), num_heads=(1, 2, 4, 8), window_size=4),
    ),
}

WEIGHT_KINDS = ("none", "timm", "builtin")


def _timm_swin(name: str, img_size: tuple[int, int], drop_path_rate: float, pretrained: bool,
               pretrained_file: Path | None = None) -> nn.Module:
    import timm
    from timm.models.swin_transformer import SwinTransformer

    arch, overrides = BACKBONE_ALIASES.get(name, (name, {}))
    base = arch.split(".")[0]
    if timm.is_model(base) and not timm.models.model_entrypoint(base).__module__.endswith(".swin_transformer"):
        raise UserError(f"backbone '{name}' is not a timm SwinTransformer; mtbench adapts Swin (v1) backbones only")
    if pretrained_file is not None:  # the hub's file from the local cache: no network, no retries
        overrides = {**overrides, "pretrained_cfg_overlay": dict(file=str(pretrained_file))}
    try:
        model = timm.create_model(
            arch, pretrained=pretrained, num_classes=0, img_size=img_size, drop_path_rate=drop_path_rate, **overrides
        )
    except RuntimeError as exc:
        if "Unknown model" in str(exc) or "Invalid pretrained tag" in str(exc):
            raise UserError(f"unknown backbone '{name}': give a timm Swin name such as swin_tiny_patch4_window7_224 "
                            f"or one of {', '.join(BACKBONE_ALIASES)}") from None
        raise
    if not isinstance(model, SwinTransformer):
        raise UserError(f"backbone '{name}' is a {type(model).__name__}, not a timm SwinTransformer; "
                        "mtbench adapts Swin (v1) backbones only")
    return model


def _strip_classifier(model: nn.Module) -> nn.Module:
    # The dense-prediction encoder uses the four stage outputs; the final norm and the classifier
    # are never used, so they go (the parameter count then equals timm's features_only model).
    model.head = nn.Identity()
    model.norm = nn.Identity()
    return model


def load_state_dict_file(path: Path) -> dict[str, torch.Tensor]:
    """Read a checkpoint without unpickling arbitrary objects.

    Raises:
        UserError: the file is missing or not a loadable checkpoint.
    """
    if not path.is_file():
        raise UserError(f"weights file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure to read is the file's fault
        if "weights_only" in str(exc) or "Weights only load failed" in str(exc):
            # torch's message advises weights_only=False, i.e. running the file's code: not ours to give
            raise UserError(f"cannot read weights from {path}: it holds Python objects besides tensors, which "
                            "mtbench never unpickles; save a plain state dict (torch.save(model.state_dict(), ...)) "
                            "or a .safetensors file") from None
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"cannot read weights from {path}: {first}") from None
    if not isinstance(state, dict):
        raise UserError(f"{path} holds a {type(state).__name__}, not a state dict")
    return state


def convert_swin_state(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """A Swin state dict in timm's layout for ``model``: original (Microsoft) or timm checkpoints.

    What timm's ``checkpoint_filter_fn`` does, with a detection that does not depend on the timm
    version: the original code merges patches at the END of a stage (so stage 0 has a
    ``layers.0.downsample``), timm at the start (stage 0 has none); up to timm 1.0.30 at least the filter
    took any checkpoint without ``head.fc.weight`` for an original one, so it shifted the merging
    layers of headless timm-layout files (such as mtbench's built-in weights) by one stage.
    Patch embeddings and relative-position tables of another size are resampled with timm's helpers;
    the non-persistent buffers (``relative_position_index``, ``attn_mask``) are dropped.
    """
    import re

    from timm.layers import resample_patch_embed, resize_rel_pos_bias_table

    state = state.get("model", state)
    state = state.get("state_dict", state)
    original = "layers.0.downsample.reduction.weight" in state
    out = {}
    for key, value in state.items():
        if "relative_position_index" in key or "attn_mask" in key:
            continue
        if key == "patch_embed.proj.weight":
            h, w = model.patch_embed.proj.weight.shape[-2:]
            if tuple(value.shape[-2:]) != (h, w):
                value = resample_patch_embed(value, (h, w), interpolation="bicubic", antialias=True, verbose=False)
        if key.endswith("relative_position_bias_table"):
            try:
                attn = model.get_submodule(key[:-len(".relative_position_bias_table")])
            except AttributeError:  # a block this model lacks: the key check of the caller names it
                attn = None
            if attn is not None and value.shape != attn.relative_position_bias_table.shape:
                value = resize_rel_pos_bias_table(value, new_window_size=attn.window_size,
                                                  new_bias_shape=attn.relative_position_bias_table.shape)
        if original:
            key = re.sub(r"layers\.(\d+)\.downsample", lambda m: f"layers.{int(m.group(1)) + 1}.downsample", key)
            if key.startswith("head.") and not key.startswith("head.fc."):
                key = "head.fc." + key[len("head."):]
        out[key] = value
    return out


def _load_file_weights(model: nn.Module, path: Path, name: str) -> None:
    state = load_state_dict_file(path)
    try:
        state = convert_swin_state(state, model)
    except (AttributeError, KeyError, RuntimeError, ValueError) as exc:
        raise UserError(f"{path} does not fit this Swin backbone ('{name}'): {exc}") from None
    # Drop the classifier and the final norm (both removed from the encoder).
    state = {k: v for k, v in state.items() if not (k.startswith("head.") or k.startswith("norm."))}
    expected = {k for k in model.state_dict()}
    missing = sorted(expected - set(state))
    unexpected = sorted(set(state) - expected)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key{'s' * (len(missing) > 1)} (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key{'s' * (len(unexpected) > 1)} (e.g. {unexpected[0]})")
        raise UserError(f"{path} holds another model's weights and does not fit this backbone ('{name}'): "
                        f"{', '.join(parts)}")
    shapes = [k for k, v in state.items() if tuple(v.shape) != tuple(model.state_dict()[k].shape)]
    if shapes:
        raise UserError(f"{path} holds another model's weights and does not fit this backbone ('{name}'): "
                        f"the shape of {shapes[0]} differs")
    model.load_state_dict(state, strict=True)


def _load_builtin_weights(model: nn.Module, path: Path, name: str) -> None:
    """Load the shipped weights of backbone ``name`` (float16 on disk) into ``model`` as float32.

    The tensors go through :func:`convert_swin_state`, which resizes the relative-position bias
    tables when the image size clamps the windows differently from the pretraining size.

    Raises:
        UserError: the model does not fit the weights.
    """
    from safetensors.torch import load_file

    state = {k: v.to(torch.float32) for k, v in load_file(str(path)).items()}
    state = convert_swin_state(state, model)
    result = model.load_state_dict(state, strict=False)
    # The shipped file holds the encoder only: the final norm and classifier are never used.
    missing = [k for k in result.missing_keys if not k.startswith(("norm.", "head."))]
    if missing or result.unexpected_keys:
        raise UserError(f"the built-in weights of '{name}' do not fit this model "
                        f"({len(missing)} missing, {len(result.unexpected_keys)} unexpected keys)")


def check_weights(name: str, weights: str) -> Any:
    """The checks of ``--backbone`` and ``--weights`` that need neither a model nor the network
    (except a one-second look at the hub for ``timm``): a run makes them before any slow work.

    Returns:
        What the checks found, for :func:`create_backbone`: for ``timm`` the file in the local hub
        cache to load instead of asking the hub (or None), for ``builtin`` ``(path, provenance)``,
        for a path the file, for ``none`` None.

    Raises:
        UserError: an unknown backbone, weights it cannot have, a missing weights file, or (``timm``)
            an offline or unreachable hub without the weights in the local cache.
    """
    import timm

    arch = BACKBONE_ALIASES.get(name, (name, {}))[0]
    if not timm.is_model(arch.split(".")[0]):
        raise UserError(f"unknown backbone '{name}': give a timm Swin name such as swin_tiny_patch4_window7_224 "
                        f"or one of {', '.join(BACKBONE_ALIASES)}")
    if weights == "timm":
        if name in BACKBONE_ALIASES:
            raise UserError(f"backbone '{name}' has no pretrained weights on the hub; use --weights builtin, "
                            "--weights none or --weights PATH")
        return hub.local_pretrained_file(name)
    if weights == "builtin":
        return builtin_weights.verified_file(name)
    if weights != "none":
        path = Path(os.path.expanduser(weights))
        if not path.exists():
            raise UserError(f"--weights takes {', '.join(WEIGHT_KINDS)} or the path of a checkpoint file; "
                            f"there is no file at '{weights}'")
        if path.is_dir():
            raise UserError(f"--weights {weights} is a folder; give the checkpoint file in it "
                            "(.safetensors, .pth or .pt)")
        return path
    return None


def create_backbone(name: str, img_size: tuple[int, int], weights: str = "none",
                    drop_path_rate: float = 0.0) -> tuple[nn.Module, dict[str, Any]]:
    """Create the timm Swin backbone and load its weights.

    Args:
        name: a timm Swin model name (optionally with a pretrained tag) or a key of
            :data:`BACKBONE_ALIASES`.
        img_size: (H, W) of the input images.
        weights: ``none``, ``timm``, ``builtin`` or a path to a checkpoint file.
        drop_path_rate: stochastic depth rate (0.2 in the paper recipe).

    Returns:
        ``(backbone, provenance)``; ``provenance`` says where the weights came from and is stored
        in the result file.

    Raises:
        UserError: unknown name, weights that cannot be had, or a checkpoint that does not fit.
    """
    found = check_weights(name, weights)
    if weights == "timm":
        try:
            model = _timm_swin(name, img_size, drop_path_rate, pretrained=True, pretrained_file=found)
        except UserError:
            raise
        except Exception as exc:  # noqa: BLE001 - hub errors come in many types
            reason = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
            raise UserError(f"cannot get pretrained weights for '{name}' from the Hugging Face hub ({reason}); "
                            "without network use --weights PATH (a local checkpoint) or --weights none") from None
        cfg = getattr(model, "pretrained_cfg", {}) or {}
        provenance = {"source": "timm", "id": cfg.get("hf_hub_id") or cfg.get("url") or name,
                      "tag": cfg.get("tag")}
    elif weights == "none":
        model = _timm_swin(name, img_size, drop_path_rate, pretrained=False)
        provenance = {"source": "none", "id": None, "note": "random initialisation (timm's init)"}
    elif weights == "builtin":
        model = _timm_swin(name, img_size, drop_path_rate, pretrained=False)
        path, provenance = found
        _load_builtin_weights(model, path, name)
    else:
        path = found
        model = _strip_classifier(_timm_swin(name, img_size, drop_path_rate, pretrained=False))
        _load_file_weights(model, path, name)
        provenance = {"source": "file", "id": str(path.resolve()), "sha256": sha256_of(path)}
    return _strip_classifier(model), provenance


def stage_channels(backbone: nn.Module) -> list[int]:
    """Channels of the four stage outputs (B, H, W, C) of a timm Swin, e.g. [96, 192, 384, 768]."""
    return [int(info["num_chs"]) for info in backbone.feature_info]


def feature_channels(backbone: nn.Module) -> list[int]:
    """Channels of the encoder's four features (docs/protocol.md 4.1): stages 1-3 after the next
    stage's PatchMerging, stage 4 as is — [192, 384, 768, 768] for Swin-T."""
    stages = stage_channels(backbone)
    merged = [int(stage.downsample.reduction.out_features) for stage in list(backbone.layers)[1:]]
    return [*merged, stages[-1]]
