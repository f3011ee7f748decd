"""Peak arithmetic throughput of accelerators, and model FLOPs utilisation (MFU).

MFU is the share of a device's peak that a run's *model* FLOPs reach: FLOPs per image (counted
once per forward by :func:`mtpeft_bench.measure.count_flops`) times images per second, over the
device's dense peak at the precision the matrix products ran in. Training counts
:data:`TRAINING_FLOPS_FACTOR` forwards' worth per image (forward plus a backward of twice the
forward, the usual convention since PaLM's MFU), whatever the method freezes: PEFT methods skip
most weight gradients, so their hardware does less than this, and a lower MFU for them is partly
work they never do. Inference counts one forward.

Peaks are the vendors' dense figures (no structured sparsity), in FLOP/s, from the NVIDIA data
sheets and architecture white papers of each card. A device missing from the table has no MFU
(``None``), never a guessed one; ``MTBENCH_PEAK_TFLOPS`` sets a peak by hand for such a device.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch

#: Forwards' worth of FLOPs per training image: forward (1) + backward (2).
TRAINING_FLOPS_FACTOR = 3

PRECISIONS = ("fp32", "tf32", "fp16", "bf16")


@dataclass(frozen=True)
class Peak:
    """Dense peak TFLOP/s of one card by the precision its matrix products run in."""

    fp32: float
    tf32: float | None
    fp16: float
    bf16: float | None


# Ordered: the first name fragment found in torch.cuda.get_device_name() wins, so the more
# specific names (H100 PCIe, H200 NVL) come before the bare family name.
PEAKS: tuple[tuple[str, Peak], ...] = (
    ("H200 NVL", Peak(fp32=60.0, tf32=417.5, fp16=835.5, bf16=835.5)),
    ("H200", Peak(fp32=66.9, tf32=494.7, fp16=989.4, bf16=989.4)),
    ("H100 NVL", Peak(fp32=60.0, tf32=417.5, fp16=835.5, bf16=835.5)),
    ("H100 PCIe", Peak(fp32=51.2, tf32=378.0, fp16=756.0, bf16=756.0)),
    ("H100", Peak(fp32=66.9, tf32=494.7, fp16=989.4, bf16=989.4)),  # SXM5 ("H100 80GB HBM3")
    ("A100", Peak(fp32=19.5, tf32=156.0, fp16=312.0, bf16=312.0)),
    ("L40S", Peak(fp32=91.6, tf32=183.0, fp16=362.1, bf16=362.1)),
    ("L4", Peak(fp32=30.3, tf32=60.0, fp16=121.0, bf16=121.0)),
    ("A10", Peak(fp32=31.2, tf32=62.5, fp16=125.0, bf16=125.0)),
    ("RTX 4090", Peak(fp32=82.6, tf32=82.6, fp16=165.2, bf16=165.2)),  # fp32 accumulation
    ("V100", Peak(fp32=15.7, tf32=None, fp16=125.0, bf16=None)),
)


def peak_for(device_name: str) -> Peak | None:
    """The table's entry for a CUDA device name (``torch.cuda.get_device_name()``), or None."""
    for fragment, peak in PEAKS:
        if fragment in device_name:
            return peak
    return None


