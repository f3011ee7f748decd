"""The paper recipe on a smaller GPU: gradient accumulation gives the update of the whole batch, and
activation checkpointing gives the same gradients; both are offered before a smaller batch when
memory runs out.

The equivalence is checked where it holds exactly in real arithmetic: the model is the micro Swin
with the decoders' BatchNorm in eval mode (a fixed affine map, so no sample's output depends on the
others in its batch; ``train_step`` does not switch modes) and with losses whose per-batch
normalisation is the same for every slice (all pixels valid: cross-entropy and L1 means).
"""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch

from helpers import micro_backbone
from mtpeft_bench.errors import UserError


def synth_specs(names=("semseg", "depth")):
    from mtpeft_bench.registry import get_dataset
    from mtpeft_bench.tasks.base import config_from_mapping

    cls = get_dataset("synth")
    return cls(config_from_mapping(cls.Config, {}, "synth")).task_specs(list(names))


def small_model(method="full", drop_path=0.0):
    from mtpeft_bench.model.multitask import build_model, task_outputs_of
    from mtpeft_bench.registry import get_method
    from mtpeft_bench.tasks.base import config_from_mapping

    torch.manual_seed(0)
    cls = get_method(method)
    specs = synth_specs()
    model, _ = build_model(cls(), config_from_mapping(cls.Config, {}, method), micro_backbone((32, 32), drop_path=drop_path),
                           task_outputs_of(specs))
    return model, specs


def batch(n=32, size=(32, 32)):
    """Random images and fully valid targets (no ignored pixel)."""
    g = torch.Generator().manual_seed(1)
    images = torch.randn(n, 3, *size, generator=g)
    targets = {"semseg": torch.randint(0, 7, (n, *size), generator=g),
               "depth": torch.rand(n, 1, *size, generator=g) * 5 + 0.5}
    return images, targets


def trainer_for(model, specs, accum_steps, clip_grad):
    from mtpeft_bench.train import Schedule
    from mtpeft_bench.train.trainer import Trainer

    return Trainer(model, specs, torch.device("cpu"), Schedule(1e-3, 1e-3, 1e-5, 10, 0), weight_decay=0.05,
                   clip_grad=clip_grad, amp=False, progress=False, accum_steps=accum_steps)


@pytest.mark.parametrize("clip_grad", [None, 1e-3])  # 1e-3: clipping is active, on the accumulated gradient
def test_batch_8_times_4_gives_the_update_of_batch_32(one_thread, clip_grad):
    model, specs = small_model()
    model.eval()  # BatchNorm as a fixed affine map: every sample's output is its own
    images, targets = batch(32)
    results = {}
    for accum in (1, 4):
        copy_ = copy.deepcopy(model)
        trainer = trainer_for(copy_, specs, accum, clip_grad)
        loss, per_task = trainer.train_step(images, targets)
        grads = {n: p.grad.clone() for n, p in copy_.named_parameters() if p.grad is not None}
        results[accum] = (loss, per_task, grads, {n: p.detach().clone() for n, p in copy_.named_parameters()},
                          trainer.step)

    (loss1, tasks1, grads1, params1, step1), (loss4, tasks4, grads4, params4, step4) = results[1], results[4]
    assert step1 == step4 == 1  # four micro-batches make one optimisation step
    assert loss4 == pytest.approx(loss1, rel=1e-5)
    assert tasks4 == pytest.approx(tasks1, rel=1e-5)
    assert grads1.keys() == grads4.keys() and grads1
    for name in grads1:
        torch.testing.assert_close(grads4[name], grads1[name], rtol=1e-4, atol=1e-7, msg=name)
    # AdamW's first update is lr·g/(|g| + eps): where |g| is near eps (1e-8) float noise in g moves it
    # by up to lr, so updates are compared where the gradient is well above eps.
    initial = dict(model.named_parameters())
    compared = 0
    for name, grad in grads1.items():
        sure = grad.abs() > 1e-5
        update1, update4 = params1[name] - initial[name].detach(), params4[name] - initial[name].detach()
        torch.testing.assert_close(update4[sure], update1[sure], rtol=1e-3, atol=1e-8, msg=name)
        compared += int(sure.sum())
    assert compared > 1000  # the step moved many weights, so the comparison compares updates


