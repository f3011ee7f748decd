"""The speed switches (train/speed.py): each gives the eager fp32 path's losses to a tolerance over a
few training steps on the CPU, is off by default without changing old runs' identity, and is
recorded with the run.

torch.compile is checked here with the ``aot_eager`` backend (dynamo's graph capture and AOT
autograd, without inductor's code generation, which takes minutes on 2 cores); the slow tests
compile with inductor itself.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from types import SimpleNamespace

import pytest
import torch

from mtpeft_bench.errors import UserError
from mtpeft_bench.train import speed

from test_accumulation import batch, small_model


def switches(**on):
    base = dict(fused_attention=False, channels_last=False, compile=False, compile_mode="default")
    return SimpleNamespace(**{**base, **on})


def small_lr_trainer(model, specs):
    """AdamW at 1e-5: its first steps move every weight by about the learning rate whatever the size of
    its gradient, so a rounding difference in a near-zero gradient (one that a later BatchNorm cancels)
    moves a weight by the full rate; at 1e-5 that stays below the losses' tolerance, at 1e-3 it does not."""
    from mtpeft_bench.train import Schedule
    from mtpeft_bench.train.trainer import Trainer

    return Trainer(model, specs, torch.device("cpu"), Schedule(1e-5, 1e-5, 1e-6, 10, 0), weight_decay=0.05,
                   clip_grad=5.0, amp=False, progress=False)


def losses(model, specs, steps=3, eval_mode=False, **on):
    """The losses of ``steps`` training steps of a copy of ``model`` with the switches ``on``, the
    gradients of its first step, and what was applied.

    The random draws of the training forward (DiTASK's input dropout, LoRA's dropout) start from one
    seed in every call; ``eval_mode`` switches them off."""
    model = copy.deepcopy(model)
    if eval_mode:
        model.eval()
    applied = speed.apply_speed_switches(model, switches(**on))
    torch.manual_seed(1)
    trainer = small_lr_trainer(model, specs)
    images, targets = batch(8)
    out = [trainer.train_step(images, targets)[0]]
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    out += [trainer.train_step(images, targets)[0] for _ in range(steps - 1)]
    return out, grads, applied


def assert_same_training(reference, other, rtol=1e-4):
    """The same first gradients to ``rtol`` of the largest gradient entry, and the same losses step by
    step. Gradients are compared on the model's scale, not each tensor's: a bias followed by a
    BatchNorm has a gradient of zero in real arithmetic, so what it holds is rounding noise."""
    (ref_losses, ref_grads, _), (new_losses, new_grads, _) = reference, other
    assert set(new_grads) == set(ref_grads)
    scale = max(float(g.abs().max()) for g in ref_grads.values())
    for name, grad in ref_grads.items():
        torch.testing.assert_close(new_grads[name], grad, rtol=0, atol=rtol * scale, msg=name)
    assert new_losses == pytest.approx(ref_losses, rel=rtol)


@pytest.mark.parametrize("method", ["full", "ditask", "lora"])
def test_fused_attention_trains_as_the_eager_attention(one_thread, method):
    model, specs = small_model(method)
    fused = losses(model, specs, fused_attention=True)
    # every window attention of the micro Swin (depths 1, 1, 2, 1) takes the fused path
    assert fused[2]["fused_attention_modules"] == 5
    assert_same_training(losses(model, specs), fused)


def test_fused_attention_is_taken(one_thread, monkeypatch):
    """The switch reaches the kernel: with it on, window attention calls scaled_dot_product_attention."""
    model, _ = small_model("full")
    calls = []
    real = torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    model.eval()
    with torch.no_grad():
        model(torch.randn(2, 3, 32, 32))
    assert calls == []
    speed.use_fused_attention(model)
    with torch.no_grad():
        model(torch.randn(2, 3, 32, 32))
    assert len(calls) == 5


def test_channels_last_trains_as_contiguous(one_thread):
    model, specs = small_model("full")
    nhwc = losses(model, specs, channels_last=True)
    assert nhwc[2] == {"channels_last": True}
    assert_same_training(losses(model, specs), nhwc)


@pytest.fixture
def cheap_compiler(monkeypatch):
    import torch._dynamo

    monkeypatch.setattr(speed, "COMPILE_BACKEND", "aot_eager")
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