def peak_flops(device_name: str, precision: str) -> float | None:
    """Dense peak FLOP/s of ``device_name`` at ``precision`` (one of :data:`PRECISIONS`).

    ``MTBENCH_PEAK_TFLOPS`` (a number, in TFLOP/s) overrides the table for any device and precision.
    None where the device or the precision is unknown.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    override = os.environ.get("MTBENCH_PEAK_TFLOPS")
    if override:
        return float(override) * 1e12
    peak = peak_for(device_name)
    value = None if peak is None else getattr(peak, precision)
    return None if value is None else value * 1e12


def matmul_precision(device: torch.device, amp: bool, amp_dtype: str) -> str:
    """The precision a run's matrix products use: the autocast dtype under AMP on CUDA, else fp32
    (tf32 where torch lets float32 matrix products use TF32 tensor cores)."""
    if device.type == "cuda" and amp:
        return "bf16" if amp_dtype == "bfloat16" else "fp16"
    if device.type == "cuda" and torch.backends.cuda.matmul.allow_tf32:
        return "tf32"
    return "fp32"


def model_flops_utilization(flops_per_image: float | None, images_per_s: float | None, peak: float | None,
                            training: bool) -> tuple[float | None, float | None]:
    """``(achieved FLOP/s, fraction of peak)`` of a measured rate; either is None when unknown.

    Args:
        flops_per_image: forward FLOPs of one image.
        images_per_s: measured throughput (training or inference).
        peak: the device's peak FLOP/s at the run's precision (:func:`peak_flops`).
        training: count :data:`TRAINING_FLOPS_FACTOR` forwards per image instead of one.
    """
    if not flops_per_image or not images_per_s:
        return None, None
    achieved = flops_per_image * images_per_s * (TRAINING_FLOPS_FACTOR if training else 1)
    return achieved, (achieved / peak if peak else None)


#: The record's words for how its utilisation figures count FLOPs (``efficiency.utilization.convention``).
FLOPS_CONVENTION = (f"model FLOPs: efficiency.flops_per_image (one forward) × images/s; training counts "
                    f"{TRAINING_FLOPS_FACTOR} forwards per image (forward + a backward of twice the forward) whatever "
                    "the method freezes, inference one; MFU = achieved over the dense peak of the devices at the "
                    "run's precision")


def device_name(device: torch.device) -> str:
    """What a device is called: the CUDA device name, else the processor (as the record's environment says)."""
    import platform

    return torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()


def device_peak(device: torch.device, precision: str) -> tuple[float | None, str | None]:
    """``(peak FLOP/s, where it came from)`` of one device: ``"MTBENCH_PEAK_TFLOPS"``, ``"table"`` or None.

    The table is consulted for CUDA devices only: a CPU's processor string is no accelerator name,
    and a fragment such as ``L4`` must not match one by chance.
    """
    if os.environ.get("MTBENCH_PEAK_TFLOPS"):
        return peak_flops(device_name(device), precision), "MTBENCH_PEAK_TFLOPS"
    if device.type != "cuda":
        return None, None
    peak = peak_flops(device_name(device), precision)
    return peak, ("table" if peak is not None else None)


def utilization(flops_per_image: float | None, train_images_per_s: float | None,
                inference_images_per_s: float | None, device: torch.device, amp: bool, amp_dtype: str,
                devices: int = 1) -> dict[str, Any]:
    """The ``efficiency.utilization`` block of a result record (and of ``mtbench bench``'s models).

    Args:
        flops_per_image: forward FLOPs of one image (the unmerged model, whose rates these are).
        train_images_per_s, inference_images_per_s: measured rates, summed over ``devices`` processes.
        device, amp, amp_dtype: where and in which precision the matrix products ran.
        devices: processes (one device each) the rates are summed over; the peak is per device, so
            MFU divides by ``peak × devices`` (rank 0's device stands for all of them).

    Returns:
        ``{"convention", "training_flops_factor", "precision", "device_name", "peak_flops_per_s",
        "peak_source", "devices", "train": {"achieved_flops_per_s", "mfu"}, "inference": {...}}``;
        ``peak_flops_per_s`` and the ``mfu`` values are None where the device has no known peak.
    """
    precision = matmul_precision(device, amp, amp_dtype)
    peak, source = device_peak(device, precision)
    total_peak = None if peak is None else peak * devices
    block = {"convention": FLOPS_CONVENTION, "training_flops_factor": TRAINING_FLOPS_FACTOR, "precision": precision,
             "device_name": device_name(device), "peak_flops_per_s": peak, "peak_source": source, "devices": devices}
    for key, rate, training in (("train", train_images_per_s, True), ("inference", inference_images_per_s, False)):
        achieved, fraction = model_flops_utilization(flops_per_image, rate, total_peak, training)
        block[key] = {"achieved_flops_per_s": achieved, "mfu": fraction}
    return block
