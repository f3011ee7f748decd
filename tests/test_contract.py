"""The method contract, checked for every registered method (and the README's example plugin).

A method plugin passes when its encoder gives per-task features of the right shapes, its outputs
are finite, training changes only what it declares trainable (every frozen tensor stays
bit-identical), and the trainable count it reports equals what the optimizer holds.
"""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from helpers import load_example_plugin, micro_backbone
from mtpeft_bench.train import Schedule, Trainer
from mtpeft_bench.measure import parameter_groups, parameter_summary
from mtpeft_bench.model.multitask import build_model, task_outputs_of
from mtpeft_bench.registry import get_dataset, get_method, method_registry


load_example_plugin()
METHODS = sorted(set(method_registry.names()) | {"task_proj"})
TASKS = ("semseg", "depth", "normals", "sal", "edge")


def random_batch(specs, batch=2, size=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    batch_dict = {"image": torch.randn(batch, 3, size, size, generator=g)}
    for s in specs:
        if s.kind == "segmentation":
            t = torch.randint(0, s.num_outputs, (batch, size, size), generator=g)
            t[:, :4] = s.ignore_index
        elif s.kind == "depth":
            t = torch.rand(batch, 1, size, size, generator=g) * 5 + 0.5
        elif s.kind == "normals":
            t = torch.nn.functional.normalize(torch.randn(batch, 3, size, size, generator=g), dim=1)
        else:
            t = torch.randint(0, 2, (batch, 1, size, size), generator=g).float()
        batch_dict[s.name] = t
    return batch_dict


def build(name, tasks=TASKS):
    torch.manual_seed(0)
    specs = get_dataset("synth")().task_specs(tasks)
    cls = get_method(name)
    model, ids = build_model(cls(), cls.Config(), micro_backbone(), task_outputs_of(specs))
    return model, ids, specs


@pytest.fixture(params=METHODS)
def method_name(request):
    return request.param


def test_config_is_a_frozen_dataclass(method_name):
    cls = get_method(method_name)
    cfg = cls.Config()
    assert dataclasses.is_dataclass(cfg)
    fields = dataclasses.fields(cfg)
    if fields:
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(cfg, fields[0].name, getattr(cfg, fields[0].name))


def test_features_and_outputs(method_name):
    model, _, specs = build(method_name)
    model.eval()
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        feats = model.encoder(images)
        outputs = model(images)
    assert set(feats) == set(TASKS)
    channels = model.encoder.out_channels
    for task in TASKS:
        shapes = [tuple(f.shape) for f in feats[task]]
        assert shapes == [(2, channels[0], 8, 8), (2, channels[1], 4, 4), (2, channels[2], 2, 2),
                          (2, channels[3], 2, 2)]
        assert all(torch.isfinite(f).all() for f in feats[task])
    for spec in specs:
        assert outputs[spec.name].shape == (2, spec.num_outputs, 64, 64)
        assert torch.isfinite(outputs[spec.name]).all()
    info = model.encoder.method_info() if hasattr(model.encoder, "method_info") else {}
    json.dumps(info)  # must be storable in the result file


def test_only_trainable_parameters_change(method_name):
    model, ids, specs = build(method_name)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable, "nothing trains"
    before_params = {n: p.detach().clone() for n, p in model.named_parameters()}
    # Buffers of the encoder (e.g. cached factors) must not change; BatchNorm statistics of the heads may.
    before_buffers = {n: b.detach().clone() for n, b in model.encoder.named_buffers()}
    schedule = Schedule(lr=1e-2, warmup_lr=1e-2, min_lr=1e-2, total_steps=3, warmup_steps=0)
    trainer = Trainer(model, specs, torch.device("cpu"), schedule, amp=False, progress=False)
    batch = random_batch(specs)
    for _ in range(3):
        loss, _ = trainer.train_step(batch["image"], {s.name: batch[s.name] for s in specs})
        assert loss == loss  # not NaN
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before_params[n])}
    frozen_changed = changed - trainable
    assert not frozen_changed, f"frozen parameters changed: {sorted(frozen_changed)[:5]}"
    encoder_trainable = {n for n in trainable if n.startswith("encoder.")}
    if encoder_trainable:
        assert changed & encoder_trainable, "no trainable encoder parameter changed"
    assert changed & {n for n in trainable if n.startswith("heads.")}
    for name, buf in model.encoder.named_buffers():
        assert torch.equal(buf, before_buffers[name]), f"encoder buffer {name} changed"

    optimizer_count = sum(p.numel() for g in trainer.optimizer.param_groups for p in g["params"])
    summary = parameter_summary(parameter_groups(model, ids))
    assert summary["total_trainable"] == optimizer_count
    assert summary["total_trainable"] == sum(p.numel() for p in model.parameters() if p.requires_grad)
