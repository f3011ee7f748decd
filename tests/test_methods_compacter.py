"""``compacter`` / ``compacter_pp``: the PHM weight is a sum of Kronecker products (by hand and
against torch.kron), one shared rule, the placements, and the counts on Swin-T by formula."""

from __future__ import annotations

import json

import pytest
import torch

from helpers import micro_backbone, run_cli
from helpers.baseline import DECODER, SWIN_T_BLOCKS, SWIN_T_C, swin_t_model, trainable
from mtpeft_bench.errors import UserError
from mtpeft_bench.registry import get_method
from mtpeft_bench.tasks.base import config_from_mapping

NORMS = 23_040  # block and PatchMerging LayerNorms of Swin-T (docs/protocol.md 5.3)
PATCH_EMBED_NORM = 2 * SWIN_T_C[0]
# C/32 rounded up to a multiple of n = 4: 96/32 = 3 → 4, 6 → 8, 12, 24.
WIDTHS = (4, 8, 12, 24)


def config(method="compacter", **options):
    return config_from_mapping(get_method(method).Config, options, f"{method} method")


def module():
    import mtpeft_bench.methods.compacter as compacter

    return compacter


# -- the PHM layer -------------------------------------------------------------------------------

def test_kronecker_sum_by_hand():
    # n = 2 with 1×1 factors: H = A_0·w_0 + A_1·w_1.
    rule = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[0.0, 1.0], [1.0, 0.0]]])
    factors = torch.tensor([[[2.0]], [[3.0]]])
    assert module().kronecker_sum(rule, factors).tolist() == [[2.0, 3.0], [3.0, 2.0]]
    # A single term with A = [[1, 2], [0, 1]] and W = [[1, -1]] (1×2): blocks A[a, b]·W.
    rule = torch.tensor([[[1.0, 2.0], [0.0, 1.0]]])
    factors = torch.tensor([[[1.0, -1.0]]])
    assert module().kronecker_sum(rule, factors).tolist() == [[1.0, -1.0, 2.0, -2.0], [0.0, 0.0, 1.0, -1.0]]


def test_phm_layer_is_a_sum_of_kronecker_products_of_rank_k_factors():
    torch.manual_seed(0)
    rule = module().new_rule(4)
    layer = module().PHMLinear(8, 12, n=4, rank=2, rule=rule)
    with torch.no_grad():
        rule.normal_()
        layer.bias.normal_()
    weight = sum(torch.kron(rule[i], layer.left[i] @ layer.right[i]) for i in range(4))
    assert weight.shape == (8, 12)
    x = torch.randn(5, 8)
    torch.testing.assert_close(layer(x), x @ weight + layer.bias, rtol=1e-5, atol=1e-5)
    assert layer.left.shape == (4, 2, 2) and layer.right.shape == (4, 2, 3)


def test_adapter_is_residual_with_tanh_gelu():
    torch.manual_seed(0)
    adapter = module().PHMAdapter(8, 4, n=4, rank=1, rule=module().new_rule(4))
    with torch.no_grad():
        adapter.down.rule.normal_()
    h = torch.randn(3, 8)
    down = h @ adapter.down.weight() + adapter.down.bias
    expected = h + torch.nn.functional.gelu(down, approximate="tanh") @ adapter.up.weight() + adapter.up.bias
    torch.testing.assert_close(adapter(h), expected, rtol=1e-5, atol=1e-6)


def test_widths_are_rounded_up_to_a_multiple_of_n():
    widths = [module().adapter_width(c, 32, 4) for c in SWIN_T_C]
    assert tuple(widths) == WIDTHS
    assert module().adapter_width(256, 16, 4) == 16 and module().adapter_width(32, 32, 4) == 4


# -- placement and sharing ---------------------------------------------------------------------

@pytest.mark.parametrize("method, after_attention", [("compacter", True), ("compacter_pp", False)])
def test_placement_and_one_shared_rule(method, after_attention):
    encoder = get_method(method)().build(micro_backbone(), ["a", "b"], config(method))
    blocks = [b for stage in encoder.backbone.layers for b in stage.blocks]
    assert all(type(b.mlp.fc2).__name__ == "WithPHMAdapter" for b in blocks)
    assert all((type(b.attn.proj).__name__ == "WithPHMAdapter") == after_attention for b in blocks)
    assert all(type(b.attn.qkv).__name__ == "Linear" and type(b.mlp.fc1).__name__ == "Linear" for b in blocks)
    layers = [m for m in encoder.modules() if type(m).__name__ == "PHMLinear"]
    assert len(layers) == 2 * len(blocks) * (2 if after_attention else 1)
    assert all(layer.rule is encoder.rule for layer in layers)
    loss = sum(f.square().mean() for f in encoder(torch.randn(2, 3, 64, 64))["a"])
    loss.backward()
    assert encoder.rule.grad is not None and encoder.rule.grad.abs().sum() > 0


