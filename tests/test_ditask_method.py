"""The DiTASK method plugin: structure, exactness of the identity warp, modes, counts, kernels."""

from __future__ import annotations

import copy
import json
import math
import pickle
import sys
import warnings

import pytest
import torch
import torch.nn.functional as F

from helpers import micro_backbone
from mtpeft_bench.errors import UserError
from mtpeft_bench.measure import parameter_groups
from mtpeft_bench.methods.ditask.adapter import (TRAFFIC_WEIGHT, DiTASKLinear, DiTASKStream, InputDropout,
                                                 factored_is_cheaper)
from mtpeft_bench.methods.ditask.cpa import warp_spectrum
from mtpeft_bench.model.encoder import MultiTaskSwinEncoder
from mtpeft_bench.model.multitask import build_model
from mtpeft_bench.registry import get_method
from mtpeft_bench.tasks.base import config_from_mapping


TASKS = ("semseg", "depth")
MICRO_C = (32, 64, 128, 256)
MICRO_DEPTHS = (1, 1, 2, 1)


def ditask(**options):
    cls = get_method("ditask")
    return cls(), config_from_mapping(cls.Config, options, "ditask method")


def build_encoder(seed=0, backbone_seed=1, **options):
    torch.manual_seed(backbone_seed)
    backbone = micro_backbone()
    torch.manual_seed(seed)
    method, cfg = ditask(**options)
    return method.build(backbone, TASKS, cfg)


def adapted(encoder):
    return [m for m in encoder.modules() if isinstance(m, DiTASKLinear)]


def images(seed=0):
    return torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(seed))


def randomise_thetas(encoder, scale=1.0, seed=5):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in encoder.named_parameters():
            if "ditask_" in name:
                p.copy_((torch.rand(p.shape, generator=g) * 2 - 1) * scale)


def test_every_block_linear_is_adapted_and_frozen():
    encoder = build_encoder()
    layers = adapted(encoder)
    assert len(layers) == 4 * sum(MICRO_DEPTHS)
    assert sum(layer.blocks == 3 for layer in layers) == sum(MICRO_DEPTHS)  # qkv split into q, k, v
    for layer in layers:
        assert not layer.base.weight.requires_grad and not layer.base.bias.requires_grad
        assert layer.ditask_theta.shape == (1, 63) and layer.ditask_theta.requires_grad
    # Extras train (docs/ditask.md 4.1); PatchMerging reductions are not adapted.
    trainable = {n for n, p in encoder.named_parameters() if p.requires_grad}
    assert any("downsample.reduction" in n for n in trainable)
    assert any("relative_position_bias_table" in n for n in trainable)
    assert any("patch_embed" in n for n in trainable)
    assert all("ditask_" in n or "norm" in n or "patch_embed" in n or "relative_position" in n or "reduction" in n
               for n in trainable)


def expected_theta_count(shared=64, task=4, tasks=2, dead=True):
    blocks = sum(MICRO_DEPTHS)
    count = 4 * blocks * (shared - 1)
    count += 4 * 3 * tasks * (task - 1)  # proj, fc1, fc2 of the last block of every stage
    if dead:
        count += blocks * tasks * (task - 1)  # the official code's unused per-task θ on every qkv
    return count


@pytest.mark.parametrize("options,expected", [
    ({}, expected_theta_count()),
    ({"task_cells": 64}, expected_theta_count(task=64)),
    ({"dead_task_theta": False}, expected_theta_count(dead=False)),
    ({"shared_cells": 8, "task_cells": 3}, expected_theta_count(shared=8, task=3)),
    ({"task_streams": False}, 4 * sum(MICRO_DEPTHS) * 63),
])
def test_theta_counts_and_groups(options, expected):
    torch.manual_seed(0)
    method, cfg = ditask(**options)
    model, ids = build_model(method, cfg, micro_backbone(), {t: 1 for t in TASKS})
    groups = parameter_groups(model, ids)
    assert groups["method"] == {"trainable": expected, "total": expected}
    assert groups["linears"]["trainable"] == 0
    extras = sum(groups[g]["trainable"] for g in ("patch_embed", "norms", "rel_pos", "reductions"))
    assert extras == sum(groups[g]["total"] for g in ("patch_embed", "norms", "rel_pos", "reductions")) > 0


