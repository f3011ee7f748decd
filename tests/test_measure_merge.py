"""The optional ``merge_for_inference`` encoder capability, exercised with a test method.

``lowrank_fc2`` (helpers/lowrank.py) adds a rank-2 term ``s·B·A`` to every block's ``mlp.fc2``
(LoRA-style, but with B initialised non-zero so that merging has something to fold) and can merge
it into the frozen weight. The runner must measure both forms without asking which method it runs.
"""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from helpers import micro_backbone
from helpers.lowrank import LowRankFc2, LowRankLinear
from mtpeft_bench.cli import main
from mtpeft_bench.measure import count_flops, merged_model, profile_inference
from mtpeft_bench.model import build_model, task_outputs_of
from mtpeft_bench.registry import get_dataset


def build(method_cls, tasks=("semseg", "depth")):
    torch.manual_seed(0)
    specs = get_dataset("synth")().task_specs(tasks)
    model, _ = build_model(method_cls(), method_cls.Config(), micro_backbone(), task_outputs_of(specs))
    return model.eval()


def test_merged_model_computes_the_same_and_leaves_the_trained_one_alone():
    model = build(LowRankFc2)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    merged = merged_model(model)
    assert merged is not None and merged.encoder is not model.encoder
    assert merged.heads is model.heads  # the heads are shared, not copied
    assert not any(isinstance(m, LowRankLinear) for m in merged.modules())
    assert sum(isinstance(m, LowRankLinear) for m in model.modules()) == 5  # one per block, depths 1-1-2-1
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        a, b = model(images), merged(images)
    for task in a:
        torch.testing.assert_close(b[task], a[task], rtol=1e-4, atol=1e-4)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())


def test_merging_removes_exactly_the_low_rank_flops():
    """Per block, the rank-2 path on fc2 (4C → C) costs 2·T·4C·r + 2·T·r·C = 20·T·C FLOPs at r = 2.

    Micro Swin at 64 px, batch 1, tokens × width per stage: 256×32, 64×64, 16×128 (2 blocks), 4×256, so
    20 · (8192 + 4096 + 2·2048 + 1024) = 20 · 17,408 = 348,160.
    """
    model = build(LowRankFc2)
    one = torch.randn(1, 3, 64, 64)
    unmerged = count_flops(model, one)
    merged = count_flops(merged_model(model), one)
    assert unmerged["encoder"] - merged["encoder"] == 348_160
    assert unmerged["decoder"] == merged["decoder"]


def test_profile_reports_both_forms():
    model = build(LowRankFc2)
    out = profile_inference(model, (64, 64), batch_size=2, device=torch.device("cpu"), warmup=1, repeats=2)
    assert out["merged"] is not None
    assert out["unmerged"]["flops_per_image"] - out["merged"]["flops_per_image"] == 348_160
    for form in ("merged", "unmerged"):
        assert out[form]["latency_ms"] > 0 and out[form]["images_per_s"] > 0
    assert out["merged"]["max_abs_diff"] < 1e-3


def test_no_capability_no_merge():
    class Plain(nn.Module):
        encoder = nn.Identity()

    assert merged_model(Plain()) is None

    class Declines(nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = nn.Identity()
            self.encoder.merge_for_inference = lambda: None  # this configuration cannot merge

    assert merged_model(Declines()) is None


def test_the_runner_records_merged_and_unmerged_inference(lowrank_method, tmp_path, capsys):
    args = ["run", "--method", "lowrank_fc2", "--preset", "smoke", "--out", str(tmp_path), "--tasks", "semseg,sal",
            "--set", "data.num_train=16", "--set", "data.num_val=4", "--set", "batch_size=8", "--epochs", "1",
            "--set", "measure_repeats=2", "--set", "measure_warmup=1", "--no-progress"]
    with pytest.raises(SystemExit) as info:
        main(args)
    assert info.value.code == 0, capsys.readouterr().err
    record = json.loads(next(tmp_path.rglob("*.json")).read_text())
    eff = record["efficiency"]
    inference = eff["inference"]
    assert inference["batch_size"] == 8 and inference["repeats"] == 2
    assert inference["unmerged"]["flops_per_image"] - inference["merged"]["flops_per_image"] == 348_160
    assert inference["merged"]["images_per_s"] > 0 and inference["merged"]["latency_ms"] > 0
    assert eff["flops_per_image"] == inference["unmerged"]["flops_per_image"]
    assert eff["latency_ms"] == inference["unmerged"]["latency_ms"]
    assert "FlopCounterMode" in eff["flops_counted"]
    assert "GFLOPs/image" in capsys.readouterr().out
