"""Peak table lookup and model FLOPs utilisation (mtpeft_bench/hardware.py)."""

import pytest
import torch

from mtpeft_bench import hardware


def test_specific_names_win_over_family_names():
    assert hardware.peak_for("NVIDIA H100 PCIe").bf16 == 756.0
    assert hardware.peak_for("NVIDIA H100 80GB HBM3").bf16 == 989.4
    assert hardware.peak_for("NVIDIA H200 NVL").bf16 == 835.5
    assert hardware.peak_for("NVIDIA L40S").fp32 == 91.6  # not L4's
    assert hardware.peak_for("Some Unknown GPU") is None


def test_peak_flops_in_flop_per_s_and_unknowns(monkeypatch):
    monkeypatch.delenv("MTBENCH_PEAK_TFLOPS", raising=False)
    assert hardware.peak_flops("NVIDIA A100-SXM4-80GB", "bf16") == pytest.approx(312e12)
    assert hardware.peak_flops("Tesla V100-SXM2-32GB", "bf16") is None  # V100 has no bf16
    assert hardware.peak_flops("cpu", "fp32") is None
    with pytest.raises(ValueError):
        hardware.peak_flops("NVIDIA H200", "int8")
    monkeypatch.setenv("MTBENCH_PEAK_TFLOPS", "2.5")
    assert hardware.peak_flops("cpu", "fp32") == pytest.approx(2.5e12)


def test_mfu_counts_three_forwards_per_training_image():
    # 1 GFLOP forward, 100 images/s: training does 3e11 FLOP/s; on a 1e12 peak that is 30 %
    achieved, fraction = hardware.model_flops_utilization(1e9, 100.0, 1e12, training=True)
    assert achieved == pytest.approx(3e11) and fraction == pytest.approx(0.3)
    achieved, fraction = hardware.model_flops_utilization(1e9, 100.0, 1e12, training=False)
    assert achieved == pytest.approx(1e11) and fraction == pytest.approx(0.1)
    assert hardware.model_flops_utilization(1e9, 100.0, None, training=True) == (pytest.approx(3e11), None)
    assert hardware.model_flops_utilization(None, 100.0, 1e12, training=True) == (None, None)


def test_precision_of_a_run():
    cpu = torch.device("cpu")
    assert hardware.matmul_precision(cpu, True, "bfloat16") == "fp32"  # AMP is CUDA-only in mtbench
    cuda = torch.device("cuda")
    assert hardware.matmul_precision(cuda, True, "bfloat16") == "bf16"
    assert hardware.matmul_precision(cuda, True, "float16") == "fp16"
