"""pytest-benchmark figures for DiTASK (run: ``python -m pytest benchmarks -q``; add ``-m gpu`` on CUDA).

- the CPA warp (forward + backward) of every Swin-T spectrum, PyTorch reference vs fused Triton;
- one training step of DiTASK, DiTASK recomputing its SVDs every forward (the official code's
  cost), LoRA (peft) and full fine-tuning, on the same Swin-T multi-task model;
- the side-by-side ratios of :mod:`ditask_speed` (alternating steps, medians), stored in the
  benchmark's ``extra_info``.
"""

from __future__ import annotations

import pytest
import torch

import ditask_speed as speed


@pytest.mark.parametrize("kernel", ["torch", pytest.param("triton", marks=pytest.mark.gpu)])
def test_cpa_warp_swin_t(benchmark, device, kernel):
    if kernel == "triton" and device.type != "cuda":
        pytest.skip("the Triton kernel is timed on CUDA only")
    step = speed.cpa_step(kernel, device)

    def run():
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()

    benchmark.group = "cpa warp fwd+bwd (Swin-T, 72 shared + 48 task spectra)"
    benchmark.pedantic(run, rounds=20, warmup_rounds=3)


@pytest.mark.parametrize("variant", ["full", "ditask", "ditask_svd", "lora"])
def test_train_step(benchmark, device, setting, variant):
    specs = speed.task_specs()
    trainer = speed.build_variant(variant, specs, setting["image"], device, setting["amp"])
    images, targets = speed.random_batch(specs, setting["batch"], setting["image"], device)

    def run():
        trainer.train_step(images, targets)
        if device.type == "cuda":
            torch.cuda.synchronize()

    benchmark.group = f"train step, Swin-T {setting['image']}px batch {setting['batch']}"
    benchmark.pedantic(run, rounds=setting["rounds"], warmup_rounds=1)


def test_side_by_side(benchmark, device, setting):
    result = benchmark.pedantic(
        speed.run, args=(["full", "ditask", "ditask_svd"], setting["image"], setting["batch"], setting["rounds"], 1,
                         str(device), setting["amp"], 0), rounds=1, iterations=1)
    benchmark.extra_info.update({k: round(v, 3) for k, v in result["ratios"].items()})
    for k, v in result["ratios"].items():
        print(f"{k}: {v:.2f}")
