"""``peft``: the tested tuner types train on a Swin, refused types get one line, options are checked."""

from __future__ import annotations

import re

import pytest
import torch

from helpers import micro_backbone
from helpers.baseline import SUM_BC, swin_t_model, trainable
from mtpeft_bench.train import Schedule, Trainer
from mtpeft_bench.errors import UserError
from mtpeft_bench.model.multitask import build_model, task_outputs_of
from mtpeft_bench.registry import get_dataset, get_method, method_registry
from mtpeft_bench.tasks.base import config_from_mapping


# Options that fit the micro Swin's 32-channel first stage (peft's defaults fit Swin-T's 96).
MICRO_OPTIONS = {"MISS": {"r": 8}, "SHIRA": {"r": 4}, "WAVEFT": {"n_frequency": 100}}
# LORA trains in the contract tests (the default type), LN_TUNING below, IA3 is counted below.
FAST_TYPES = ("LOHA", "VERA")
# Their injection runs an SVD of every adapted weight: minutes for Swin-T on a shared 2-core CPU.
SVD_AT_INJECTION = ("OSF", "PSOFT", "TINYLORA")


def config(**options):
    return config_from_mapping(get_method("peft").Config, options, "peft method")


def _tested_types():
    from mtpeft_bench.methods.peft_generic import TESTED_TYPES

    return TESTED_TYPES


def _available_types():
    from mtpeft_bench.methods.peft_generic import available_types

    return available_types()


def train_two_steps(peft_type, **options):
    """Build ``peft`` with ``peft_type`` on the micro Swin, take two steps, check what changed."""
    torch.manual_seed(0)
    specs = get_dataset("synth")().task_specs(["semseg", "depth"])
    cfg = config(peft_type=peft_type, **{**MICRO_OPTIONS.get(peft_type, {}), **options})
    model, ids = build_model(get_method("peft")(), cfg, micro_backbone(), task_outputs_of(specs))
    trainable_names = {n for n, p in model.named_parameters() if p.requires_grad}
    added = {n for n, p in model.named_parameters() if id(p) not in ids and n.startswith("encoder.")}
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    schedule = Schedule(lr=1e-2, warmup_lr=1e-2, min_lr=1e-2, total_steps=2, warmup_steps=0)
    trainer = Trainer(model, specs, torch.device("cpu"), schedule, amp=False, progress=False)
    g = torch.Generator().manual_seed(0)
    images = torch.randn(2, 3, 64, 64, generator=g)
    targets = {"semseg": torch.randint(0, specs[0].num_outputs, (2, 64, 64), generator=g),
               "depth": torch.rand(2, 1, 64, 64, generator=g) + 0.5}
    for _ in range(2):
        loss, _ = trainer.train_step(images, targets)
        assert loss == loss
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert not changed - trainable_names, f"frozen parameters changed: {sorted(changed - trainable_names)[:3]}"
    assert added & trainable_names, "the tuner added no trainable parameter"
    assert changed & added, "no parameter of the tuner changed"
    return model


@pytest.mark.parametrize("peft_type", FAST_TYPES)
def test_tuner_trains_on_a_swin(peft_type):
    train_two_steps(peft_type)


@pytest.mark.slow
@pytest.mark.parametrize("peft_type", sorted(set(_available_types()) - {*FAST_TYPES, "LORA", "LN_TUNING"}))
def test_every_tested_tuner_trains_on_a_micro_swin(peft_type):
    train_two_steps(peft_type)


@pytest.mark.slow
@pytest.mark.parametrize("peft_type", sorted(set(_available_types()) - set(SVD_AT_INJECTION)))
def test_every_tested_tuner_builds_on_swin_t(peft_type):
    from mtpeft_bench.model.backbone import create_backbone

    torch.manual_seed(0)
    backbone, _ = create_backbone("swin_tiny_patch4_window7_224", (64, 64), "none", 0.0)
    encoder = get_method("peft")().build(backbone, ["a"], config(peft_type=peft_type))
    feats = encoder(torch.randn(1, 3, 64, 64))
    feats["a"][3].square().mean().backward()
    assert any(p.grad is not None for p in encoder.parameters() if p.requires_grad)


