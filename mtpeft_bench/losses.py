"""Training losses of the reference protocol (docs/protocol.md 4.3).

Every loss has the signature ``loss(pred, target, task) -> scalar Tensor`` where ``pred`` is the raw
head output ``[B, C, H, W]`` at the target's resolution and ``target`` is in the format of
``tasks/base.py`` (batched). Pixels whose target equals ``task.ignore_index`` (255) never enter a sum
or a count. A batch without a single valid pixel gives a loss of exactly 0 that is still connected to
the graph (so ``backward()`` works and the gradients are 0, never NaN).

================  ====================================================  ==============================
name              definition                                            reference (scale-lab/MTLoRA:
                                                                        mtl_loss_schemes.py, from
                                                                        ASTMT / MTI-Net)
================  ====================================================  ==============================
cross_entropy     log-softmax + NLL, mean over valid pixels             ``SoftMaxwithLoss``
balanced_bce      HED-style balanced BCE on logits, ``w = #neg/#valid``  ``BalancedCrossEntropyLoss()``
                  per batch: ``[w·Σ_pos ℓ + (1−w)·Σ_neg ℓ] / #valid``
edge_bce          the same with a fixed ``w`` (``options["pos_weight"]``  ``BalancedCrossEntropyLoss(
                  , default 0.95)                                        pos_weight=0.95)``
normals_l1        L1 between the L2-normalised prediction and the       ``NormalsLoss(normalize=True)``
                  target over valid elements, sum / #valid elements
depth_l1          L1 over valid pixels, mean                            ``DepthLoss('l1')``
================  ====================================================  ==============================

``ℓ`` is the binary cross-entropy on a logit ``x`` with label ``y ∈ {0, 1}``, written in the stable
form ``ℓ = softplus(x)`` if ``y = 0`` and ``softplus(−x)`` if ``y = 1``. A label counts as positive when
``≥ 0.5`` (as the reference). Differences to the reference code, all of which are no-ops on the
reference data: the reference divides the balanced BCE by all pixels and never passes void pixels,
so a 255 would count as a positive there; here 255 is excluded from the sums and counts. An
all-ignore batch gives NaN in the reference ``NLLLoss`` (e.g. a batch of non-person images for
human parts) and 0 here. Depth pixels ``≤ 0`` count as "no measurement" like 255 (the reference data
maps 0 to 255 before the loss).

The per-task weights live in ``TaskSpec.loss_weight``; :func:`compute_losses` forms
``total = Σ_t loss_weight_t · L_t``.
"""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from mtpeft_bench.tasks.base import TaskSpec

__all__ = [
    "LOSSES",
    "balanced_bce",
    "compute_losses",
    "cross_entropy",
    "depth_l1",
    "edge_bce",
    "normals_l1",
]


def _as_single_channel(target: Tensor, pred: Tensor) -> Tensor:
    """``[B, H, W]`` → ``[B, 1, H, W]`` when ``pred`` has one channel; checks the shape."""
    if target.dim() == pred.dim() - 1:
        target = target.unsqueeze(1)
    if target.shape != pred.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
    return target


def cross_entropy(pred: Tensor, target: Tensor, task: TaskSpec) -> Tensor:
    """Log-softmax + NLL over the valid pixels, averaged over them (MTLoRA ``SoftMaxwithLoss``).

    Args:
        pred: logits ``[B, C, H, W]``.
        target: class ids ``int64[B, H, W]`` (or ``[B, 1, H, W]``), ``task.ignore_index`` = void.
    """
    if target.dim() == pred.dim():
        target = target[:, 0]
    if target.shape != pred.shape[:1] + pred.shape[2:]:
        raise ValueError(f"logits {tuple(pred.shape)} and target {tuple(target.shape)} do not match")
    target = target.long()
    valid = target != task.ignore_index
    n_valid = valid.sum()
    log_prob = F.log_softmax(pred.float(), dim=1)
    total = F.nll_loss(log_prob, target, ignore_index=task.ignore_index, reduction="sum")
    return total / n_valid.clamp(min=1)


def _weighted_bce(pred: Tensor, target: Tensor, task: TaskSpec, pos_weight: float | None) -> Tensor:
    target = _as_single_channel(target, pred)
    logits = pred.float()
    valid = target != task.ignore_index
    pos = (target >= 0.5) & valid
    neg = valid & ~pos
    n_valid = valid.sum().clamp(min=1).to(logits.dtype)
    # Stable BCE-with-logits for a binary label: softplus(-x) for y=1, softplus(x) for y=0.
    ell = F.softplus(torch.where(pos, -logits, logits))
    zero = torch.zeros((), dtype=logits.dtype, device=logits.device)
    loss_pos = torch.where(pos, ell, zero).sum()
    loss_neg = torch.where(neg, ell, zero).sum()
    if pos_weight is None:
        w = neg.sum().to(logits.dtype) / n_valid
    else:
        w = torch.as_tensor(float(pos_weight), dtype=logits.dtype, device=logits.device)
    return (w * loss_pos + (1.0 - w) * loss_neg) / n_valid


