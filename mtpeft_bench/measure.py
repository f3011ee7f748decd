"""Measurements taken the same way for every method: parameter groups, memory, time.

Parameter groups (how the papers' counts decompose, docs/protocol.md 5.3 and docs/ditask.md 4.2):

- ``method``: parameters the method added to the backbone (LoRA factors, θ of DiTASK, adapters),
  found by identity: they are not among the backbone's parameters before ``Method.build``;
- the backbone's own parameters by kind (:mod:`mtpeft_bench.model.params`): ``patch_embed``
  (conv + its LayerNorm), ``norms`` (block and PatchMerging LayerNorms), ``rel_pos``
  (relative-position bias tables), ``reductions`` (PatchMerging linear reductions) and ``linears``
  (qkv/proj/fc1/fc2 weights and biases); the first four are the "extras" that MTLoRA and DiTASK train;
- ``decoder``: the per-task heads.

Inference cost (:func:`count_flops`, :func:`profile_inference`): forward FLOPs at batch 1 from
torch's own counter, latency at batch 1 (median of timed forwards after warm-up) and images/s at
a batch size, with CUDA synchronised around every timed forward. Models compared with each other
(a method's merged and unmerged forms, or a method and ``full`` in ``mtbench bench``) are timed
taking turns in alternating order, so a slow phase of a shared machine hits all of them alike.
"""

from __future__ import annotations

import copy
import resource
import statistics
import sys
import time
from contextlib import contextmanager, nullcontext
from typing import Any, Callable, ContextManager, Iterator, Mapping

import torch
from torch import nn

from mtpeft_bench.machine_load import LoadWindow, loadavg_1m
from mtpeft_bench.model.params import BACKBONE_KINDS, EXTRA_GROUPS, backbone_param_kind


GROUPS = ("method", *BACKBONE_KINDS, "decoder")


def parameter_groups(model: nn.Module, backbone_param_ids: set[int]) -> dict[str, dict[str, int]]:
    """Count parameters by group.

    Args:
        model: a :class:`~mtpeft_bench.model.multitask.MultiTaskModel`.
        backbone_param_ids: ids of the backbone's parameters before the method built the encoder.

    Returns:
        ``{group: {"trainable": n, "total": n}}`` for every group in :data:`GROUPS`; shared
        parameters are counted once.
    """
    counts = {g: {"trainable": 0, "total": 0} for g in GROUPS}
    seen: set[int] = set()
    for prefix, module in (("encoder", model.encoder), ("heads", model.heads)):
        for name, param in module.named_parameters():
            if id(param) in seen:
                continue
            seen.add(id(param))
            if prefix == "heads":
                group = "decoder"
            elif id(param) in backbone_param_ids:
                group = backbone_param_kind(name)
            else:
                group = "method"
            counts[group]["total"] += param.numel()
            if param.requires_grad:
                counts[group]["trainable"] += param.numel()
    return counts


def parameter_summary(groups: dict[str, dict[str, int]]) -> dict[str, int]:
    """The headline numbers papers quote, derived from :func:`parameter_groups`."""
    trainable = {g: c["trainable"] for g, c in groups.items()}
    extras = sum(trainable[g] for g in EXTRA_GROUPS)
    encoder = trainable["method"] + extras + trainable["linears"]
    return {
        "method": trainable["method"],
        "backbone_trainable": extras + trainable["linears"],
        "extras_trainable": extras,
        "encoder_trainable": encoder,
        "decoder": trainable["decoder"],
        "total_trainable": encoder + trainable["decoder"],
        "total": sum(c["total"] for c in groups.values()),
    }