def test_ln_tuning_trains_copies_of_the_norms_and_other_extras():
    model = train_two_steps("LN_TUNING")
    backbone = model.encoder.backbone
    block = backbone.layers[0].blocks[0]
    assert not block.norm1.base_layer.weight.requires_grad  # peft's copy trains, the original stays
    assert block.norm1.ln_tuning_layers["default"].weight.requires_grad
    assert backbone.layers[0].blocks[0].attn.relative_position_bias_table.requires_grad
    assert backbone.layers[1].downsample.reduction.weight.requires_grad


def test_peft_lora_equals_the_lora_method_count_on_swin_t():
    _, groups, _ = swin_t_model("peft", peft_type="lora", r=4)
    assert groups["method"]["trainable"] == 4 * 16 * SUM_BC == 282_624
    _, groups, _ = swin_t_model("peft", peft_type="IA3", train_extras=False)
    counts = trainable(groups)
    # (IA)^3 on qkv (one scale per output, 3C) and fc2 (one per input, 4C), nothing else.
    assert counts["method"] == 7 * SUM_BC
    assert sum(counts[g] for g in ("patch_embed", "norms", "rel_pos", "reductions", "linears")) == 0


@pytest.mark.parametrize("options, message", [
    ({"peft_type": "PROMPT_TUNING"}, "is prompt-based and needs a language model"),
    ({"peft_type": "prefix_tuning"}, "is prompt-based"),
    ({"peft_type": "POLY"}, "task id"),
    ({"peft_type": "TRAINABLE_TOKENS"}, "token embeddings"),
    ({"peft_type": "LOHAA"}, "did you mean LOHA?"),
    ({"peft_type": "ADAMSS"}, "not among the tested types"),
    ({"peft_type": "LOHA", "lora_alpha": 8}, "lora_alpha is not an option of peft type LOHA"),
    ({"peft_type": "OFT", "r": 0, "oft_block_size": 0}, "peft rejects this OFT configuration"),
    ({"peft_type": 3}, "peft_type must be a peft tuner name"),
    ({"peft_type": "LORA", "train_extras": "yes"}, "train_extras must be true or false"),
    ({"peft_type": "LORA", "rank": 4}, "unknown peft method option 'rank'"),
])
def test_refused_and_invalid_options_are_one_line_errors(options, message):
    with pytest.raises(UserError) as info:
        config(**options)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_a_layer_peft_cannot_adapt_is_a_one_line_error():
    cfg = config(peft_type="C3A", block_size=7)  # 7 divides no Swin width
    with pytest.raises(UserError) as info:
        get_method("peft")().build(micro_backbone(), ["a"], cfg)
    assert "peft could not apply C3A" in str(info.value) and "\n" not in str(info.value)


def test_ls_description_lists_exactly_the_tested_types():
    description = method_registry.index()["peft"].description
    listed = re.findall(r"\b[A-Z][A-Z0-9_]+\b", description.split(":", 1)[1])
    assert sorted(listed) == sorted(_tested_types())


def test_result_records_the_tuner_and_its_options():
    encoder = get_method("peft")().build(micro_backbone(), ["a"], config(peft_type="loha", r=2))
    info = encoder.method_info()
    assert info["peft_type"] == "LOHA" and info["peft_options"]["r"] == 2
    assert info["peft_options"]["target_modules"] == r".*\.(attn\.(qkv|proj)|mlp\.(fc1|fc2))$"


def test_a_tested_type_missing_from_an_older_peft_is_a_one_line_error(monkeypatch):
    from mtpeft_bench.methods import peft_generic

    monkeypatch.setattr(peft_generic, "available_types", lambda: ("LORA",))
    with pytest.raises(UserError) as info:
        config(peft_type="VERA")
    assert "is not in the installed peft" in str(info.value) and "\n" not in str(info.value)
