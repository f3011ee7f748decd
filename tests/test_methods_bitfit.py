"""``bitfit``: only the backbone's biases train, by formula on Swin-T; ``full`` for comparison."""

from __future__ import annotations

import pytest

from helpers import micro_backbone
from helpers.baseline import DECODER, SUM_BC, SWIN_T_C, swin_t_model, trainable
from mtpeft_bench.errors import UserError
from mtpeft_bench.registry import get_method
from mtpeft_bench.tasks.base import config_from_mapping

LINEAR_BIASES = 9 * SUM_BC  # qkv 3C + proj C + fc1 4C + fc2 C per block
BLOCK_NORM_BIASES = 2 * SUM_BC  # norm1, norm2
MERGE_NORM_BIASES = sum(4 * c for c in SWIN_T_C[:3])  # PatchMerging LayerNorm over 4C
PATCH_EMBED = SWIN_T_C[0]  # conv bias (and as many for its LayerNorm's bias)


def test_bitfit_count_on_swin_t():
    _, groups, summary = swin_t_model("bitfit")
    expected = LINEAR_BIASES + BLOCK_NORM_BIASES + MERGE_NORM_BIASES + 2 * PATCH_EMBED
    assert expected == 51_456
    assert summary["encoder_trainable"] == expected
    counts = trainable(groups)
    assert counts["method"] == 0 and counts["rel_pos"] == 0 and counts["reductions"] == 0
    assert counts["linears"] == LINEAR_BIASES
    assert summary["total_trainable"] == expected + DECODER


def test_bitfit_without_norm_biases():
    _, groups, summary = swin_t_model("bitfit", norm_biases=False)
    assert summary["encoder_trainable"] == LINEAR_BIASES + PATCH_EMBED
    assert trainable(groups)["norms"] == 0


def test_only_bias_parameters_train():
    encoder = get_method("bitfit")().build(micro_backbone(), ["a"], get_method("bitfit").Config())
    names = [n for n, p in encoder.named_parameters() if p.requires_grad]
    assert names and all(n.endswith(".bias") for n in names)
    assert "backbone.patch_embed.norm.bias" in names and "backbone.layers.0.blocks.0.attn.qkv.bias" in names
    assert not any(n.endswith(".weight") for n, p in encoder.named_parameters() if p.requires_grad)


def test_full_fine_tuning_count_on_swin_t():
    _, _, summary = swin_t_model("full")
    assert summary["total_trainable"] == 29_464_442


def test_invalid_option_is_a_one_line_error():
    with pytest.raises(UserError) as info:
        config_from_mapping(get_method("bitfit").Config, {"norm_biases": "no"}, "bitfit method")
    assert "norm_biases must be true or false" in str(info.value)
