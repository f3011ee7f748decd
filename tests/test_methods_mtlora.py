"""``mtlora``: the paper's parameter counts, the official 'matrix' semantics (the frozen path of a
task output sees the shared input; the TA delta is not in task outputs), matrixv2, dropout
placement, gradient isolation between tasks and MTLoRA+."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from helpers import micro_backbone
from helpers.baseline import (
    DECODER, EXTRAS, PASCAL_TASKS, REDUCTIONS, SUM_BC, SWIN_T_C, reference_features, swin_t_model, trainable,
)
from mtpeft_bench.errors import UserError
from mtpeft_bench.model.branching import TaskBranchingBlock
from mtpeft_bench.registry import get_method
from mtpeft_bench.tasks.base import config_from_mapping


TASKS = ("a", "b", "c")


def config(**options):
    return config_from_mapping(get_method("mtlora").Config, options, "mtlora method")


def build_micro(seed=0, **options):
    torch.manual_seed(seed)
    backbone = micro_backbone()
    pristine = copy.deepcopy(backbone)
    encoder = get_method("mtlora")().build(backbone, TASKS, config(**options))
    return encoder, pristine


def randomise_lora(encoder, shared=True, tasks=True, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in encoder.named_parameters():
            is_task = "lora_task_B" in name
            is_shared = name.endswith("lora_B")
            if (is_task and tasks) or (is_shared and shared):
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)


# -- parameter counts (Swin-T, 448 px, the 4 PASCAL tasks) -------------------------------------

def formula(rank, task_rank, tasks=4):
    shared = rank * 16 * SUM_BC  # r·(C+3C) + r·(C+C) + r·(C+4C) + r·(4C+C) per block
    per_task = tasks * task_rank * 12 * sum(SWIN_T_C)  # proj, fc1, fc2 of the last block of each stage
    return shared, per_task


@pytest.mark.parametrize("rank, total, encoder", [
    (16, 4_953_146, 3_006_522), (32, 6_083_642, 4_137_018), (64, 8_344_634, 6_398_010),
])
def test_counts_match_the_papers(rank, total, encoder):
    _, groups, summary = swin_t_model("mtlora", rank=rank)
    shared, per_task = formula(rank, 4)
    assert per_task == 276_480
    assert groups["method"]["trainable"] == shared + per_task
    counts = trainable(groups)
    assert counts["linears"] == 0
    assert counts["patch_embed"] + counts["norms"] + counts["rel_pos"] + counts["reductions"] == EXTRAS
    assert summary["decoder"] == DECODER
    assert summary["total_trainable"] == shared + per_task + EXTRAS + DECODER == total  # MTLoRA paper
    assert summary["encoder_trainable"] == encoder  # DiTASK paper's 6.40M at rank 64


@pytest.mark.parametrize("rank, task_rank, total", [(16, 4, 3_469_370), (4, 4, 2_573_114), (8, 8, 3_148_346)])
def test_mtlora_plus_puts_lora_on_the_reductions_and_freezes_them(rank, task_rank, total):
    model, groups, summary = swin_t_model("mtlora", rank=rank, task_rank=task_rank, plus=True)
    shared, per_task = formula(rank, task_rank)
    reductions_lora = rank * sum(4 * c + 2 * c for c in SWIN_T_C[:3])  # 4C → 2C
    counts = trainable(groups)
    assert counts["reductions"] == 0 and groups["reductions"]["total"] == REDUCTIONS
    assert counts["method"] == shared + per_task + reductions_lora
    assert summary["total_trainable"] == shared + per_task + reductions_lora + EXTRAS - REDUCTIONS + DECODER == total
    layers = model.encoder.backbone.layers
    assert isinstance(layers[0].downsample, nn.Identity)
    assert all(type(layers[i].downsample.reduction).__name__ == "SharedLoRALinear" for i in (1, 2, 3))


# -- semantics on the micro Swin ----------------------------------------------------------------

def test_at_init_every_stream_is_the_frozen_backbone():
    encoder, pristine = build_micro()
    encoder.eval()
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        feats = encoder(images)
        expected = reference_features(pristine.eval(), images)
    assert sum(isinstance(m, TaskBranchingBlock) for m in encoder.modules()) == 4
    for t in TASKS:
        for got, want in zip(feats[t], expected):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def _manual_block(tb, x):
    """The last block of a stage by hand, from its frozen timm parts and its LoRA factors.

    Shared: the TA-LoRA on proj, fc1, fc2. Task t: y_t = W x_shared + b + s_t B_t A_t x_t at each
    layer (docs/protocol.md 5.1), with x_t the task stream (the dropped-out shared input for proj).
    """
    blk = tb.block

    def ta(layer, inp):
        s = layer.shared
        return s.base(inp) + s.scale * F.linear(F.linear(inp, s.lora_A), s.lora_B)

    def ts(layer, inp_shared, inp_task, t):
        return layer.shared.base(inp_shared) + layer.task_scale * F.linear(
            F.linear(inp_task, layer.lora_task_A[t]), layer.lora_task_B[t])

    attn = blk._attn(blk.norm1(x))
    z = x + ta(tb.proj, attn)
    n = blk.norm2(z)
    hidden = F.gelu(ta(tb.fc1, n))
    shared = z + ta(tb.fc2, hidden)
    tasks = {}
    for t in TASKS:
        z_t = x + ts(tb.proj, attn, attn, t)
        n_t = blk.norm2(z_t)
        hidden_t = F.gelu(ts(tb.fc1, n, n_t, t))
        tasks[t] = z_t + ts(tb.fc2, hidden, hidden_t, t)
    return shared, tasks


def test_matrix_mode_matches_the_official_formula():
    encoder, _ = build_micro()
    randomise_lora(encoder)
    encoder.eval()
    tb = encoder.backbone.layers[1].blocks[-1]
    x = torch.randn(2, 8, 8, tb.block.norm1.normalized_shape[0])  # stage 2 of the micro Swin at 64 px
    with torch.no_grad():
        shared, tasks = tb(x)
        want_shared, want_tasks = _manual_block(tb, x)
    torch.testing.assert_close(shared, want_shared, rtol=1e-5, atol=1e-5)
    for t in TASKS:
        torch.testing.assert_close(tasks[t], want_tasks[t], rtol=1e-5, atol=1e-5)
    # The TA delta is not in the task outputs: with zero TS-LoRA a task stream differs from the shared one.
    with torch.no_grad():
        for layer in (tb.proj, tb.fc1, tb.fc2):
            layer.lora_task_B["a"].zero_()
        shared, tasks = tb(x)
    assert not torch.allclose(tasks["a"], shared, atol=1e-4)


def test_matrixv2_with_zero_task_lora_gives_the_shared_stream_everywhere():
    encoder, _ = build_micro(mode="matrixv2")
    randomise_lora(encoder, tasks=False)
    encoder.eval()
    # Reference: the same modules without branching (proj/fc1/fc2 put back into the timm blocks).
    reference = copy.deepcopy(encoder)
    for stage in reference.backbone.layers:
        tb = stage.blocks[-1]
        tb.block.attn.proj, tb.block.mlp.fc1, tb.block.mlp.fc2 = tb.proj.shared, tb.fc1.shared, tb.fc2.shared
        tb.block.attn.proj_drop = tb.proj_drop
        stage.blocks[-1] = tb.block
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        feats = encoder(images)
        expected = reference_features(reference.backbone, images)
        unadapted = reference_features(build_micro(mode="matrixv2")[1].eval(), images)
    for t in TASKS:
        for got, want in zip(feats[t], expected):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(expected[1], unadapted[1], atol=1e-4)  # the shared LoRA did change something


def test_dropout_is_shared_for_proj_and_absent_on_task_inputs():
    from mtpeft_bench.methods.mtlora import MTLoRAStream, SharedLoRALinear

    torch.manual_seed(0)
    shared = SharedLoRALinear(nn.Linear(16, 8), rank=4, scale=4.0, dropout=0.5)
    stream = MTLoRAStream(shared, ("a",), rank=4, scale=4.0, mode="matrix")
    with torch.no_grad():
        shared.lora_B.normal_()
        stream.lora_task_A["a"].copy_(shared.lora_A)
        stream.lora_task_B["a"].copy_(shared.lora_B)
    stream.train()
    x = torch.randn(64, 16)
    with torch.no_grad():
        out, outs = stream(x, None)
        # Same factors and scale: the task term equals the shared one only if both read the same dropout mask.
        torch.testing.assert_close(outs["a"], out, rtol=0, atol=0)
        task_in = torch.randn(64, 16)
        out, outs = stream(x, {"a": task_in})
        want = shared.base(x) + 4.0 * F.linear(F.linear(task_in, shared.lora_A), shared.lora_B)
        torch.testing.assert_close(outs["a"], want, rtol=1e-6, atol=1e-6)


def test_gradients_of_a_task_reach_only_its_own_task_lora():
    encoder, _ = build_micro()
    randomise_lora(encoder)
    feats = encoder(torch.randn(2, 3, 64, 64))
    feats["a"][2].sum().backward()
    tb = encoder.backbone.layers[2].blocks[-1]
    for layer in (tb.proj, tb.fc1, tb.fc2):
        assert layer.lora_task_A["a"].grad is not None and layer.lora_task_A["a"].grad.abs().sum() > 0
        assert layer.lora_task_A["b"].grad is None and layer.lora_task_B["c"].grad is None
    # The shared stream of earlier stages (and of this stage's first block) feeds task a's stage-3 feature.
    assert encoder.backbone.layers[1].blocks[-1].block.attn.qkv.lora_A.grad is not None
    assert encoder.backbone.layers[1].blocks[-1].fc2.shared.lora_A.grad is not None
    assert encoder.backbone.layers[2].blocks[0].mlp.fc2.lora_A.grad is not None
    # Other stages' task LoRA does not (task streams do not propagate).
    assert encoder.backbone.layers[1].blocks[-1].proj.lora_task_A["a"].grad is None


def test_init_of_the_factors():
    encoder, _ = build_micro(rank=8, task_rank=2)
    layer = encoder.backbone.layers[3].blocks[-1].fc1
    assert torch.count_nonzero(layer.shared.lora_B) == 0 and torch.count_nonzero(layer.lora_task_B["a"]) == 0
    bound = 1 / math.sqrt(layer.shared.base.in_features)  # kaiming_uniform(a=√5) = U(-1/√in, 1/√in)
    for a in (layer.shared.lora_A, layer.lora_task_A["a"]):
        assert a.abs().max() <= bound and a.abs().max() > 0.5 * bound
    assert layer.shared.lora_A.shape == (8, layer.shared.base.in_features)
    assert layer.lora_task_A["b"].shape == (2, layer.shared.base.in_features)


@pytest.mark.parametrize("options, message", [
    ({"rank": 0}, "rank must be a positive integer"),
    ({"task_rank": 1.5}, "task_rank must be a positive integer"),
    ({"scale": 0}, "scale must be a positive number"),
    ({"dropout": -0.1}, "dropout must be in [0, 1)"),
    ({"mode": "addition"}, "mode must be one of matrix, matrixv2"),
    ({"plus": "yes"}, "plus must be true or false"),
    ({"r": 16}, "unknown mtlora method option 'r'"),
])
def test_invalid_options_are_one_line_errors(options, message):
    with pytest.raises(UserError) as info:
        config(**options)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_pascal_task_names_work_as_parameter_keys():
    encoder = get_method("mtlora")().build(micro_backbone(), PASCAL_TASKS, config())
    assert set(encoder.backbone.layers[0].blocks[-1].proj.lora_task_A) == set(PASCAL_TASKS)


def test_params_command_reports_the_papers_rank64_figures(capsys):
    import json

    from mtpeft_bench.cli import main

    with pytest.raises(SystemExit) as info:
        main(["params", "--method", "mtlora", "--dataset", "pascal_mt", "--set", "method.rank=64", "--format", "json"])
    out, _ = capsys.readouterr()
    assert info.value.code == 0
    summary = json.loads(out)["summary"]
    assert summary["total_trainable"] == 8_344_634 and summary["encoder_trainable"] == 6_398_010


@pytest.mark.parametrize("mode, unused", [
    ("matrix", {"backbone.layers.3.blocks.0.fc2.shared.lora_A", "backbone.layers.3.blocks.0.fc2.shared.lora_B"}),
    ("matrixv2", set()),
])
def test_parameters_without_gradient_are_declared(mode, unused):
    encoder, _ = build_micro(mode=mode)
    randomise_lora(encoder)
    feats = encoder(torch.randn(2, 3, 64, 64))
    sum(f.square().mean() for fs in feats.values() for f in fs).backward()
    no_grad = {n for n, p in encoder.named_parameters() if p.requires_grad and p.grad is None}
    assert no_grad == unused
    assert encoder.find_unused_parameters  # DDP must be told
