"""Backbone creation and weight loading (timm and original Microsoft checkpoints, safe loading)."""

from __future__ import annotations

import pickle
import re

import pytest
import torch
from safetensors.torch import save_file

from helpers import PicklePayload
from mtpeft_bench.errors import UserError
from mtpeft_bench.model.backbone import create_backbone, feature_channels


def _random_weights():
    torch.manual_seed(123)
    backbone, _ = create_backbone("swin_micro", (64, 64), "none")
    with torch.no_grad():
        for p in backbone.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    return backbone


def _assert_same(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], rtol=0, atol=0, msg=k)


def test_swin_tiny_counts_and_channels():
    backbone, provenance = create_backbone("swin_tiny_patch4_window7_224", (448, 448), "none")
    assert sum(p.numel() for p in backbone.parameters()) == 27_517_818
    assert feature_channels(backbone) == [192, 384, 768, 768]
    assert provenance["source"] == "none"


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_load_timm_state_dict(tmp_path, suffix):
    source = _random_weights()
    path = tmp_path / f"w{suffix}"
    state = {k: v.contiguous() for k, v in source.state_dict().items()}
    if suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, path)
    loaded, provenance = create_backbone("swin_micro", (64, 64), str(path))
    _assert_same(source, loaded)
    assert provenance["source"] == "file" and len(provenance["sha256"]) == 64


def test_load_original_microsoft_checkpoint(tmp_path):
    """Original Swin checkpoints keep PatchMerging at the end of a stage, nest weights under
    "model", name the classifier `head` and carry index buffers; convert_swin_state converts them (whatever the timm version)."""
    source = _random_weights()
    ms = {}
    for key, value in source.state_dict().items():
        key = re.sub(r"layers\.(\d+)\.downsample", lambda m: f"layers.{int(m.group(1)) - 1}.downsample", key)
        ms[key] = value
        if key.endswith("relative_position_bias_table"):
            ms[key.replace("bias_table", "index")] = torch.zeros(16, 16, dtype=torch.long)
    ms["norm.weight"] = torch.ones(256)
    ms["norm.bias"] = torch.zeros(256)
    ms["head.weight"] = torch.zeros(1000, 256)
    ms["head.bias"] = torch.zeros(1000)
    path = tmp_path / "swin_micro_ms.pth"
    torch.save({"model": ms, "epoch": 300}, path)
    loaded, _ = create_backbone("swin_micro", (64, 64), str(path))
    _assert_same(source, loaded)


def test_checkpoint_of_another_model_is_refused(tmp_path):
    other, _ = create_backbone("swin_tiny_patch4_window7_224", (224, 224), "none")
    path = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(path))
    with pytest.raises(UserError, match="does not fit"):
        create_backbone("swin_micro", (64, 64), str(path))


def test_malicious_pickle_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    with open(path, "wb") as handle:
        pickle.dump({"model": PicklePayload()}, handle)
    with pytest.raises(UserError, match="cannot read weights"):
        create_backbone("swin_micro", (64, 64), str(path))
    assert not PicklePayload.executed


def test_hub_weights_offline_fail_in_one_line():
    with pytest.raises(UserError) as info:
        create_backbone("swin_tiny_patch4_window7_224", (224, 224), "timm")
    assert "hub" in str(info.value) and "\n" not in str(info.value)


def test_bad_names():
    with pytest.raises(UserError, match="unknown backbone"):
        create_backbone("swin_nope", (64, 64), "none")
    with pytest.raises(UserError, match="not a timm SwinTransformer"):
        create_backbone("resnet18", (64, 64), "none")
    with pytest.raises(UserError, match="no file at"):
        create_backbone("swin_micro", (64, 64), "/no/such/file.pth")
    with pytest.raises(UserError, match="no pretrained weights"):
        create_backbone("swin_micro", (64, 64), "timm")