def peak_memory_mb(device: torch.device) -> tuple[float, str]:
    """Peak memory so far and how it was measured.

    CUDA: ``torch.cuda.max_memory_allocated`` (tensors only, reset by :func:`reset_peak_memory`);
    CPU: the peak resident set size of the whole process (``getrusage``), which includes Python,
    libraries and the data loader and can only grow.
    """
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "cuda_max_allocated"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes.
    return (rss / 2**20 if sys.platform == "darwin" else rss / 2**10), "cpu_peak_rss"


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Throughput:
    """Images per second over timed sections, skipping the first ``warmup`` sections.

    Only the model's compute is timed (the caller wraps forward/backward/step in :meth:`time`),
    with CUDA synchronised at both ends, so data loading does not blur the comparison of methods.
    ``load`` records how busy the machine was over the same timed sections (machine_load.py).
    """

    def __init__(self, device: torch.device, warmup: int = 5):
        self.device = device
        self.warmup = warmup
        self.sections = 0
        self.images = 0
        self.load = LoadWindow()

    @contextmanager
    def time(self, images: int) -> Iterator[None]:
        timed = self.sections >= self.warmup
        if timed and self.load.load_before is None:
            self.load.load_before = loadavg_1m()
        synchronize(self.device)
        start, cpu_start = time.perf_counter(), time.process_time()
        yield
        synchronize(self.device)
        elapsed = time.perf_counter() - start
        self.sections += 1
        if timed:
            self.images += images
            self.load.add(elapsed, time.process_time() - cpu_start)

    @property
    def seconds(self) -> float:
        """Wall time of the timed sections."""
        return self.load.wall_s

    @property
    def last_rate(self) -> float | None:
        return self.images / self.seconds if self.seconds > 0 else None

    def result(self) -> dict[str, Any]:
        return {"images_per_s": self.last_rate, "timed_images": self.images, "warmup_sections": self.warmup}


#: What :func:`count_flops` counts, stored with every result.
FLOPS_COUNTED = ("torch.utils.flop_counter.FlopCounterMode on one forward at batch 1: matrix products "
                 "(mm, addmm, bmm, baddbmm), convolutions and scaled-dot-product attention, each as 2 FLOPs "
                 "per multiply-add; element-wise ops, norms, softmax, activations and resizing are not counted")


def eager_forward() -> ContextManager[Any]:
    """Within it, models compiled with ``torch.compile`` run their eager code (torch >= 2.6)."""
    set_stance = getattr(torch.compiler, "set_stance", None)
    return set_stance("force_eager") if set_stance is not None else nullcontext()


def count_flops(model: nn.Module, images: torch.Tensor) -> dict[str, int]:
    """Forward FLOPs of ``model(images)``, in total and split into encoder and decoder.

    Uses :class:`torch.utils.flop_counter.FlopCounterMode` (see :data:`FLOPS_COUNTED` for what it
    counts: a multiply-add is 2 FLOPs, so a linear layer on ``T`` tokens costs ``2·T·in·out``).

    Args:
        model: a model with ``encoder`` and ``heads`` submodules (a
            :class:`~mtpeft_bench.model.multitask.MultiTaskModel`), or any module (then only ``total``).
        images: (B, 3, H, W); divide by B for FLOPs per image.

    Returns:
        ``{"total": n, "encoder": n, "decoder": n}`` (the last two only for a multi-task model).
    """
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    # A compiled model (``compile=true``) runs its eager forward here: the counter sees the operators
    # that dispatch one by one, which a compiled graph's fused kernels would hide from it.
    with torch.no_grad(), eager_forward(), counter:
        model(images)
    out = {"total": int(counter.get_total_flops())}
    if hasattr(model, "encoder") and hasattr(model, "heads"):
        # The counter keys its per-module table by the root class name and the attribute path, and
        # lists only modules that ran: the heads' ModuleDict never runs itself, each head does.
        counts = counter.get_flop_counts()
        root = type(model).__name__
        out["encoder"] = int(sum(counts.get(f"{root}.encoder", {}).values()))
        out["decoder"] = int(sum(sum(counts.get(f"{root}.heads.{name}", {}).values()) for name in model.heads))
    return out


def with_encoder(model: nn.Module, encoder: nn.Module) -> nn.Module:
    """A shallow copy of ``model`` that runs ``encoder`` and shares every other submodule (the heads).

    The copy gets its own ``_modules`` table, so swapping its encoder leaves ``model`` untouched.
    """
    clone = copy.copy(model)
    clone._modules = dict(model._modules)
    clone._modules["encoder"] = encoder
    return clone