def balanced_bce(pred: Tensor, target: Tensor, task: TaskSpec) -> Tensor:
    """HED-style class-balanced BCE on logits (ASTMT/MTLoRA ``BalancedCrossEntropyLoss()``, saliency).

    ``w = #neg / #valid`` of the batch; ``L = [w·Σ_pos ℓ + (1 − w)·Σ_neg ℓ] / #valid``.

    Args:
        pred: logits ``[B, 1, H, W]``.
        target: ``float32[B, 1, H, W]`` in {0, 1} (``≥ 0.5`` is positive), ``task.ignore_index`` = void.
    """
    return _weighted_bce(pred, target, task, None)


def edge_bce(pred: Tensor, target: Tensor, task: TaskSpec) -> Tensor:
    """Balanced BCE with a fixed positive weight (MTLoRA ``BalancedCrossEntropyLoss(pos_weight=0.95)``).

    ``L = [w·Σ_pos ℓ + (1 − w)·Σ_neg ℓ] / #valid`` with ``w = task.options.get("pos_weight", 0.95)``.
    """
    return _weighted_bce(pred, target, task, float(task.options.get("pos_weight", 0.95)))


def normals_l1(pred: Tensor, target: Tensor, task: TaskSpec) -> Tensor:
    """L1 between the L2-normalised prediction and the target (MTLoRA ``NormalsLoss(normalize=True)``).

    Element-wise: valid elements are those with ``target != ignore_index``; the loss is the sum of
    ``|p̂ − g|`` over them divided by their number (so a valid pixel counts 3 times).

    Args:
        pred: unnormalised vectors ``[B, 3, H, W]``.
        target: unit vectors ``float32[B, 3, H, W]``, ``ignore_index`` in all channels = invalid.
    """
    if target.shape != pred.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
    unit = F.normalize(pred.float(), p=2, dim=1, eps=1e-12)
    valid = target != task.ignore_index
    diff = torch.where(valid, (unit - target.float()).abs(), torch.zeros((), dtype=unit.dtype, device=unit.device))
    return diff.sum() / valid.sum().clamp(min=1).to(unit.dtype)


def depth_l1(pred: Tensor, target: Tensor, task: TaskSpec) -> Tensor:
    """Mean absolute error in metres over valid pixels (MTLoRA ``DepthLoss('l1')``).

    Valid: ``target != ignore_index`` and ``target > 0``.
    """
    target = _as_single_channel(target, pred)
    p = pred.float()
    g = target.float()
    valid = (target != task.ignore_index) & (g > 0)
    diff = torch.where(valid, (p - g).abs(), torch.zeros((), dtype=p.dtype, device=p.device))
    return diff.sum() / valid.sum().clamp(min=1).to(p.dtype)


LossFn = Callable[[Tensor, Tensor, TaskSpec], Tensor]

LOSSES: dict[str, LossFn] = {
    "cross_entropy": cross_entropy,
    "balanced_bce": balanced_bce,
    "edge_bce": edge_bce,
    "normals_l1": normals_l1,
    "depth_l1": depth_l1,
}


def compute_losses(
    outputs: Mapping[str, Tensor], batch: Mapping[str, object], tasks: Sequence[TaskSpec]
) -> tuple[Tensor, dict[str, Tensor]]:
    """Per-task losses and their weighted sum (docs/protocol.md 4.3: ``total = Σ_t loss_weight_t · L_t``).

    Args:
        outputs: task name → raw head output at the target's resolution.
        batch: the collated sample dict (task name → target); targets are moved to the output's device.
        tasks: the tasks to train, each naming its loss in ``LOSSES`` and its ``loss_weight``.

    Returns:
        ``(total, per_task)`` where ``per_task[name]`` is the *unweighted* loss of each task (still in
        the graph; call ``.item()`` / ``.detach()`` to log it).

    Raises:
        ValueError: no tasks, an unknown loss name, or a task missing from ``outputs`` / ``batch``.
    """
    if not tasks:
        raise ValueError("compute_losses needs at least one task")
    per_task: dict[str, Tensor] = {}
    total: Tensor | None = None
    for task in tasks:
        fn = LOSSES.get(task.loss)
        if fn is None:
            raise ValueError(f"task {task.name!r}: unknown loss {task.loss!r}; known losses: {', '.join(LOSSES)}")
        if task.name not in outputs:
            raise ValueError(f"the model produced no output for task {task.name!r}")
        if task.name not in batch:
            raise ValueError(f"the batch has no target for task {task.name!r}")
        pred = outputs[task.name]
        target = batch[task.name]
        if not isinstance(target, Tensor):
            raise ValueError(f"the target of task {task.name!r} is not a tensor")
        target = target.to(pred.device, non_blocking=True)
        loss = fn(pred, target, task)
        per_task[task.name] = loss
        weighted = float(task.loss_weight) * loss
        total = weighted if total is None else total + weighted
    assert total is not None
    return total, per_task