def test_frozen_extras_switch():
    encoder = build_encoder(train_extras=False)
    assert all("ditask_" in n for n, p in encoder.named_parameters() if p.requires_grad)


def test_theta_init_is_official_uniform_or_identity():
    layers = adapted(build_encoder())
    shared = torch.cat([layer.ditask_theta.detach().reshape(-1) for layer in layers])
    assert shared.abs().max() <= 1 / math.sqrt(63) and shared.abs().max() > 0.8 / math.sqrt(63)
    task = torch.cat([p.detach().reshape(-1) for layer in layers if layer.ditask_task_theta is not None
                      for p in layer.ditask_task_theta.values()])
    assert task.abs().max() <= 1 / math.sqrt(3) and task.abs().max() > 0.4
    for layer in adapted(build_encoder(init="identity")):
        assert not layer.ditask_theta.detach().any()


@pytest.mark.parametrize("mode", ["dense", "factored"])
def test_identity_warp_reproduces_the_frozen_model_exactly(mode):
    torch.manual_seed(1)
    frozen = MultiTaskSwinEncoder(micro_backbone(), TASKS).eval()
    encoder = build_encoder(init="identity", mode=mode, residual=True).eval()
    x = images()
    with torch.no_grad():
        want, got = frozen(x), encoder(x)
    for t in TASKS:
        for a, b in zip(got[t], want[t]):
            assert torch.equal(a, b)


@pytest.mark.parametrize("mode", ["dense", "factored"])
def test_identity_warp_in_the_official_form_reproduces_the_frozen_model(mode):
    # U·diag(s)·Vᵀ equals W up to the float32 SVD's rounding; the relative error stays near 1e-6.
    torch.manual_seed(1)
    frozen = MultiTaskSwinEncoder(micro_backbone(), TASKS).eval()
    encoder = build_encoder(init="identity", mode=mode).eval()
    assert not encoder.ditask.residual  # the official form is the default
    x = images()
    with torch.no_grad():
        want, got = frozen(x), encoder(x)
    for t in TASKS:
        for a, b in zip(got[t], want[t]):
            assert (a - b).norm() <= 2e-5 * b.norm()


def test_identity_warp_layer_matches_frozen_linear_exactly():
    encoder = build_encoder(init="identity", residual=True).eval()
    x = torch.randn(3, 5, 32)
    layer = encoder.backbone.layers[0].blocks[0].proj.layer  # a branching layer
    qkv = encoder.backbone.layers[0].blocks[0].block.attn.qkv
    with torch.no_grad():
        assert torch.equal(qkv(x), F.linear(x, qkv.base.weight, qkv.base.bias))
        shared, per_task = encoder.backbone.layers[0].blocks[0].proj(x, None)
        assert torch.equal(shared, F.linear(x, layer.base.weight, layer.base.bias))
        assert all(torch.equal(y, shared) for y in per_task.values())


def test_warped_weight_matches_the_svd_definition():
    encoder = build_encoder(residual=False, mode="dense").eval()
    randomise_thetas(encoder, 0.5)
    qkv = encoder.backbone.layers[1].blocks[0].block.attn.qkv
    w = qkv.base.weight.detach().double()
    theta = qkv.ditask_theta.detach().double()[0]
    blocks = []
    for block in w.chunk(3):  # docs/ditask.md 2.2: q, k, v decomposed separately, one θ
        u, s, vh = torch.linalg.svd(block, full_matrices=False)
        blocks.append(u @ torch.diag(warp_spectrum(s, theta, 64)) @ vh)
    expected_weight = torch.cat(blocks)
    x = torch.randn(7, 64, dtype=torch.float64)
    with torch.no_grad():
        got = qkv(x.float()).double()
    torch.testing.assert_close(got, x @ expected_weight.T + qkv.base.bias.double(), atol=2e-4, rtol=1e-4)