def merged_model(model: nn.Module) -> nn.Module | None:
    """The model with its encoder merged for inference, or None when the encoder cannot merge.

    Reads the optional encoder capability ``merge_for_inference()`` (see ``methods/base.py``),
    which returns a new encoder with the method's weights folded into the backbone's and leaves
    the trained one as it is.
    """
    merge = getattr(getattr(model, "encoder", None), "merge_for_inference", None)
    if not callable(merge):
        return None
    encoder = merge()
    if encoder is None:
        return None
    return with_encoder(model, encoder)


def _random_images(batch: int, image_size: tuple[int, int], device: torch.device, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, *image_size, generator=generator).to(device)


def turns(names: list[str], round_index: int) -> list[str]:
    """The order of the models in a round: as given in even rounds, reversed in odd ones."""
    return names if round_index % 2 == 0 else names[::-1]


@torch.no_grad()
def time_forwards(models: Mapping[str, nn.Module], images: torch.Tensor, device: torch.device, warmup: int,
                  repeats: int, autocast: Callable[[], ContextManager] = nullcontext) -> dict[str, list[float]]:
    """Seconds of each timed forward, per model.

    The models take turns, in alternating order (a, b, b, a, a, b, ...) so that neither always
    runs first: ``warmup`` untimed rounds, then ``repeats`` timed ones, each forward
    CUDA-synchronised before and after.

    Returns:
        ``{name: [seconds] * repeats}``.
    """
    times: dict[str, list[float]] = {name: [] for name in models}
    for i in range(warmup + repeats):
        for name in turns(list(models), i):
            model = models[name]
            synchronize(device)
            start = time.perf_counter()
            with autocast():
                model(images)
            synchronize(device)
            if i >= warmup:
                times[name].append(time.perf_counter() - start)
    return times


def profile_inference(model: nn.Module, image_size: tuple[int, int], batch_size: int, device: torch.device,
                      warmup: int = 3, repeats: int = 20,
                      autocast: Callable[[], ContextManager] = nullcontext) -> dict[str, Any]:
    """Inference cost of ``model`` (and of its merged form when the encoder can merge).

    Measures, on random images of ``image_size``:

    - forward FLOPs per image (:func:`count_flops` at batch 1);
    - latency at batch 1: the median over ``repeats`` timed forwards after ``warmup`` (ms);
    - only when the encoder can merge: images/s at ``batch_size`` for both forms (the
      :class:`Throughput` of the training loop, mean rate over ``repeats`` forwards after
      ``warmup``), timed interleaved with the unmerged model, and the largest absolute difference
      of their outputs (a merge must not change what the model computes).

    ``repeats=0`` skips the timings (FLOPs are still counted). The model is left in eval mode.

    Returns:
        ``{"unmerged": {...}, "merged": {...} | None, "batch_size", "warmup", "repeats"}`` with
        ``flops_per_image``, ``encoder_flops_per_image``, ``decoder_flops_per_image``,
        ``latency_ms``, ``images_per_s`` per form.
    """
    model.eval()
    merged = merged_model(model)
    forms = {"unmerged": model} if merged is None else {"unmerged": model, "merged": merged.eval()}
    one = _random_images(1, image_size, device)
    result: dict[str, Any] = {"batch_size": batch_size, "warmup": warmup, "repeats": repeats, "merged": None}
    for name, form in forms.items():
        flops = count_flops(form, one)
        result[name] = {"flops_per_image": flops["total"], "encoder_flops_per_image": flops.get("encoder"),
                        "decoder_flops_per_image": flops.get("decoder"), "latency_ms": None, "images_per_s": None}
    if merged is not None:
        with torch.no_grad(), autocast():
            reference, folded = model(one), merged(one)
        result["merged"]["max_abs_diff"] = max(float((reference[t].float() - folded[t].float()).abs().max())
                                               for t in reference)
    if repeats > 0:
        for name, seconds in time_forwards(forms, one, device, warmup, repeats, autocast).items():
            result[name]["latency_ms"] = 1000.0 * statistics.median(seconds)
        if merged is not None:
            batch = _random_images(batch_size, image_size, device, seed=1)
            meters = {name: Throughput(device, warmup=warmup) for name in forms}
            with torch.no_grad():
                for i in range(warmup + repeats):
                    for name in turns(list(forms), i):
                        with meters[name].time(batch_size), autocast():
                            forms[name](batch)
            for name, meter in meters.items():
                result[name]["images_per_s"] = meter.last_rate
    return result
