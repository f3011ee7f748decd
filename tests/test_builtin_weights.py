"""The shipped backbone weights: they match their model card, load through --weights builtin (SHA
checked), differ from a random initialisation, and are the smoke and cpu presets' default."""

from __future__ import annotations

import json
import re
import shutil

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from mtpeft_bench.config import resolve
from mtpeft_bench.digest import sha256_of
from mtpeft_bench.errors import UserError
from mtpeft_bench.model.backbone import create_backbone
from mtpeft_bench.model import builtin_weights


SHIPPED = ("swin_micro", "swin_mini")


def test_card_lists_the_shipped_backbones():
    assert builtin_weights.available() == sorted(SHIPPED)


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_file_matches_its_card(name):
    entry = builtin_weights.card()["models"][name]
    path = builtin_weights.weights_file(name)
    digest = sha256_of(path)
    assert digest == entry["sha256"]
    readme = (builtin_weights.WEIGHTS_DIR / "README.md").read_text(encoding="utf-8")
    assert digest in readme and entry["command"] in readme
    with safe_open(str(path), framework="pt") as f:
        info = json.loads(f.metadata()["mtbench"])
        dtypes = {f.get_tensor(k).dtype for k in f.keys()}
    assert info["backbone"] == name
    assert info["pretrain_config"] == entry["pretrain_config"]
    assert info["steps_done"] == entry["pretrain_config"]["steps"]
    assert dtypes == {getattr(torch, entry["stored_dtype"])}
    assert path.stat().st_size < 7_000_000
    # the command on the card is the one that makes this configuration
    for key in ("config", "seed", "steps"):
        assert re.search(rf"--{key} {entry['pretrain_config'][key]}\b", entry["command"])
    assert len(entry["first_losses"]) >= 10 and entry["loss_curve"][-1][0] == entry["pretrain_config"]["steps"]


@pytest.mark.parametrize("name, size", [("swin_micro", (64, 64)), ("swin_micro", (96, 128)), ("swin_mini", (96, 128))])
def test_builtin_weights_load_in_fp32(name, size):
    backbone, provenance = create_backbone(name, size, "builtin")
    assert provenance["source"] == "builtin" and provenance["id"] == f"mtbench/{name}"
    assert provenance["sha256"] == sha256_of(builtin_weights.weights_file(name))
    stored = load_file(str(builtin_weights.weights_file(name)))
    state = backbone.state_dict()
    assert all(p.dtype == torch.float32 for p in backbone.parameters())
    for key in ("patch_embed.proj.weight", "layers.2.blocks.1.mlp.fc1.weight", "layers.3.downsample.reduction.weight"):
        assert torch.equal(state[key], stored[key].float())
    random, _ = create_backbone(name, size, "none")
    assert not torch.allclose(random.state_dict()["layers.2.blocks.1.mlp.fc1.weight"],
                              state["layers.2.blocks.1.mlp.fc1.weight"])
    assert torch.isfinite(backbone.forward_features(torch.randn(1, 3, *size))).all()


def test_altered_file_is_refused(tmp_path, monkeypatch):
    copy = tmp_path / "weights"
    shutil.copytree(builtin_weights.WEIGHTS_DIR, copy)
    target = copy / builtin_weights.card()["models"]["swin_micro"]["file"]
    data = bytearray(target.read_bytes())
    data[-1] ^= 0x01
    target.write_bytes(bytes(data))
    monkeypatch.setattr(builtin_weights, "WEIGHTS_DIR", copy)
    with pytest.raises(UserError, match="does not match its model card"):
        create_backbone("swin_micro", (64, 64), "builtin")


def test_backbone_without_builtin_weights_is_one_line():
    with pytest.raises(UserError, match="ships no built-in weights for backbone 'swin_tiny_patch4_window7_224'"):
        create_backbone("swin_tiny_patch4_window7_224", (64, 64), "builtin")


def test_presets_use_builtin_weights_offline():
    smoke, cpu, paper = (resolve(p, {}, {}) for p in ("smoke", "cpu", "paper"))
    assert (smoke.backbone, smoke.weights) == ("swin_micro", "builtin")
    assert (cpu.backbone, cpu.weights) == ("swin_mini", "builtin")
    assert (paper.backbone, paper.weights) == ("swin_tiny_patch4_window7_224", "timm")
    assert resolve("smoke", {"weights": "none"}, {}).weights == "none"


@pytest.mark.slow
@pytest.mark.parametrize("name", SHIPPED)
def test_card_command_reproduces_first_losses(name, tmp_path):
    """The card's configuration, run again for a few steps, gives the card's first losses (renders
    the 4,000-image corpus first: minutes)."""
    from mtpeft_bench.pretraining.card import compare_first_losses
    from mtpeft_bench.pretraining.config import PretrainConfig
    from mtpeft_bench.pretraining.loop import pretrain

    entry = builtin_weights.card()["models"][name]
    cfg = PretrainConfig(**{**entry["pretrain_config"], "steps": 5})
    record = pretrain(cfg, tmp_path / "w.safetensors", progress=False)
    result = compare_first_losses(record["history"], entry["first_losses"])
    assert result["steps"] == 5 and result["match"], result


def test_first_loss_comparison_can_fail():
    from mtpeft_bench.pretraining.card import compare_first_losses

    history = [{"loss": 1.0}, {"loss": 0.9}]
    assert compare_first_losses(history, [1.0, 0.9, 0.8])["match"]
    assert not compare_first_losses(history, [1.0, 0.91])["match"]
    assert not compare_first_losses([], [1.0])["match"]