def test_a_single_micro_batch_of_32_differs_from_the_batch():
    """The check above can fail: the gradient of one slice alone is not the batch's gradient."""
    model, specs = small_model()
    model.eval()
    images, targets = batch(32)
    whole, part = copy.deepcopy(model), copy.deepcopy(model)
    trainer_for(whole, specs, 1, None).train_step(images, targets)
    trainer_for(part, specs, 1, None).train_step(images[:8], {t: v[:8] for t, v in targets.items()})
    name, grad = next((n, p.grad) for n, p in whole.named_parameters() if p.grad is not None)
    assert not torch.allclose(dict(part.named_parameters())[name].grad, grad, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("method", ["full", "lora"])
def test_grad_checkpointing_gives_the_same_gradients(one_thread, method):
    from mtpeft_bench.model.encoder import enable_grad_checkpointing

    model, _ = small_model(method, drop_path=0.2)  # drop path: the recomputation must draw the same paths
    checkpointed = copy.deepcopy(model)
    enable_grad_checkpointing(checkpointed, "swin_micro")
    assert all(stage.grad_checkpointing for stage in checkpointed.encoder.backbone.layers)
    images, _ = batch(4)
    grads = []
    for m in (model, checkpointed):
        m.train()
        torch.manual_seed(3)
        outputs = m(images)
        sum(o.square().mean() for o in outputs.values()).backward()
        grads.append({n: p.grad for n, p in m.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-5, atol=1e-7, msg=name)


def test_grad_checkpointing_recomputes_the_blocks():
    """The switch takes effect: every block runs again in the backward pass."""
    from mtpeft_bench.model.encoder import enable_grad_checkpointing

    model, _ = small_model()
    enable_grad_checkpointing(model, "swin_micro")
    calls = []
    block = model.encoder.backbone.layers[0].blocks[0]
    block.register_forward_pre_hook(lambda *args: calls.append(1))  # (a recomputation may stop early)
    model.train()
    sum(o.mean() for o in model(batch(2)[0]).values()).backward()
    assert len(calls) == 2  # the forward, then the recomputation during backward


def test_ditask_refuses_grad_checkpointing_in_one_line():
    from mtpeft_bench.model.encoder import enable_grad_checkpointing

    model, _ = small_model("ditask")
    with pytest.raises(UserError, match="accum_steps"):
        enable_grad_checkpointing(model, "swin_micro")


def test_batch_size_must_split_into_the_micro_batches():
    from mtpeft_bench.config import resolve

    assert resolve("smoke", {}, {"accum_steps": 4}).batch_size == 16  # the preset's batch stays the effective one
    with pytest.raises(UserError, match="multiple of accum_steps"):
        resolve("smoke", {}, {"accum_steps": 3})
    with pytest.raises(UserError, match="at least 1"):
        resolve("smoke", {}, {"accum_steps": 0})


def test_accumulation_keeps_the_learning_rate_scaling():
    from mtpeft_bench.config import resolve

    plain, accumulated = resolve("paper", {}, {}), resolve("paper", {}, {"accum_steps": 4})
    assert accumulated.lr_scale() == plain.lr_scale() == 32 / 512


def test_identity_old_hashes_stay_and_accumulation_is_part_of_it():
    import dataclasses
    import hashlib
    import json

    from mtpeft_bench.config import NOT_IDENTITY, RunConfig, config_hash

    cfg = RunConfig()
    # the hash as it was computed before the new fields existed
    before = {k: v for k, v in cfg.to_dict().items()
              if k not in NOT_IDENTITY and k not in ("accum_steps", "grad_checkpoint", "logger", "fused_attention",
                                                   "channels_last", "compile", "compile_mode")}
    old = hashlib.sha256(json.dumps(before, sort_keys=True, default=str).encode()).hexdigest()[:12]
    assert config_hash(cfg) == old
    assert config_hash(dataclasses.replace(cfg, accum_steps=4)) != old
    assert config_hash(dataclasses.replace(cfg, grad_checkpoint=True)) == old  # same gradients: may resume with it
    assert config_hash(dataclasses.replace(cfg, logger="tensorboard")) == old


def oom_cfg(**changes):
    base = dict(batch_size=32, accum_steps=1, grad_checkpoint=False, amp=True, eval_batch_size=None, num_workers=4)
    return SimpleNamespace(**{**base, **changes})


def test_out_of_memory_advice_keeps_the_recipe_first():
    from mtpeft_bench.train.failures import oom_advice

    line = oom_advice(oom_cfg(), (448, 448), "train")
    tips = line.split("try: ")[1].split("; ")
    assert tips[0].startswith("--set accum_steps=2")
    assert tips[1].startswith("--set grad_checkpoint=true")
    assert any(t.startswith("--batch-size 16") for t in tips[2:])

    again = oom_advice(oom_cfg(accum_steps=4, grad_checkpoint=True), (448, 448), "train")
    assert "accum_steps=8 (micro-batches of 4" in again and "grad_checkpoint" not in again
    assert "in 4 micro-batches" in again
    odd = oom_advice(oom_cfg(batch_size=6, accum_steps=2), (448, 448), "train")
    assert "accum_steps" not in odd.split("try: ")[1]  # 6 does not split into 4 equal micro-batches
