"""Streaming evaluation of a model on a loader: ``{task: {metric: value}}`` and the inference timing."""

from __future__ import annotations

from typing import Any, Callable, Iterable, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from mtpeft_bench.measure import Throughput
from mtpeft_bench.metrics import build_meter, resize_prediction
from mtpeft_bench.train.device import autocast, to_device


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable, task_specs: Sequence[Any], device: torch.device,
             amp: bool = False, amp_dtype: str = "float16", limit: int | None = None, progress: bool = True,
             reduce: Callable[[Any], None] | None = None, skip_expensive: bool = False
             ) -> tuple[dict[str, dict[str, float]], Throughput]:
    """Run the model over ``loader`` and return ``{task: {metric: value}}`` and the inference timing.

    The meters stream (no prediction is kept); ``reduce(meter)`` (e.g. a DDP all-reduce) runs on
    every meter before ``compute()``; ``skip_expensive`` leaves out metrics such as odsF (periodic
    evaluations during training). A prediction whose size differs from its target's (a dataset
    that evaluates at the original image size) is resized to the target by
    :func:`~mtpeft_bench.metrics.resize_prediction` first.
    """
    model.eval()
    meters = {s.name: build_meter(s, skip_expensive=skip_expensive) for s in task_specs}
    kinds = {s.name: s.kind for s in task_specs}
    tasks = list(meters)
    timing = Throughput(device, warmup=2)
    n_batches = len(loader) if hasattr(loader, "__len__") else None
    if limit is not None and n_batches is not None:
        n_batches = min(n_batches, limit)
    bar = tqdm(loader, total=n_batches, desc="eval", disable=not progress, leave=False, dynamic_ncols=True,
               unit="batch")
    for i, batch in enumerate(bar):
        if limit is not None and i >= limit:
            break
        images, targets = to_device(batch, tasks, device)
        with timing.time(images.shape[0]):
            with autocast(device, amp, amp_dtype):
                outputs = model(images)
        for t in tasks:
            pred = outputs[t].float()
            if pred.shape[-2:] != targets[t].shape[-2:]:
                pred = resize_prediction(pred, tuple(targets[t].shape[-2:]), kinds[t])
            meters[t].update(pred, targets[t])
    bar.close()
    results = {}
    for t, meter in meters.items():
        if reduce is not None:
            reduce(meter)
        results[t] = {k: float(v) for k, v in meter.compute().items()}
    return results, timing