def test_input_dropout_rate_and_expectation():
    drop = InputDropout(0.05)
    x = torch.ones(400, 1000)
    y = drop(x)
    dropped = (y == 0).float().mean().item()
    assert abs(dropped - 0.05) < 0.003  # 4e5 draws: the standard error is 3.4e-4
    kept = y[y != 0]
    assert torch.allclose(kept, torch.full_like(kept, 65536 / (65536 - 3277)))
    assert abs(y.mean().item() - 1) < 0.005
    assert not torch.equal(drop(x), y)  # a fresh mask every call
    xg = x.clone().requires_grad_()
    out = drop(xg)
    out.sum().backward()
    assert torch.equal(xg.grad, out.detach())  # the gradient is the mask times the scale
    drop.eval()
    assert torch.equal(drop(x), x)


@pytest.mark.parametrize("residual", [True, False])
@pytest.mark.parametrize("mode", ["dense", "factored"])
def test_training_output_is_the_layer_on_the_dropped_out_input(mode, residual):
    # The dropout scale 1/(1−p) is applied to W' or s' instead of x: same result as scaling x.
    encoder = build_encoder(mode=mode, residual=residual, dropout=0.3).train()
    randomise_thetas(encoder, 0.8)
    layers = {"qkv (3 blocks)": encoder.backbone.layers[0].blocks[0].block.attn.qkv,
              "fc1 (branching)": encoder.backbone.layers[0].blocks[0].fc1}
    for name, module in layers.items():
        layer = getattr(module, "layer", module)
        x = torch.randn(2, 9, layer.in_features)
        torch.manual_seed(7)
        got = module(x) if module is layer else module(x, None)[0]
        torch.manual_seed(7)
        xm, scale = layer.dropout.masked(x)
        assert scale > 1 and (xm == 0).any()
        layer.eval()
        with torch.no_grad():
            want = layer(xm * scale)
        torch.testing.assert_close(got.detach(), want, atol=1e-5, rtol=1e-5, msg=name)
        layer.train()


def test_task_inputs_get_no_dropout_but_the_shared_input_does():
    encoder = build_encoder(init="identity", dropout=0.5, residual=True).train()
    stream = encoder.backbone.layers[2].blocks[1].fc2
    layer = stream.layer
    x = torch.ones(4, 512)
    frozen = F.linear(x, layer.base.weight, layer.base.bias)
    with torch.no_grad():
        shared, per_task = stream(x, {"semseg": x, "depth": x})
    assert all(torch.equal(y, frozen) for y in per_task.values())  # task streams: no dropout
    assert not torch.allclose(shared, frozen)


def test_task_transforms_warp_the_original_spectrum():
    encoder = build_encoder(residual=True).eval()  # exact: the identity task warp gives W itself
    randomise_thetas(encoder, 1.0)
    stream = encoder.backbone.layers[2].blocks[1].fc1
    assert isinstance(stream, DiTASKStream)
    layer = stream.layer
    with torch.no_grad():
        layer.ditask_task_theta["depth"].zero_()  # identity for one task
        x = torch.randn(2, 3, 128)
        shared, per_task = stream(x, {"semseg": x + 1, "depth": x * 2})
    assert torch.equal(per_task["depth"], F.linear(x * 2, layer.base.weight, layer.base.bias))
    assert not torch.allclose(shared, F.linear(x, layer.base.weight, layer.base.bias), atol=1e-4)
    with torch.no_grad():
        assert torch.equal(per_task["semseg"], stream(x + 1, None)[1]["semseg"])


@pytest.mark.parametrize("residual", [True, False])
def test_dense_and_factored_agree_in_value_and_gradient(residual):
    results = []
    for mode in ("dense", "factored"):
        encoder = build_encoder(mode=mode, residual=residual, dropout=0.0)
        randomise_thetas(encoder, 0.8)
        feats = encoder(images())
        loss = sum((f * torch.linspace(-1, 1, f.numel()).reshape(f.shape)).sum() for t in TASKS for f in feats[t])
        loss.backward()
        grads = {n: p.grad.clone() for n, p in encoder.named_parameters() if p.grad is not None}
        results.append(([f.detach() for t in TASKS for f in feats[t]], grads))
    (f_d, g_d), (f_f, g_f) = results
    for a, b in zip(f_d, f_f):
        torch.testing.assert_close(a, b, atol=2e-4, rtol=1e-4)
    assert g_d.keys() == g_f.keys()
    assert any("ditask_task_theta" in n for n in g_d)
    for n in g_d:
        torch.testing.assert_close(g_d[n], g_f[n], atol=1e-3, rtol=1e-3)


