"""Inference measurements: FLOPs (checked against hand counts), interleaved timing, latency."""

from __future__ import annotations

import time

import torch
from torch import nn

from helpers import micro_backbone
from mtpeft_bench.measure import Throughput, count_flops, profile_inference, time_forwards
from mtpeft_bench.model import build_model, task_outputs_of
from mtpeft_bench.registry import get_dataset, get_method


def micro_model(method="full", tasks=("semseg", "depth")):
    torch.manual_seed(0)
    specs = get_dataset("synth")().task_specs(tasks)
    cls = get_method(method)
    model, _ = build_model(cls(), cls.Config(), micro_backbone(), task_outputs_of(specs))
    return model.eval()


def test_flops_of_conv_and_linear_by_hand():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Flatten(), nn.Linear(8 * 10 * 10, 5), nn.ReLU())
    flops = count_flops(model, torch.randn(2, 3, 10, 10))
    # conv: 2 FLOPs × (2 images × 8 channels × 10 × 10 outputs) × (3 × 3 × 3 inputs each) = 86,400
    # linear: 2 × 2 rows × 800 × 5 = 16,000; bias add and ReLU are element-wise: not counted
    assert flops == {"total": 86_400 + 16_000}


def test_flops_of_the_micro_swin_encoder_by_hand():
    """The micro Swin (embed 32, depths 1-1-2-1, window 4) at 64 px, batch 1.

    Tokens T and width C per stage: (256, 32), (64, 64), (16, 128), (4, 256); T·C² = 262,144 in every stage.
    - patch embedding conv 3→32, kernel 4, stride 4, 16×16 outputs: 2 · 32·256 · 48 = 786,432
    - each block's linears: qkv (C→3C), proj (C→C), fc1 (C→4C), fc2 (4C→C): 2·T·C²·(3+1+4+4) = 24·T·C²
      = 24 · 262,144 = 6,291,456 in every stage, × 5 blocks = 31,457,280
    - attention over windows of n tokens: q·kᵀ and attn·v cost 2·n²·C each per window (all heads), and
      there are T/n windows → 4·n·T·C. n = 16 (window 4×4) in stages 1-3 (stage 3's 4×4 map is one
      window), n = 4 in stage 4 (the window is clamped to the 2×2 map):
      4·16·256·32 = 524,288; 4·16·64·64 = 262,144; 4·16·16·128 = 131,072 × 2 blocks; 4·4·4·256 = 16,384;
      sum 1,064,960
    - PatchMerging reductions 4C→2C (no bias) on the merged tokens: 2 · T_out · 4C · 2C = 1,048,576 × 3
    Total 786,432 + 31,457,280 + 1,064,960 + 3,145,728 = 36,454,400.
    """
    model = micro_model()
    flops = count_flops(model, torch.randn(1, 3, 64, 64))
    assert flops["encoder"] == 36_454_400
    assert flops["encoder"] + flops["decoder"] == flops["total"]
    assert flops["decoder"] > 0
    # Twice the images, twice the FLOPs.
    assert count_flops(model, torch.randn(2, 3, 64, 64))["total"] == 2 * flops["total"]


class Sleeper(nn.Module):
    """Counts its calls (and whom it followed) and sleeps a fixed time."""

    def __init__(self, name, log, seconds=0.0):
        super().__init__()
        self.name, self.log, self.seconds = name, log, seconds

    def forward(self, x):
        self.log.append(self.name)
        if self.seconds:
            time.sleep(self.seconds)
        return x


def test_time_forwards_interleaves_and_skips_warmup():
    log: list[str] = []
    models = {"a": Sleeper("a", log), "b": Sleeper("b", log, seconds=0.02)}
    times = time_forwards(models, torch.zeros(1), torch.device("cpu"), warmup=2, repeats=3)
    # 2 warm-up + 3 timed rounds, taking turns in alternating order
    assert log == ["a", "b", "b", "a", "a", "b", "b", "a", "a", "b"]
    assert len(times["a"]) == len(times["b"]) == 3
    assert min(times["b"]) >= 0.02 and max(times["a"]) < 0.02


def test_throughput_counts_only_after_warmup():
    meter = Throughput(torch.device("cpu"), warmup=2)
    for _ in range(2):
        with meter.time(100):
            pass
    assert meter.last_rate is None  # nothing timed yet
    for _ in range(2):
        with meter.time(4):
            time.sleep(0.01)
    assert meter.images == 8
    assert 0 < meter.last_rate <= 8 / 0.02


def test_profile_inference_without_merge():
    model = micro_model()
    out = profile_inference(model, (64, 64), batch_size=2, device=torch.device("cpu"), warmup=1, repeats=2)
    assert out["merged"] is None
    assert out["unmerged"]["encoder_flops_per_image"] == 36_454_400
    assert out["unmerged"]["latency_ms"] > 0
    assert out["unmerged"]["images_per_s"] is None  # only timed at the batch size to compare with a merge
    skipped = profile_inference(model, (64, 64), 2, torch.device("cpu"), warmup=0, repeats=0)
    assert skipped["unmerged"]["latency_ms"] is None
    assert skipped["unmerged"]["flops_per_image"] == out["unmerged"]["flops_per_image"]


def test_freezing_does_not_change_the_forward_cost():
    one = torch.randn(1, 3, 64, 64)
    assert count_flops(micro_model("decoder_only"), one) == count_flops(micro_model("full"), one)
