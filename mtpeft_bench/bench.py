"""Micro-benchmarks (``mtbench bench``): one method's training step and inference beside ``full``.

Both models are built on the same backbone, image size, batch and tasks, with random weights and
random inputs and targets (cost does not depend on the values). Timing uses the code the runs
use: the training loop's :class:`~mtpeft_bench.train.Trainer` (its ``train_step`` and
:class:`~mtpeft_bench.measure.Throughput`: forward, loss, backward, clipping and the AdamW step) and
:func:`~mtpeft_bench.measure.profile_inference`-style timing of forwards. The models take turns
step by step in alternating order (a, b, b, a, ...), so a busy phase of a shared machine slows
both alike and neither always runs first; the ratios are what to read. Peak memory is measured per model on CUDA only (on a CPU the process's peak RSS cannot be
split between two models of one process).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch

from mtpeft_bench.hardware import TRAINING_FLOPS_FACTOR
from mtpeft_bench.measure import (Throughput, count_flops, merged_model, parameter_groups, parameter_summary,
                                  reset_peak_memory, synchronize, time_forwards, turns)
from mtpeft_bench.task_kinds import TASK_KIND_TABLE

#: The autocast dtype of ``mtbench bench --amp`` (training steps, timed forwards and the MFU peak).
AMP_DTYPE = "float16"


@dataclass
class BenchSetup:
    """What to compare and how long to time it."""

    method: str
    baseline: str = "full"
    dataset: str = "synth"
    tasks: tuple[str, ...] | None = None
    backbone: str = "swin_micro"
    image_size: tuple[int, int] = (64, 64)
    batch_size: int = 8
    steps: int = 20
    warmup: int = 5
    device: str = "auto"
    amp: bool = False
    method_options: Mapping[str, Any] | None = None


def random_targets(specs: Sequence[Any], batch: int, image_size: tuple[int, int], device: torch.device,
                   seed: int = 0) -> dict[str, torch.Tensor]:
    """Targets of the right format for each task kind (see ``tasks/base.py``), random values."""
    g = torch.Generator().manual_seed(seed)
    size = (image_size[0], image_size[1])
    return {spec.name: TASK_KIND_TABLE[spec.kind].random_target(spec, batch, size, g).to(device) for spec in specs}


def _build(name: str, specs, setup: BenchSetup, options: Mapping[str, Any], device: torch.device):
    from mtpeft_bench.model.backbone import create_backbone
    from mtpeft_bench.model.multitask import build_model, task_outputs_of
    from mtpeft_bench.registry import get_method
    from mtpeft_bench.tasks.base import config_from_mapping

    cls = get_method(name)
    cfg = config_from_mapping(cls.Config, options, f"{name} method")
    torch.manual_seed(0)
    backbone, _ = create_backbone(setup.backbone, setup.image_size, "none", 0.0)
    model, ids = build_model(cls(), cfg, backbone, task_outputs_of(specs))
    return model.to(device), ids


def _trainer(model, specs, device, setup: BenchSetup):
    from mtpeft_bench.train import Schedule, Trainer

    total = setup.warmup + setup.steps
    schedule = Schedule(lr=1e-4, warmup_lr=1e-4, min_lr=1e-4, total_steps=total, warmup_steps=0)
    trainer = Trainer(model, specs, device, schedule, amp=setup.amp, amp_dtype=AMP_DTYPE, progress=False)
    trainer.train_throughput = Throughput(device, warmup=setup.warmup)
    return trainer


def _peak_train_memory(name, specs, setup, options, device, images, targets) -> float | None:
    """CUDA only: max allocated (MB) over two training steps of this model alone on the device."""
    if device.type != "cuda":
        return None
    model, _ = _build(name, specs, setup, options, device)
    trainer = _trainer(model, specs, device, setup)
    torch.cuda.empty_cache()
    reset_peak_memory(device)
    for _ in range(2):
        trainer.train_step(images, targets)
    synchronize(device)
    peak = torch.cuda.max_memory_allocated(device) / 2**20
    del trainer, model
    torch.cuda.empty_cache()
    return peak


def run_bench(setup: BenchSetup) -> dict[str, Any]:
    """Time ``setup.method`` and ``setup.baseline`` side by side.

    Returns:
        ``{"setup": {...}, "models": {name: {metric: value}}, "ratios": {metric: method / baseline}}``
        with metrics ``train_step_ms`` (median), ``train_images_per_s``, ``inference_images_per_s``
        (at the batch size), ``latency_ms`` (batch 1, median), ``gflops_per_image``,
        ``trainable_params``, ``peak_train_memory_mb`` (CUDA only), ``train_tflops_per_s`` and
        ``inference_tflops_per_s`` (model FLOP/s, :func:`mtpeft_bench.hardware.utilization`),
        ``train_mfu`` and ``inference_mfu`` (fractions of the peak, None where it is unknown); a merged
        form of the method adds the row ``<method> (merged)`` for the inference metrics. ``"peak"``
        says what MFU divides by: ``precision``, ``device_name``, ``peak_flops_per_s``, ``peak_source``.
    """
    from mtpeft_bench.train import autocast as _autocast  # aliased: a local variable below is named autocast
    from mtpeft_bench.registry import get_dataset
    from mtpeft_bench.running.setup import pick_device

    device = pick_device(setup.device)
    specs = get_dataset(setup.dataset)().task_specs(setup.tasks)
    names = [setup.method] if setup.method == setup.baseline else [setup.method, setup.baseline]
    options = {setup.baseline: {}}
    options[setup.method] = dict(setup.method_options or {})  # also when the method is its own baseline
    from mtpeft_bench.registry import get_method
    from mtpeft_bench.tasks.base import config_from_mapping

    config_from_mapping(get_method(setup.method).Config, options[setup.method], f"{setup.method} method")  # fail fast
    images = torch.randn(setup.batch_size, 3, *setup.image_size, generator=torch.Generator().manual_seed(0)).to(device)
    targets = random_targets(specs, setup.batch_size, setup.image_size, device)

    results: dict[str, dict[str, Any]] = {name: {} for name in names}
    for name in names:
        results[name]["peak_train_memory_mb"] = _peak_train_memory(name, specs, setup, options[name], device, images,
                                                                   targets)
    models, trainers, step_times = {}, {}, {name: [] for name in names}
    for name in names:
        model, ids = _build(name, specs, setup, options[name], device)
        models[name] = model
        trainers[name] = _trainer(model, specs, device, setup)
        results[name]["trainable_params"] = parameter_summary(parameter_groups(model, ids))["total_trainable"]
    for step in range(setup.warmup + setup.steps):
        for name in turns(names, step):  # taking turns, in alternating order
            trainer = trainers[name]
            before = trainer.train_throughput.seconds
            trainer.train_step(images, targets)
            if step >= setup.warmup:
                step_times[name].append(trainer.train_throughput.seconds - before)
    for name in names:
        results[name]["train_step_ms"] = 1000 * statistics.median(step_times[name])
        results[name]["train_images_per_s"] = trainers[name].train_throughput.last_rate

    forms = {name: models[name].eval() for name in names}
    merged = merged_model(models[setup.method])
    if merged is not None:
        forms[f"{setup.method} (merged)"] = merged.eval()
        results[f"{setup.method} (merged)"] = {"trainable_params": None, "peak_train_memory_mb": None,
                                               "train_step_ms": None, "train_images_per_s": None}
    autocast = lambda: _autocast(device, setup.amp, AMP_DTYPE)  # noqa: E731
    one = images[:1]
    for name, seconds in time_forwards(forms, one, device, setup.warmup, setup.steps, autocast).items():
        results[name]["latency_ms"] = 1000 * statistics.median(seconds)
    for name, seconds in time_forwards(forms, images, device, setup.warmup, setup.steps, autocast).items():
        results[name]["inference_images_per_s"] = setup.batch_size * len(seconds) / sum(seconds)
    for name, form in forms.items():
        results[name]["gflops_per_image"] = count_flops(form, one)["total"] / 1e9
    peak = _add_utilization(results, device, setup.amp)

    base = results[setup.baseline]
    ratios = {name: {k: (v / base[k] if v is not None and base.get(k) else None) for k, v in values.items()}
              for name, values in results.items()}
    return {"setup": {**setup.__dict__, "device": str(device)}, "models": results, "ratios": ratios, "peak": peak}


def _add_utilization(results: dict[str, dict[str, Any]], device: torch.device, amp: bool) -> dict[str, Any]:
    """Add each model's achieved TFLOP/s and MFU (training and inference) to ``results``; return the peak
    they were divided by (precision, device name, FLOP/s and its source; FLOP/s None where unknown)."""
    from mtpeft_bench.hardware import utilization

    block: dict[str, Any] = {}
    for values in results.values():
        block = utilization(values["gflops_per_image"] * 1e9, values["train_images_per_s"],
                            values["inference_images_per_s"], device, amp, AMP_DTYPE)
        for key in ("train", "inference"):
            achieved = block[key]["achieved_flops_per_s"]
            values[f"{key}_tflops_per_s"] = None if achieved is None else achieved / 1e12
            values[f"{key}_mfu"] = block[key]["mfu"]
    return {key: block.get(key) for key in ("precision", "device_name", "peak_flops_per_s", "peak_source",
                                             "training_flops_factor")}


ROWS = (
    ("train_step_ms", "training step (ms, median) ↓", "{:.1f}"),
    ("train_images_per_s", "training images/s ↑", "{:.1f}"),
    ("train_tflops_per_s", f"training model TFLOP/s ({TRAINING_FLOPS_FACTOR} forwards/image) ↑", "{:.3g}"),
    ("train_mfu", "training MFU (of peak) ↑", "{:.2%}"),
    ("inference_images_per_s", "inference images/s at the batch ↑", "{:.1f}"),
    ("inference_tflops_per_s", "inference model TFLOP/s ↑", "{:.3g}"),
    ("inference_mfu", "inference MFU (of peak) ↑", "{:.2%}"),
    ("latency_ms", "latency at batch 1 (ms, median) ↓", "{:.2f}"),
    ("gflops_per_image", "forward GFLOPs per image ↓", "{:.3f}"),
    ("trainable_params", "trainable parameters ↓", "{:,.0f}"),
    ("peak_train_memory_mb", "peak training memory, CUDA (MB) ↓", "{:.0f}"),
)


def format_bench(result: Mapping[str, Any]) -> str:
    """The benchmark as a table: one line per measure, a column per model and its ratio to the baseline."""
    from tabulate import tabulate

    setup = result["setup"]
    names = list(result["models"])
    baseline = setup["baseline"]
    others = [n for n in names if n != baseline]
    header = ["measure", *names] + [f"{n} / {baseline}" for n in others]
    lines = []
    for key, title, fmt in ROWS:
        values = [result["models"][n].get(key) for n in names]
        if all(v is None for v in values):
            continue
        ratios = [result["ratios"][n].get(key) for n in others]
        lines.append([title, *["—" if v is None else fmt.format(v) for v in values],
                      *["—" if r is None else f"{r:.2f}x" for r in ratios]])
    head = (f"{setup['method']} vs {baseline} · {setup['backbone']} at {setup['image_size'][0]}x"
            f"{setup['image_size'][1]} · batch {setup['batch_size']} · {setup['device']} · {setup['steps']} timed "
            f"rounds after {setup['warmup']} warm-up, models taking turns in alternating order")
    return head + "\n" + tabulate(lines, headers=header, tablefmt="simple", disable_numparse=True) + "\n" \
        + _peak_note(result.get("peak") or {})


def _peak_note(peak: Mapping[str, Any]) -> str:
    """The line under the table saying what MFU was divided by; empty where no peak is known (CPU)."""
    if not peak.get("peak_flops_per_s"):
        return ""
    given = " (MTBENCH_PEAK_TFLOPS)" if peak.get("peak_source") == "MTBENCH_PEAK_TFLOPS" else ""
    return (f"MFU: model FLOP/s over the {peak['peak_flops_per_s'] / 1e12:.4g} TFLOP/s dense {peak['precision']} peak "
            f"of {peak['device_name']}{given}; training counts {TRAINING_FLOPS_FACTOR} forwards per image, more than "
            "a method that freezes weights computes\n")