def test_residual_form_equals_official_form():
    outs = []
    for residual in (True, False):
        encoder = build_encoder(residual=residual).eval()
        randomise_thetas(encoder, 0.8)
        with torch.no_grad():
            outs.append(encoder(images()))
    for t in TASKS:
        for a, b in zip(*(o[t] for o in outs)):
            torch.testing.assert_close(a, b, atol=1e-3, rtol=1e-3)


def test_mode_choice_counts_operations():
    # Many tokens: rebuilding the matrix once is cheaper; few tokens: the factors are.
    assert not factored_is_cheaper(25088, 96, 96, 96, grad=True, residual=True)
    assert factored_is_cheaper(8, 768, 768, 768, grad=True, residual=True)
    # Residual form with a gradient: factors win below 2C/3·... tokens for a C×C block (C = 768: 512).
    assert factored_is_cheaper(500, 768, 768, 768, grad=True, residual=True)
    assert not factored_is_cheaper(520, 768, 768, 768, grad=True, residual=True)
    # Without a gradient the rebuild is paid once, not twice: factors win below C/2 tokens.
    assert not factored_is_cheaper(400, 768, 768, 768, grad=False, residual=True)
    # Official form (the default): the factors replace the frozen product, so a C×C block switches
    # at 2C tokens (3·T·C² + 2·C³ against 4·T·C²) and the 4C×C MLP layers always take the factors.
    assert factored_is_cheaper(1535, 768, 768, 768, grad=True, residual=False)
    assert not factored_is_cheaper(1537, 768, 768, 768, grad=True, residual=False)
    assert factored_is_cheaper(10 ** 7, 4 * 96, 96, 96, grad=True, residual=False)
    assert factored_is_cheaper(10 ** 7, 96, 4 * 96, 96, grad=True, residual=False)
    assert not factored_is_cheaper(10 ** 7, 4 * 96, 96, 96, grad=True, residual=True)
    # On a GPU the (tokens × k) intermediate's memory traffic outweighs the saved multiply-adds for
    # Swin-T's training batches (448 px, batch 32: stage 1 has 401,408 tokens), not for a few tokens.
    gpu = TRAFFIC_WEIGHT["cuda"]
    assert TRAFFIC_WEIGHT["cpu"] == 0
    assert not factored_is_cheaper(401_408, 4 * 96, 96, 96, grad=True, residual=False, traffic_weight=gpu)
    assert not factored_is_cheaper(6_272, 4 * 768, 768, 768, grad=True, residual=False, traffic_weight=gpu)
    assert factored_is_cheaper(196, 768, 768, 768, grad=False, residual=False, traffic_weight=gpu)
    for residual, mlp_stage0 in ((True, "dense"), (False, "factored")):
        encoder = build_encoder(residual=residual)
        encoder(images())
        modes = encoder.method_info()["layer_modes"]["train"]
        assert modes["stage0:32x32"] == "dense"  # 512 tokens, C = 32
        assert modes["stage0:128x32"] == modes["stage0:32x128"] == mlp_stage0
        assert modes["stage3:256x256"] == modes["stage3:1024x256"] == "factored"  # 8 tokens, C = 256