# Compiled models are compared with their random draws switched off (eval mode: no dropout, decoders'
# BatchNorm on running statistics): a compiled forward draws from the same generator, and its first
# step's dropout masks are eager's, but not in eager's order after that (DiTASK's input dropout
# then gives losses 1e-3 apart while the first step's gradients agree to 2e-7 of their scale).
@pytest.mark.parametrize("method", ["full", "ditask", "lora"])
def test_compiled_model_trains_as_the_eager_one(one_thread, cheap_compiler, method):
    model, specs = small_model(method)
    compiled = losses(model, specs, eval_mode=True, compile=True)
    assert compiled[2]["compiled"] == {"backend": "aot_eager", "mode": "default"}
    assert_same_training(losses(model, specs, eval_mode=True), compiled)
    # compiled in place: the state dict keeps its names, so a checkpoint loads into an uncompiled model
    twin = copy.deepcopy(model)
    speed.compile_in_place(twin)
    assert list(twin.state_dict()) == list(model.state_dict())


@pytest.mark.slow
@pytest.mark.parametrize("method", ["decoder_only", "bitfit", "adapter", "mtlora", "peft", "tadformer",
                                    "vpt_shallow", "vpt_deep", "compacter", "compacter_pp", "relbias"])
def test_every_other_method_compiles_and_trains_as_eager(one_thread, cheap_compiler, method):
    model, specs = small_model(method)
    assert_same_training(losses(model, specs, eval_mode=True), losses(model, specs, eval_mode=True, compile=True))


@pytest.mark.slow
@pytest.mark.parametrize("method", ["full", "ditask"])
def test_inductor_compiled_model_trains_as_the_eager_one(one_thread, method):
    import torch._dynamo

    torch._dynamo.reset()
    model, specs = small_model(method)
    assert_same_training(losses(model, specs, eval_mode=True),
                         losses(model, specs, eval_mode=True, compile=True, fused_attention=True), rtol=1e-3)


def test_switches_are_off_by_default_and_leave_old_hashes_alone():
    from mtpeft_bench.config import IDENTITY_SINCE, RunConfig, config_hash, resolve

    cfg = RunConfig()
    for name in ("fused_attention", "channels_last", "compile"):
        assert getattr(cfg, name) is False and IDENTITY_SINCE[name] is False
        assert config_hash(dataclasses.replace(cfg, **{name: True})) != config_hash(cfg)
    assert config_hash(dataclasses.replace(cfg, compile=True, compile_mode="max-autotune")) != \
        config_hash(dataclasses.replace(cfg, compile=True))
    for preset in ("smoke", "cpu", "bench"):  # the CPU recipes stay the eager fp32 path
        resolved = resolve(preset, {}, {})
        assert not (resolved.fused_attention or resolved.channels_last or resolved.compile)
    paper = resolve("paper", {}, {})
    assert paper.amp and paper.amp_dtype == "bfloat16" and paper.fused_attention


def test_bad_compile_mode_is_one_line():
    from mtpeft_bench.config import resolve

    with pytest.raises(UserError, match="unknown compile_mode 'reduce_overhead'.*reduce-overhead"):
        resolve("smoke", {}, {"compile_mode": "reduce_overhead"})


def test_smoke_run_records_its_switches_and_loader_share(tmp_path, capsys):
    from helpers import run_cli

    code, out, err = run_cli(["run", "--method", "full", "--preset", "smoke", "--out", str(tmp_path / "results"),
                              "--no-progress", "--set", "epochs=1", "--set", "limit_train_batches=4",
                              "--set", "limit_eval_batches=1", "--set", "measure_repeats=0",
                              "--set", "fused_attention=true", "--set", "channels_last=true"], capsys)
    assert code == 0, err
    assert "· data " in out + err  # the epoch line gives the loader's share
    record = json.loads(next((tmp_path / "results").rglob("*.json")).read_text())
    assert record["config"]["fused_attention"] is True and record["config"]["channels_last"] is True
    assert record["efficiency"]["speed_switches"] == {"fused_attention_modules": 5, "channels_last": True}
    share = record["efficiency"]["data_wait_share"]
    assert 0 <= share < 1
    epoch = record["history"][0]
    assert share == pytest.approx(epoch["data_seconds"] / epoch["seconds"], abs=1e-4)


def test_flops_of_a_compiled_model_are_its_eager_forwards(one_thread, cheap_compiler):
    from mtpeft_bench.measure import count_flops

    model, _ = small_model("full")
    model.eval()
    images = torch.randn(1, 3, 32, 32)
    eager = count_flops(model, images)
    speed.compile_in_place(model)
    with torch.no_grad():
        model(images)  # compiled
    assert count_flops(model, images) == eager and eager["total"] > 0