def test_only_adapters_and_layer_norms_train():
    encoder = get_method("compacter")().build(micro_backbone(), ["a"], config())
    names = [n for n, p in encoder.named_parameters() if p.requires_grad]
    assert all(".adapter." in n or n == "rule" or ".norm" in n for n in names)
    assert "backbone.patch_embed.norm.weight" in names and "backbone.layers.1.downsample.norm.bias" in names
    assert not any(n.endswith(("qkv.weight", "reduction.weight", "relative_position_bias_table")) for n in names)


def test_runs_on_swin_mini():
    from mtpeft_bench.model.backbone import create_backbone

    backbone, _ = create_backbone("swin_mini", (64, 64), "none", 0.0)
    encoder = get_method("compacter")().build(backbone, ["a"], config())
    with torch.no_grad():
        feats = encoder(torch.randn(1, 3, 64, 64))["a"]
    assert [f.shape[1] for f in feats] == encoder.out_channels


# -- counts on Swin-T (448 px, the 4 PASCAL tasks) ---------------------------------------------

def adapters_count(per_block: int, rank: int = 1) -> int:
    # Per adapter: down s (C·k) + t (k·m) + bias m; up s (m·k) + t (k·C) + bias C.
    return sum(blocks * per_block * (2 * rank * (c + m) + c + m)
               for blocks, c, m in zip(SWIN_T_BLOCKS, SWIN_T_C, WIDTHS))


@pytest.mark.parametrize("method, per_block", [("compacter", 2), ("compacter_pp", 1)])
def test_counts_on_swin_t(method, per_block):
    _, groups, summary = swin_t_model(method)
    expected = adapters_count(per_block) + 4 ** 3
    assert groups["method"]["trainable"] == groups["method"]["total"] == expected
    counts = trainable(groups)
    assert counts["norms"] == NORMS and counts["patch_embed"] == PATCH_EMBED_NORM
    assert counts["linears"] == counts["rel_pos"] == counts["reductions"] == 0
    assert summary["total_trainable"] == expected + NORMS + PATCH_EMBED_NORM + DECODER


def test_count_switches_on_swin_t():
    _, groups, _ = swin_t_model("compacter", shared_rule=False, rank=2, train_norms=False)
    phm_layers = 2 * 2 * sum(SWIN_T_BLOCKS)  # two adapters per block, two PHM layers each
    assert groups["method"]["trainable"] == adapters_count(2, rank=2) + phm_layers * 4 ** 3
    counts = trainable(groups)
    assert counts["norms"] == counts["patch_embed"] == 0


@pytest.mark.parametrize("options, message", [
    ({"n": 0}, "n must be a positive integer"),
    ({"rank": 1.5}, "rank must be a positive integer"),
    ({"reduction_factor": "big"}, "reduction_factor must be a positive integer"),
    ({"shared_rule": "yes"}, "shared_rule must be true or false"),
    ({"bottleneck": 8}, "unknown compacter method option 'bottleneck'"),
])
def test_invalid_options_are_one_line_errors(options, message):
    with pytest.raises(UserError) as info:
        config("compacter", **options)
    assert message in str(info.value) and "\n" not in str(info.value)


TINY = ["--preset", "smoke", "--tasks", "semseg,depth", "--set", "data.num_train=8", "--set", "data.num_val=4",
        "--set", "batch_size=4", "--epochs", "1", "--no-progress"]


@pytest.mark.slow
@pytest.mark.parametrize("method", ["compacter", "compacter_pp"])
def test_smoke_run_on_synth(method, capsys, tmp_path):
    code, _, err = run_cli(["run", "--method", method, "--out", str(tmp_path), *TINY], capsys)
    assert code == 0, err
    (record,) = [json.loads(p.read_text()) for p in tmp_path.rglob("*.json")]
    assert record["status"] == "completed" and record["method"] == method
    assert record["method_info"]["after_attention"] == (method == "compacter")