def test_recomputing_the_svds_gives_the_same_model():
    outs = []
    for recompute in ("never", "per_forward", "per_use"):
        encoder = build_encoder(svd_recompute=recompute).eval()
        with torch.no_grad():
            outs.append(encoder(images()))
        info = encoder.method_info()
    assert info["svd"] == "recomputed (per_use)"
    for other in outs[1:]:
        for t in TASKS:
            for a, b in zip(outs[0][t], other[t]):
                torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_checkpoint_keeps_timm_keys_and_reloads_into_another_backbone():
    encoder = build_encoder(backbone_seed=1)
    opt = torch.optim.SGD([p for p in encoder.parameters() if p.requires_grad], lr=0.1)
    for _ in range(2):
        feats = encoder(images())
        sum(f.square().mean() for t in TASKS for f in feats[t]).backward()
        opt.step()
        opt.zero_grad()
    state = encoder.state_dict()
    assert not any(k.startswith("ditask.") for k in state)  # the factors are derived, not saved
    assert set(state) == {n for n, _ in encoder.named_parameters()}  # weights, biases, θ; no factor buffers
    other = build_encoder(seed=3, backbone_seed=2)
    other.load_state_dict(state)
    encoder.eval(), other.eval()
    with torch.no_grad():
        a, b = encoder(images(1)), other(images(1))
    for t in TASKS:
        for x, y in zip(a[t], b[t]):
            torch.testing.assert_close(x, y, atol=1e-5, rtol=1e-5)


def test_dead_task_thetas_get_no_gradient_and_live_ones_do():
    encoder = build_encoder()
    feats = encoder(images())
    sum(f.sum() for t in TASKS for f in feats[t]).backward()
    for name, p in encoder.named_parameters():
        if "ditask_task_theta" in name:
            assert (p.grad is None) == (".attn.qkv." in name), name
    assert encoder.find_unused_parameters


def test_kernel_on_cpu_is_the_reference_and_is_recorded():
    encoder = build_encoder()
    with torch.no_grad():
        encoder(images())
    info = encoder.method_info()
    json.dumps(info)
    assert info["kernel"] == "torch" and info["kernel_option"] == "auto"


def test_triton_kernel_without_gpu_or_interpreter_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    encoder = build_encoder(kernel="triton")
    with pytest.raises(UserError, match="needs a CUDA device"):
        encoder(images())


def test_missing_triton_warns_once_and_falls_back(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setitem(sys.modules, "mtpeft_bench.methods.ditask.triton_kernel", None)  # import fails
    encoder = build_encoder(kernel="triton")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with torch.no_grad():
            encoder(images())
            encoder(images())
    assert sum("Triton is not usable" in str(w.message) for w in caught) == 1
    assert encoder.method_info()["kernel"] == "torch"


@pytest.mark.parametrize("key,value,message", [
    ("shared_cells", 1, "shared_cells must be an integer"),
    ("task_cells", True, "task_cells must be an integer"),
    ("kernel", "cuda", "kernel must be one of"),
    ("dropout", 1.5, "dropout must be"),
    ("init", "zeros", "init must be one of"),
    ("mode", "fast", "mode must be one of"),
    ("svd_recompute", "yes", "svd_recompute must be one of"),
    ("residual", "no", "residual must be true or false"),
])
def test_bad_options_are_one_line_errors(key, value, message):
    with pytest.raises(UserError, match=message):
        ditask(**{key: value})


def test_deepcopy_keeps_the_bank_wiring():
    encoder = build_encoder().eval()
    clone = copy.deepcopy(encoder)
    randomise_thetas(clone, 1.0)
    with torch.no_grad():
        a, b = encoder(images()), clone(images())
    assert not torch.allclose(a["semseg"][0], b["semseg"][0])
    assert clone.ditask is not encoder.ditask
    assert all(layer.__dict__["_bank"] is clone.ditask for layer in adapted(clone))
    restored = pickle.loads(pickle.dumps(clone))  # torch.save(model) works too
    with torch.no_grad():
        c = restored(images())
    assert torch.equal(c["semseg"][0], b["semseg"][0])


@pytest.mark.slow
def test_swin_t_pascal_parameter_counts():
    from click.testing import CliRunner

    from mtpeft_bench.cli import cli

    for sets, expected in (([], 1_602_858), (["--set", "method.task_cells=64"], 1_608_618)):
        result = CliRunner().invoke(cli, ["params", "--method", "ditask", "--dataset", "pascal_mt", "--format", "json",
                                          *sets])
        assert result.exit_code == 0, result.output
        assert json.loads(result.output)["summary"]["encoder_trainable"] == expected
