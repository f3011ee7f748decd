"""``tadformer``: the paper's and the release's parameter counts, the formulas of its parts on
hand-checkable cases (TPC, skip layouts, filter norm, dynamic and static filters, stage mix), one
task-adapting block against a by-hand reference, what trains and gets gradients, and runs on every
built-in Swin backbone."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
import torch.nn.functional as F

from helpers import micro_backbone, run_cli
from helpers.baseline import DECODER, EXTRAS, PASCAL_TASKS, REDUCTIONS, SUM_BC, SWIN_T_C, swin_t_model, trainable
from mtpeft_bench.errors import UserError
from mtpeft_bench.methods.tadformer.block import PromptedBlock, filtered_term, skip_windows, tpc_feature
from mtpeft_bench.methods.tadformer.encoder import mix_skip
from mtpeft_bench.methods.tadformer.filters import DynamicTaskFilter, StaticTaskFilter, filter_norm
from mtpeft_bench.registry import get_method
from mtpeft_bench.tasks.base import config_from_mapping


TASKS = ("a", "b", "c")
pytestmark = pytest.mark.usefixtures("one_thread")  # every test runs encoders: one torch thread (conftest)


def config(**options):
    return config_from_mapping(get_method("tadformer").Config, options, "tadformer method")


def build_micro(seed=0, tasks=TASKS, backbone=None, **options):
    torch.manual_seed(seed)
    return get_method("tadformer")().build(backbone or micro_backbone(), tasks, config(**options))


def randomise(encoder, seed=1):
    """Every parameter random (LoRA B, filters, gates and prompt norms included), so no term hides at init."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in encoder.named_parameters():
            scale = 1 / math.sqrt(p[0].numel()) if p.dim() >= 2 else 0.3
            offset = 1.0 if name.endswith(("norm.weight", "norm1.weight", "norm2.weight")) else 0.0
            p.copy_(torch.randn(p.shape, generator=g) * scale + offset)


# -- parameter counts (Swin-T, 448 px, the 4 PASCAL tasks, decoders included) ---------------------

@pytest.mark.parametrize("filter_kind, rank, total", [
    ("dtf", 16, 3_557_502), ("dtf", 32, 4_776_126), ("dtf", 64, 7_379_262),  # paper: 3.56 / 4.78 / 7.38 M
    ("static", 16, 3_532_350), ("static", 32, 4_670_526), ("static", 64, 6_946_878),  # released code
])
def test_counts_match_the_issue(filter_kind, rank, total):
    _, _, summary = swin_t_model("tadformer", rank=rank, filter=filter_kind)
    assert summary["total_trainable"] == total


@pytest.mark.parametrize("filter_kind", ["static", "dtf"])
def test_count_from_layer_shapes(filter_kind):
    rank, tasks = 32, len(PASCAL_TASKS)
    _, groups, summary = swin_t_model("tadformer", rank=rank, filter=filter_kind)
    lora = rank * 16 * SUM_BC  # per block r·(C+3C) + r·(C+C) + r·(C+4C) + r·(4C+C)
    adapted_linears = 3 * len(SWIN_T_C)  # proj, fc1, fc2 of the last block of each stage
    taps = 9
    filters = (adapted_linears * tasks * (rank * taps + rank) if filter_kind == "static"  # depthwise conv + bias
               else adapted_linears * (rank * rank * taps + rank * taps + 2 * rank * taps))  # generator + σ, μ
    prompts = tasks * SWIN_T_C[0]
    prompt_up = sum(c * 2 * c for c in SWIN_T_C[:3])
    prompt_norms = 2 * SUM_BC  # one LayerNorm(C) per block, as released (only 4 run)
    gates = len(SWIN_T_C)
    counts = trainable(groups)
    assert counts["method"] == lora + filters + prompts + prompt_up + prompt_norms + gates
    assert counts["reductions"] == 0 and groups["reductions"]["total"] == REDUCTIONS  # frozen, as released
    assert counts["linears"] == 0
    extras = counts["patch_embed"] + counts["norms"] + counts["rel_pos"]
    assert extras == EXTRAS - REDUCTIONS
    assert summary["decoder"] == DECODER
    assert summary["total_trainable"] == counts["method"] + extras + DECODER


def test_params_command_reports_the_papers_rank64_count(capsys):
    code, out, err = run_cli(["params", "--method", "tadformer", "--dataset", "pascal_mt", "--set", "method.rank=64",
                              "--set", "method.filter=dtf", "--json"], capsys)
    assert code == 0, err
    assert json.loads(out)["summary"]["total_trainable"] == 7_379_262


