"""``adapter``: Houlsby bottlenecks after the attention and the MLP of every block."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from helpers import micro_backbone
from helpers.baseline import EXTRAS, SUM_BC, SWIN_T_BLOCKS, reference_features, swin_t_model, trainable
from mtpeft_bench.errors import UserError
from mtpeft_bench.registry import get_method
from mtpeft_bench.tasks.base import config_from_mapping


def config(**options):
    return config_from_mapping(get_method("adapter").Config, options, "adapter method")


@pytest.mark.parametrize("width", [16, 64])
def test_count_on_swin_t(width):
    _, groups, summary = swin_t_model("adapter", bottleneck=width)
    # Two adapters per block, each C→m (+m bias) and m→C (+C bias).
    expected = 2 * (2 * SUM_BC * width + sum(SWIN_T_BLOCKS) * width + SUM_BC)
    assert expected == 17_688 * width + 8_832
    assert groups["method"]["trainable"] == groups["method"]["total"] == expected
    counts = trainable(groups)
    assert counts["linears"] == 0
    assert summary["extras_trainable"] == EXTRAS


def test_extras_switch():
    _, groups, _ = swin_t_model("adapter", bottleneck=8, train_extras=False)
    counts = trainable(groups)
    assert counts["patch_embed"] == counts["norms"] == counts["rel_pos"] == counts["reductions"] == 0


def test_placement_and_identity_at_init():
    torch.manual_seed(0)
    backbone = micro_backbone()
    pristine = copy.deepcopy(backbone).eval()
    encoder = get_method("adapter")().build(backbone, ["a", "b"], config(bottleneck=8)).eval()
    blocks = [b for stage in encoder.backbone.layers for b in stage.blocks]
    assert all(type(b.attn.proj).__name__ == "WithAdapter" and type(b.mlp.fc2).__name__ == "WithAdapter"
               for b in blocks)
    assert all(type(b.attn.qkv).__name__ == "Linear" and type(b.mlp.fc1).__name__ == "Linear" for b in blocks)
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        feats = encoder(images)
        expected = reference_features(pristine, images)
    for got, want in zip(feats["a"], expected):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    wrapped = blocks[0].mlp.fc2
    with torch.no_grad():
        wrapped.adapter.up.weight.normal_()
        x = torch.randn(3, wrapped.in_features)
        h = wrapped.layer(x)
        a = wrapped.adapter
        torch.testing.assert_close(wrapped(x), h + a.up(F.gelu(a.down(h))), rtol=1e-6, atol=1e-6)
        assert not torch.allclose(wrapped(x), h)


@pytest.mark.parametrize("options, message", [
    ({"bottleneck": 0}, "bottleneck must be a positive integer"),
    ({"bottleneck": "wide"}, "bottleneck must be a positive integer"),
    ({"train_extras": "no"}, "train_extras must be true or false"),
    ({"width": 8}, "unknown adapter method option 'width'"),
])
def test_invalid_options_are_one_line_errors(options, message):
    with pytest.raises(UserError) as info:
        config(**options)
    assert message in str(info.value) and "\n" not in str(info.value)
