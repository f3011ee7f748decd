"""``lora``: peft's LoRA on the 48 block linears, its scale, its parameter count and the extras switch."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from helpers import micro_backbone
from helpers.baseline import EXTRAS, SUM_BC, reference_features, swin_t_model, trainable
from mtpeft_bench.errors import UserError
from mtpeft_bench.registry import get_method
from mtpeft_bench.tasks.base import config_from_mapping


def build_micro(**options):
    """``(encoder, original parameters by name, an untouched copy of the backbone)``."""
    torch.manual_seed(0)
    cls = get_method("lora")
    backbone = micro_backbone()
    pristine = copy.deepcopy(backbone)
    original = {name: p for name, p in backbone.named_parameters()}
    encoder = cls().build(backbone, ["a", "b"], config_from_mapping(cls.Config, options, "lora method"))
    return encoder, original, pristine


def test_lora_rank4_on_swin_t_is_its_own_group_of_282624():
    _, groups, summary = swin_t_model("lora", r=4)
    # One LoRA pair per block linear: r·(in + out) with qkv C→3C, proj C→C, fc1 C→4C, fc2 4C→C.
    per_block = 4 * ((1 + 3) + (1 + 1) + (1 + 4) + (4 + 1))
    assert per_block * SUM_BC == 282_624
    assert groups["method"]["trainable"] == groups["method"]["total"] == 282_624
    counts = trainable(groups)
    assert counts["linears"] == 0  # frozen weights and biases
    assert counts["patch_embed"] + counts["norms"] + counts["rel_pos"] + counts["reductions"] == EXTRAS
    assert summary["encoder_trainable"] == 282_624 + EXTRAS


def test_extras_switch_and_dora_count_on_swin_t():
    _, groups, _ = swin_t_model("lora", r=8, train_extras=False, use_dora=True)
    counts = trainable(groups)
    assert counts["patch_embed"] == counts["norms"] == counts["rel_pos"] == counts["reductions"] == 0
    # DoRA adds one magnitude per output channel: 3C + C + 4C + C per block.
    assert counts["method"] == 8 * 16 * SUM_BC + 9 * SUM_BC


def test_targets_are_the_block_linears_only():
    from peft.tuners.lora import LoraLayer

    encoder, _, _ = build_micro()
    adapted = sorted(n for n, m in encoder.backbone.named_modules() if isinstance(m, LoraLayer))
    micro_blocks = 1 + 1 + 2 + 1
    assert len(adapted) == 4 * micro_blocks
    assert all(n.rsplit(".", 2)[-2:] in (["attn", "qkv"], ["attn", "proj"], ["mlp", "fc1"], ["mlp", "fc2"])
               for n in adapted)
    assert isinstance(encoder.backbone.patch_embed.proj, nn.Conv2d)  # the conv is not caught by "proj"
    assert isinstance(encoder.backbone.layers[1].downsample.reduction, nn.Linear)


def test_base_parameters_keep_their_identity_and_stay_frozen():
    encoder, original, _ = build_micro()
    now = {id(p) for p in encoder.parameters()}
    assert all(id(p) in now for p in original.values())  # peft wraps, it does not copy
    for name, p in original.items():
        expected = not name.endswith(("qkv.weight", "qkv.bias", "proj.weight", "proj.bias", "fc1.weight", "fc1.bias",
                                      "fc2.weight", "fc2.bias")) or name.startswith("patch_embed")
        assert p.requires_grad == expected, name


def test_default_scale_is_four_and_init_is_the_frozen_function():
    encoder, _, pristine = build_micro(lora_dropout=0.0)
    encoder.eval()
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        feats = encoder(images)
    # B = 0 at the start: the features are the pretrained backbone's (computed by timm's forward).
    with torch.no_grad():
        expected = reference_features(pristine.eval(), images)
    for got, want in zip(feats["a"], expected):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    layer = encoder.backbone.layers[0].blocks[0].mlp.fc1
    a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    with torch.no_grad():
        b.normal_()
        x = torch.randn(3, layer.in_features)
        want = layer.base_layer(x) + 4.0 * (x @ a.T @ b.T)  # alpha = 4·r ⇒ scale 4 (MTLoRA's)
        torch.testing.assert_close(layer(x), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("options, message", [
    ({"r": 0}, "r must be a positive integer"),
    ({"r": 2.5}, "r must be a positive integer"),
    ({"lora_alpha": -1}, "lora_alpha must be a positive number"),
    ({"lora_dropout": 1.0}, "lora_dropout must be in [0, 1)"),
    ({"use_dora": "yes"}, "use_dora must be true or false"),
    ({"train_extras": 1}, "train_extras must be true or false"),
    ({"rank": 4}, "unknown lora method option 'rank'"),
])
def test_invalid_options_are_one_line_errors(options, message):
    with pytest.raises(UserError) as info:
        config_from_mapping(get_method("lora").Config, options, "lora method")
    assert message in str(info.value) and "\n" not in str(info.value)


def test_a_scheme_peft_cannot_apply_is_a_one_line_error():
    cls = get_method("lora")
    cfg = config_from_mapping(cls.Config, {"target_modules": r".*\.nothing$"}, "lora method")
    with pytest.raises(UserError) as info:
        cls().build(micro_backbone(), ["a"], cfg)
    assert "peft could not apply LORA" in str(info.value) and "\n" not in str(info.value)