def test_frozen_patch_embed_conv_is_a_switch():
    encoder = build_micro(train_patch_embed=False)
    conv = encoder.backbone.patch_embed.proj
    assert not conv.weight.requires_grad and not conv.bias.requires_grad
    assert encoder.backbone.patch_embed.norm.weight.requires_grad


# -- formulas on hand-checkable cases -----------------------------------------------------------

def gelu(v):
    return 0.5 * v * (1 + math.erf(v / math.sqrt(2)))


def test_tpc_scales_each_heads_channels_by_gelu_of_its_raw_logit():
    tokens = torch.tensor([[[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]]])  # (1, N=2, C=4), 2 heads of 2 channels
    logits = torch.tensor([[[0.5, -1.0], [2.0, 0.0]]])  # (1, nH=2, N=2)
    got = tpc_feature(tokens, logits)
    want = torch.tensor([[[1 * gelu(0.5), 2 * gelu(0.5), 3 * gelu(2.0), 4 * gelu(2.0)],
                          [5 * gelu(-1.0), 6 * gelu(-1.0), 7 * gelu(0.0), 8 * gelu(0.0)]]])
    torch.testing.assert_close(got, want)


def test_release_skip_layout_reads_channel_first_memory_as_channel_last():
    tpc = torch.tensor([[[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]])  # (1, N=2, C=3): token 0 = (1,2,3), token 1 = (4,5,6)
    # Channel-first memory is 1,4,2,5,3,6; read as (1, 2, 3) windows of tokens × channels.
    assert skip_windows(tpc, (1, 2), "release").tolist() == [[[[1.0, 4.0, 2.0], [5.0, 3.0, 6.0]]]]
    assert skip_windows(tpc, (1, 2), "corrected").tolist() == [[[[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]]]


def test_filter_norm_standardises_each_channels_taps():
    w = torch.tensor([[1.0, 2.0, 3.0, 10.0, 10.0, 16.0]])  # 2 channels × 3 taps
    gain = torch.tensor([1.0, 1.0, 1.0, 2.0, 2.0, 2.0])
    shift = torch.tensor([0.0, 0.0, 0.0, 1.0, 1.0, 1.0])
    got = filter_norm(w, 3, gain, shift)
    # channel 0: mean 2, unbiased std 1; channel 1: mean 12, unbiased std √12
    s = math.sqrt(12.0)
    want = torch.tensor([[-1.0, 0.0, 1.0, -2 / s * 2 + 1, -2 / s * 2 + 1, 4 / s * 2 + 1]])
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_dynamic_filter_applies_its_generated_kernel_as_a_correlation():
    f = DynamicTaskFilter(rank=1)
    taps = torch.arange(9.0)
    with torch.no_grad():  # constant generated kernel 0..8: normalise then undo with σ = std, μ = mean
        f.generator.weight.zero_()
        f.generator.bias.copy_(taps)
        f.gain.fill_(taps.std().item())
        f.shift.fill_(taps.mean().item())
    out = f(torch.ones(2, 1, 3, 3), "any")
    # centre: every tap; top-left corner: taps (1,1), (1,2), (2,1), (2,2) = 4 + 5 + 7 + 8 (zero padding)
    assert out[0, 0, 1, 1].item() == pytest.approx(36.0, abs=1e-4)
    assert out[1, 0, 0, 0].item() == pytest.approx(24.0, abs=1e-4)


def test_dynamic_filter_kernels_depend_on_each_samples_input():
    torch.manual_seed(0)
    f = DynamicTaskFilter(rank=4)
    u = torch.randn(3, 4, 5, 5)
    kernels = f.kernels(u).reshape(3, 4, 9)
    assert not torch.allclose(kernels[0], kernels[1])
    # Each sample equals its own depthwise convolution with its own kernels.
    for i in range(3):
        want = F.conv2d(u[i:i + 1], kernels[i].reshape(4, 1, 3, 3), padding=1, groups=4)
        torch.testing.assert_close(f(u)[i:i + 1], want, rtol=1e-5, atol=1e-5)
    assert sum(p.numel() for p in f.parameters()) == 9 * 4 * 4 + 27 * 4


def test_filtered_term_with_an_identity_filter_is_the_shared_lora():
    from mtpeft_bench.methods.mtlora import SharedLoRALinear

    torch.manual_seed(0)
    layer = SharedLoRALinear(torch.nn.Linear(6, 5), rank=2, scale=4.0, dropout=0.0)
    filt = StaticTaskFilter(2, ("a", "b"))
    with torch.no_grad():
        layer.lora_B.normal_()
        for conv in filt.convs.values():
            conv.weight.zero_()
            conv.weight[:, 0, 1, 1] = 1.0  # centre tap: identity
            conv.bias.zero_()
        filt.convs["b"].bias.fill_(1.0)
    x = torch.randn(2, 3, 3, 6)
    torch.testing.assert_close(filtered_term(layer, filt, x, "a"), 4.0 * (x @ layer.lora_A.T) @ layer.lora_B.T)
    # Task b's filter adds its bias in rank space: + s·B·1.
    torch.testing.assert_close(filtered_term(layer, filt, x, "b") - filtered_term(layer, filt, x, "a"),
                               (4.0 * layer.lora_B.sum(dim=1)).expand(2, 3, 3, 5), rtol=1e-5, atol=1e-5)


def test_stage_mix():
    out, skip = torch.tensor([2.0]), torch.tensor([6.0])
    assert mix_skip(out, skip, "gate", torch.tensor(0.0)).item() == pytest.approx(4.0)  # σ(0) = ½
    g = 1 / (1 + math.exp(-1.5))
    assert mix_skip(out, skip, "gate", torch.tensor(1.5)).item() == pytest.approx(6 * g + 2 * (1 - g))
    assert mix_skip(out, skip, "average", torch.tensor(1.5)).item() == pytest.approx(4.0)
    assert mix_skip(out, skip, "none", torch.tensor(1.5)).item() == pytest.approx(2.0)


# -- one task-adapting block by hand (micro Swin stage 3: one 4×4 window, no shift) -----------------

def _by_hand(pb: PromptedBlock, x, prompts, layout):
    """Paper Sec. 3 / the released block, written with explicit softmax attention over [prompts; tokens]."""
    blk = pb.block
    attn, mlp = blk.attn, blk.mlp
    b, h, w, c = x.shape
    t = prompts.shape[1]
    n = h * w
    heads = attn.num_heads

    def lora(layer, v):
        return layer.base(v) + layer.scale * F.linear(F.linear(v, layer.lora_A), layer.lora_B)

    tokens = torch.cat([blk.norm1(prompts), blk.norm1(x).reshape(b, n, c)], dim=1)
    q, k, v = lora(attn.qkv, tokens).reshape(b, t + n, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
    logits = q @ k.transpose(-2, -1)
    rel = attn.relative_position_bias_table[attn.relative_position_index.view(-1)].view(n, n, -1).permute(2, 0, 1)
    scores = logits * attn.scale
    scores[:, :, t:, t:] += rel
    out = (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, t + n, c)
    y = lora(attn.proj, out)
    x1 = x + y[:, t:].reshape(b, h, w, c)
    hidden = F.gelu(lora(mlp.fc1, blk.norm2(x1)))
    shared = x1 + lora(mlp.fc2, hidden)
    new_prompts = prompts + lora(mlp.fc2, F.gelu(lora(mlp.fc1, blk.norm2(y[:, :t]))))
    tasks, skips = {}, {}
    for i, task in enumerate(pb.tasks):
        tok = out[:, t:]
        gate = F.gelu(logits[:, :, i, t:])  # (b, nH, n)
        tpc = tok * gate.repeat_interleave(c // heads, dim=1).transpose(1, 2)
        u = pb.prompt_norm(tok + tpc).reshape(b, h, w, c)
        z = attn.proj.base(out[:, t:]).reshape(b, h, w, c) + filtered_term(attn.proj, pb.task_filters["proj"], u, task)
        x1_t = x + z
        h_t = mlp.fc1.base(blk.norm2(x1)) + filtered_term(mlp.fc1, pb.task_filters["fc1"], blk.norm2(x1_t), task)
        tasks[task] = x1_t + mlp.fc2.base(hidden) + filtered_term(mlp.fc2, pb.task_filters["fc2"], F.gelu(h_t), task)
        skips[task] = tpc.transpose(1, 2).reshape(b, h, w, c) if layout == "release" else tpc.reshape(b, h, w, c)
    return shared, new_prompts, tasks, skips


@pytest.mark.parametrize("filter_kind, layout", [("static", "release"), ("dtf", "corrected")])
def test_task_adapting_block_matches_the_formulas_by_hand(filter_kind, layout):
    encoder = build_micro(filter=filter_kind, skip_layout=layout)
    randomise(encoder)
    encoder.double().eval()  # float64: the comparison is exact up to rounding, not up to fp32 softmax noise
    pb = encoder.backbone.layers[2].blocks[-1]
    assert pb.adapt and pb.block.window_size == (4, 4) and not any(pb.block.shift_size)
    c = pb.block.norm1.normalized_shape[0]
    x, prompts = torch.randn(2, 4, 4, c, dtype=torch.float64), torch.randn(2, len(TASKS), c, dtype=torch.float64)
    with torch.no_grad():
        got = pb(x, prompts)
        want = _by_hand(pb, x, prompts, layout)
    for g, wv in zip(got[:2], want[:2]):
        torch.testing.assert_close(g, wv, rtol=1e-9, atol=1e-9)
    for t in TASKS:
        torch.testing.assert_close(got[2][t], want[2][t], rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(got[3][t], want[3][t], rtol=1e-9, atol=1e-9)
    assert not torch.allclose(got[2]["a"], got[2]["b"], atol=1e-3)


def test_tasks_differ_only_through_the_skip_feature_at_init():
    encoder = build_micro(skip="none")
    encoder.eval()
    with torch.no_grad():
        feats = encoder(torch.randn(2, 3, 64, 64))
        for t in TASKS[1:]:  # B = 0: every task path equals the shared stream
            for f, g in zip(feats[t], feats[TASKS[0]]):
                torch.testing.assert_close(f, g)
        encoder.skip = "gate"
        gated = encoder(torch.randn(2, 3, 64, 64))
    assert not torch.allclose(gated["a"][0], gated["b"][0], atol=1e-4)


def test_prompts_condition_the_shared_stream():
    encoder = build_micro(skip="none")
    encoder.eval()
    images = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        before = encoder(images)["a"][1]
        encoder.task_prompts.add_(1.0)
        after = encoder(images)["a"][1]
    assert not torch.allclose(before, after, atol=1e-4)


# -- gradients ----------------------------------------------------------------------------------

def test_only_the_dead_prompt_norms_get_no_gradient_and_tasks_are_isolated():
    encoder = build_micro()
    randomise(encoder)
    feats = encoder(torch.randn(2, 3, 64, 64))
    feats["a"][2].sum().backward()
    filt = encoder.backbone.layers[2].blocks[-1].task_filters["fc1"].convs
    assert filt["a"].weight.grad.abs().sum() > 0 and filt["b"].weight.grad is None
    encoder.zero_grad(set_to_none=True)
    feats = encoder(torch.randn(2, 3, 64, 64))
    sum(f.square().mean() for fs in feats.values() for f in fs).backward()
    no_grad = {n for n, p in encoder.named_parameters() if p.requires_grad and p.grad is None}
    # swin_micro has depths (1, 1, 2, 1): only stage 3's first block is not task-adapting.
    assert no_grad == {"backbone.layers.2.blocks.0.prompt_norm.weight", "backbone.layers.2.blocks.0.prompt_norm.bias"}
    assert encoder.find_unused_parameters


# -- options and backbones ----------------------------------------------------------------------

@pytest.mark.parametrize("options, message", [
    ({"rank": 0}, "rank must be a positive integer"),
    ({"filter": "dynamic"}, "filter must be one of static, dtf"),
    ({"skip_layout": "fixed"}, "skip_layout must be one of release, corrected"),
    ({"skip": "sum"}, "skip must be one of gate, average, none"),
    ({"dropout": 1.0}, "dropout must be in [0, 1)"),
    ({"train_patch_embed": "yes"}, "train_patch_embed must be true or false"),
])
def test_invalid_options_are_one_line_errors(options, message):
    with pytest.raises(UserError) as info:
        config(**options)
    assert message in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("name, size", [("swin_micro", 64), ("swin_mini", 64), ("swin_tiny_patch4_window7_224", 224)])
def test_every_builtin_backbone(name, size):
    from mtpeft_bench.model.backbone import create_backbone

    backbone, _ = create_backbone(name, (size, size), "none", 0.1)
    channels = [int(s.downsample.reduction.out_features) for s in list(backbone.layers)[1:]]
    encoder = build_micro(backbone=backbone, tasks=PASCAL_TASKS, filter="dtf")
    encoder.eval()
    with torch.no_grad():
        feats = encoder(torch.randn(1, 3, size, size))
    assert [f.shape[1] for f in feats["sal"]] == encoder.out_channels == channels + channels[-1:]
    assert [f.shape[-1] for f in feats["normals"]] == [size // 8, size // 16, size // 32, size // 32]


def test_smoke_run_on_synth(capsys, tmp_path):
    code, _, err = run_cli(["run", "--method", "tadformer", "--out", str(tmp_path), "--preset", "smoke",
                            "--set", "data.num_train=8", "--set", "data.num_val=4", "--set", "batch_size=4",
                            "--epochs", "1", "--no-progress", "--set", "method.filter=dtf"], capsys)
    assert code == 0, err
    record = json.loads(next(tmp_path.rglob("*.json")).read_text())
    assert record["status"] == "completed"
    assert record["method_info"]["filter"] == "dtf" and record["method_info"]["skip_layout"] == "release"
