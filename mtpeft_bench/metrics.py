"""Streaming evaluation meters, one per task kind (PROTOCOL.md 3), and Δm.

A meter never keeps a prediction: each :meth:`Meter.update` reduces the batch to a few sums, counts or
histograms (``Meter.states``, float64 / int64 tensors) and :meth:`Meter.compute` turns them into the
numbers. Because the states are plain sums, splitting the data over several meters and adding the
states (:meth:`Meter.merge`, or :meth:`Meter.all_reduce` over ``torch.distributed``) gives exactly the
numbers of one pass over all the data.

Usage::

    meter = build_meter(task)          # task: a TaskSpec
    for batch in loader:
        meter.update(outputs[task.name], batch[task.name])   # raw head output, target resolution
    meter.all_reduce()                 # once, after the last update (no-op without torch.distributed)
    meter.compute()                    # {"mIoU": 67.21, "pixAcc": 91.3}

``pred`` is the raw head output ``[B, C, H, W]`` at the target's resolution: logits for segmentation,
saliency and edge, unnormalised vectors for normals, metres for depth. Targets are batched in the
formats of ``tasks/base.py``; pixels whose target equals ``task.ignore_index`` (255) are not seen.
Percentages are in % (mIoU 67.21, not 0.6721). A meter that has seen no valid pixel returns NaN
for every metric (undefined, rather than a misleading 0).

Metrics (keys of :meth:`Meter.compute`), exact definitions as in scale-lab/MTLoRA:evaluation and
SimonVandenhende/Multi-Task-Learning-PyTorch:evaluation:

segmentation (also human parts) — ``SemsegMeter`` / ``HumanPartsMeter``
    A confusion matrix over the valid pixels of the whole dataset (prediction = argmax over channels).
    ``mIoU`` = mean over ALL ``num_outputs`` classes of TP / max(TP + FP + FN, 1e-8) (a class absent
    from both GT and prediction contributes 0); ``pixAcc`` = correct / valid pixels. Images whose
    target is all-ignore (non-person images for human parts) contribute nothing.
depth — ``DepthMeter``
    valid = target ≠ 255 and target > 0. As the reference meter, the prediction is clamped to
    ≥ 1e-9 before every metric. ``rmse`` = sqrt(Σ (g − p)² / N) pooled over all valid pixels of the
    dataset (not a per-image average); ``log_rmse`` the same on log p vs log g; extras ``abs_rel`` =
    mean |p − g| / g and ``delta1`` = % of pixels with max(p/g, g/p) < 1.25.
normals — ``NormalsMeterV1`` with proper extras
    The prediction is L2-normalised; valid = no channel of the target is 255; per-pixel angle =
    degrees(arccos(clamp(⟨p̂, g⟩, −1, 1))). ``mean`` pooled over all valid pixels (the headline
    number), ``median`` from a histogram of 0.01° bins over [0°, 180°] (the bin centres of the middle
    pixels, so it is within 0.005° of the exact median), ``rmse`` = sqrt(mean angle²) (the proper
    one; MTLoRA's V1 ``rmse`` equals the mean by a bug), ``11.25`` / ``22.5`` / ``30`` = % of valid pixels
    with an angle strictly below that.
saliency — ``SaliencyMeterWithNoBeta`` (mIoU) and the InvPT/ATRC ``SaliencyMeter`` (maxF)
    p = sigmoid(logit), once (``options["double_sigmoid"]`` reproduces the reference's second
    sigmoid for maxF, PROTOCOL.md 8 item 2). ``mIoU``: for each t in linspace(0.2, 0.9, 15), per image
    IoU(GT, p > t) over the valid pixels (:= 1 when both are empty), averaged over images (images
    without a valid pixel are skipped); the max over t of those means. ``maxF``: for t in
    0.05, 0.10, ..., 0.95, pixel-pooled over the dataset TP / predicted (p ≥ t) / actual counts,
    F_β = (1 + β²)PR / (β²P + R) with β² = 0.3 (0 where undefined), max over t. This is the
    InvPT/ATRC number WITHOUT their double-sigmoid bug. GT positive = target ≥ 0.5.
edge — ``odsF`` (SEISM-equivalent boundary matching) and ``F_tol`` (a labelled approximation)
    p = sigmoid(logit). ``odsF`` follows MTI-Net's SEISM evaluation (evaluation/eval_edge.py,
    read_one_png.m; jponttuset/seism edgesEvalImg.m, gather_measure.m, general_ods.m): for each
    threshold t of ``options["thresholds"]`` (default 99: 0.01, ..., 0.99) the map p ≥ t is thinned
    (MATLAB ``bwmorph(·, 'thin', Inf)``, here scikit-image's ``thin``, the same algorithm), the GT
    edge map is thinned too, and the two are matched one-to-one within ``max_dist`` × the image
    diagonal by the BSDS ``correspondPixels`` (pyEdgeEval's Cython port); per image and threshold the
    counts matched-GT / GT / matched-predicted / predicted are summed over the dataset (these sums
    are the meter's states, so it streams and all-reduces), recall and precision come from the sums,
    F = 2PR / (P + R), and ``odsF`` is the max over thresholds (no interpolation between
    thresholds, as SEISM; pyEdgeEval's own ODS interpolates). Ignored GT pixels never predict.
    Without pyEdgeEval or scikit-image (``pip install 'mtpeft-bench[edge]'``) ``odsF`` is NaN and a
    warning says why. The matching is slow (seconds per image and threshold at 448 px for noisy
    maps): ``MTBENCH_EDGE_WORKERS=N`` spreads it over N processes.
    ``F_tol`` (always reported): for the 99 thresholds t = 0.01, ..., 0.99, pooled over the dataset,
    precision = #predicted edge pixels within Euclidean distance r of a GT edge pixel / #predicted,
    recall = #GT edge pixels within r of a predicted edge pixel / #GT, F = 2PR / (P + R) (0 where
    undefined), max over t; r = ``task.options["max_dist"]`` × the image diagonal (0.0075 PASCAL,
    0.011 NYUD), a max filter over a disk of radius r. AN APPROXIMATION OF odsF: no one-to-one
    matching and no thinning, so a thick predicted edge is not penalised and F_tol is typically
    higher than odsF.

Predictions at another resolution than the targets (evaluation at the original image size,
PROTOCOL.md 2 "MTI-Net") are brought to the target's size first by :func:`resize_prediction`.

Δm: :func:`delta_m` and :func:`per_task_delta` are re-exported from :mod:`mtpeft_bench.delta`.
"""

from __future__ import annotations

import logging
import math
import os
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from mtpeft_bench.delta import delta_m, per_task_delta
from mtpeft_bench.tasks.base import TaskSpec

log = logging.getLogger(__name__)

__all__ = [
    "DepthMeter",
    "EdgeMeter",
    "Meter",
    "NormalsMeter",
    "SaliencyMeter",
    "SegmentationMeter",
    "build_meter",
    "delta_m",
    "per_task_delta",
    "resize_prediction",
]

#: Width of a bin of the normals angle histogram the median is read from, in degrees.
NORMALS_MEDIAN_BIN_DEG = 0.01
_NORMALS_BINS = 18000  # 180° / 0.01°
NORMALS_THRESHOLDS_DEG = (11.25, 22.5, 30.0)
_NORMALS_KEYS = ("11.25", "22.5", "30")

#: Saliency mIoU thresholds (p > t), MTLoRA ``SaliencyMeterWithNoBeta.mask_thres``.
#: Computed as ``np.linspace(0.2, 0.9, 15)`` does (``start + i·step``, last = stop), bit for bit.
SALIENCY_IOU_THRESHOLDS = tuple([0.2 + i * ((0.9 - 0.2) / 14) for i in range(14)] + [0.9])
#: Saliency maxF thresholds (p ≥ t), InvPT ``SaliencyMeter`` (step 0.05).
SALIENCY_F_THRESHOLDS = tuple(round(0.05 * i, 2) for i in range(1, 20))
SALIENCY_BETA_SQUARED = 0.3
#: Edge thresholds (p ≥ t), as the 99 values MTI-Net passes to SEISM.
EDGE_THRESHOLDS = tuple(round(0.01 * i, 2) for i in range(1, 100))


def _counts_above(k: Tensor, num_thresholds: int) -> Tensor:
    """Given ``k`` = number of thresholds a value passes (from ``torch.bucketize``), return for each
    threshold j the number of values that pass it, i.e. ``#{k > j}``, as int64[num_thresholds]."""
    hist = torch.bincount(k.reshape(-1), minlength=num_thresholds + 1)
    return hist.flip(0).cumsum(0).flip(0)[1:]


def _disk_max(x: Tensor, radius: float) -> Tensor:
    """Max of ``x`` ``[B, 1, H, W]`` over a disk of Euclidean radius ``radius`` (pixel offsets with
    dx² + dy² ≤ radius²) around every pixel; outside the image counts as −inf."""
    reach = int(math.floor(radius + 1e-9))
    if reach <= 0:
        return x
    height = x.shape[-2]
    out = torch.full_like(x, -math.inf)
    rows: dict[int, Tensor] = {}
    for dy in range(-reach, reach + 1):
        if abs(dy) >= height:
            continue
        half = int(math.floor(math.sqrt(max(radius * radius - dy * dy, 0.0)) + 1e-9))
        if half not in rows:
            rows[half] = x if half == 0 else F.max_pool2d(x, kernel_size=(1, 2 * half + 1), stride=1,
                                                          padding=(0, half))
        row = rows[half]
        # out[y] = max(out[y], row[y + dy])
        if dy >= 0:
            out[..., : height - dy, :] = torch.maximum(out[..., : height - dy, :], row[..., dy:, :])
        else:
            out[..., -dy:, :] = torch.maximum(out[..., -dy:, :], row[..., : height + dy, :])
    return out


def _single_channel(target: Tensor, pred: Tensor, what: str) -> Tensor:
    if pred.shape[1] != 1:
        raise ValueError(f"{what}: prediction must have 1 channel, got shape {tuple(pred.shape)}")
    if target.dim() == 3:
        target = target.unsqueeze(1)
    if target.shape != pred.shape:
        raise ValueError(f"{what}: prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape "
                         "(the meter expects the prediction at the target's resolution)")
    return target


class Meter:
    """Base class of the streaming meters.

    Attributes:
        task: the :class:`TaskSpec` measured.
        states: name → float64/int64 tensor of sums; together they fully define the meter.
        metric_names: the keys :meth:`compute` returns.
    """

    kind: ClassVar[str] = ""
    metric_names: ClassVar[tuple[str, ...]] = ()
    #: metric names a task may ask for besides ``metric_names`` (handled specially by ``compute``).
    extra_names: ClassVar[tuple[str, ...]] = ()

    def __init__(self, task: TaskSpec, skip_expensive: bool = False) -> None:
        if task.kind != self.kind:
            raise ValueError(f"task {task.name!r} is of kind {task.kind!r}, not {self.kind!r}")
        known = self.metric_names + self.extra_names
        unknown = [m.name for m in task.metrics if m.name not in known]
        if unknown:
            raise ValueError(
                f"task {task.name!r} asks for metric {', '.join(map(repr, unknown))}, which the {self.kind} meter "
                f"does not compute; it computes: {', '.join(self.metric_names)}"
            )
        self.task = task
        # Periodic evaluations during training may leave out metrics that cost far more than the
        # forward passes (odsF's boundary matching); the final evaluation never does.
        self.skip_expensive = skip_expensive
        self.states: dict[str, Tensor] = self._new_states()

    # -- to implement --------------------------------------------------------------------------------
    def _new_states(self) -> dict[str, Tensor]:
        raise NotImplementedError

    def _update(self, pred: Tensor, target: Tensor) -> dict[str, Tensor]:
        """Return the increments of (some of) the states for one batch."""
        raise NotImplementedError

    def _compute(self, states: dict[str, Tensor]) -> dict[str, float]:
        raise NotImplementedError

    # -- public API ----------------------------------------------------------------------------------
    def update(self, pred: Tensor, target: Tensor) -> None:
        """Add one batch: ``pred`` the raw head output ``[B, C, H, W]``, ``target`` in the task's format.

        The states follow ``pred`` to its device (so GPU evaluation does not synchronise per batch
        for the additions).
        """
        with torch.no_grad():
            pred = pred.detach()
            if pred.dim() != 4:
                raise ValueError(f"task {self.task.name!r}: prediction must be [B, C, H, W], got {tuple(pred.shape)}")
            target = target.detach().to(pred.device)
            if target.shape[0] != pred.shape[0] or target.shape[-2:] != pred.shape[-2:]:
                raise ValueError(
                    f"task {self.task.name!r}: prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ "
                    "in batch or spatial size (the meter expects the prediction at the target's resolution)"
                )
            increments = self._update(pred, target)
            for name, inc in increments.items():
                state = self.states[name]
                if state.device != inc.device:
                    state = state.to(inc.device)
                    self.states[name] = state
                state += inc.to(state.dtype)

    def compute(self) -> dict[str, float]:
        """The metrics of everything seen so far (keys: ``metric_names``)."""
        return self._compute({k: v.detach().cpu() for k, v in self.states.items()})

    def reset(self) -> None:
        """Forget everything seen."""
        self.states = self._new_states()

    def merge(self, other: "Meter") -> "Meter":
        """Add the states of ``other`` (a meter of the same kind and shape) to this one; returns self."""
        if type(other) is not type(self) or other.states.keys() != self.states.keys():
            raise ValueError(f"cannot merge a {type(other).__name__} into a {type(self).__name__}")
        for name, state in self.states.items():
            theirs = other.states[name]
            if theirs.shape != state.shape:
                raise ValueError(f"cannot merge meters: state {name!r} has shape {tuple(theirs.shape)}, "
                                 f"not {tuple(state.shape)}")
            state += theirs.to(state.device, state.dtype)
        return self

    def all_reduce(self) -> None:
        """Sum the states over all ranks of ``torch.distributed`` (no-op when it is not initialised).

        Call it once, on every rank, after the last update; afterwards every rank's :meth:`compute`
        gives the numbers of the whole dataset.
        """
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return
        backend = str(dist.get_backend())
        current = next(iter(self.states.values())).device
        if current.type == "cuda" and "nccl" in backend:
            device = current
        elif current.type == "cpu" and ("gloo" in backend or "mpi" in backend):
            device = current
        elif "nccl" in backend:
            device = torch.device("cuda", torch.cuda.current_device())
        else:
            device = torch.device("cpu")
        for name in sorted(self.states):
            tensor = self.states[name].to(device)
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
            self.states[name] = tensor

    def __repr__(self) -> str:
        return f"{type(self).__name__}(task={self.task.name!r})"


class SegmentationMeter(Meter):
    """Confusion-matrix mIoU and pixel accuracy (MTLoRA ``SemsegMeter`` / ``HumanPartsMeter``)."""

    kind = "segmentation"
    metric_names = ("mIoU", "pixAcc")

    def __init__(self, task: TaskSpec, skip_expensive: bool = False) -> None:
        self.num_classes = int(task.num_outputs)
        super().__init__(task, skip_expensive)

    def _new_states(self) -> dict[str, Tensor]:
        # confusion[g, p]: valid pixels with ground truth g predicted as p.
        return {"confusion": torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64)}

    def _update(self, pred: Tensor, target: Tensor) -> dict[str, Tensor]:
        c = self.num_classes
        if pred.shape[1] != c:
            raise ValueError(f"task {self.task.name!r}: prediction has {pred.shape[1]} channels, expected {c}")
        if target.dim() == 4:
            target = target[:, 0]
        label = pred.argmax(dim=1)
        valid = target != self.task.ignore_index
        gt = target[valid].long()
        if gt.numel() and (int(gt.min()) < 0 or int(gt.max()) >= c):
            raise ValueError(f"task {self.task.name!r}: target class ids must be in [0, {c}) or "
                             f"{self.task.ignore_index}, got {int(gt.min())}..{int(gt.max())}")
        idx = gt * c + label[valid]
        return {"confusion": torch.bincount(idx, minlength=c * c).reshape(c, c)}

    def class_iou(self) -> list[float]:
        """IoU of each class in % (the terms whose mean is ``mIoU``)."""
        conf = self.states["confusion"].cpu().double()
        tp = conf.diag()
        denom = conf.sum(0) + conf.sum(1) - tp
        return (100.0 * tp / denom.clamp(min=1e-8)).tolist()

    def _compute(self, states: dict[str, Tensor]) -> dict[str, float]:
        conf = states["confusion"].double()
        total = conf.sum()
        if total == 0:
            return {"mIoU": math.nan, "pixAcc": math.nan}
        tp = conf.diag()
        fp = conf.sum(0) - tp
        fn = conf.sum(1) - tp
        iou = tp / (tp + fp + fn).clamp(min=1e-8)
        return {"mIoU": float(100.0 * iou.mean()), "pixAcc": float(100.0 * tp.sum() / total)}


class DepthMeter(Meter):
    """Pixel-pooled depth errors (MTLoRA/MTI-Net ``DepthMeter``; abs_rel and delta1 as InvPT)."""

    kind = "depth"
    metric_names = ("rmse", "log_rmse", "abs_rel", "delta1")

    def _new_states(self) -> dict[str, Tensor]:
        f64 = dict(dtype=torch.float64)
        return {
            "sum_sq": torch.zeros((), **f64),
            "sum_log_sq": torch.zeros((), **f64),
            "sum_abs_rel": torch.zeros((), **f64),
            "n_delta1": torch.zeros((), dtype=torch.int64),
            "n_valid": torch.zeros((), dtype=torch.int64),
        }

    def _update(self, pred: Tensor, target: Tensor) -> dict[str, Tensor]:
        target = _single_channel(target, pred, f"task {self.task.name!r}")
        g_all = target.double()
        valid = (target != self.task.ignore_index) & (g_all > 0) & torch.isfinite(g_all)
        g = g_all[valid]
        p = pred.double()[valid].clamp(min=1e-9)
        diff = g - p
        log_diff = torch.log(g) - torch.log(p)
        ratio = torch.maximum(p / g, g / p)
        return {
            "sum_sq": (diff * diff).sum(),
            "sum_log_sq": (log_diff * log_diff).sum(),
            "sum_abs_rel": (diff.abs() / g).sum(),
            "n_delta1": (ratio < 1.25).sum(),
            "n_valid": valid.sum(),
        }

    def _compute(self, states: dict[str, Tensor]) -> dict[str, float]:
        n = int(states["n_valid"])
        if n == 0:
            return {k: math.nan for k in self.metric_names}
        return {
            "rmse": math.sqrt(float(states["sum_sq"]) / n),
            "log_rmse": math.sqrt(float(states["sum_log_sq"]) / n),
            "abs_rel": float(states["sum_abs_rel"]) / n,
            "delta1": 100.0 * int(states["n_delta1"]) / n,
        }


class NormalsMeter(Meter):
    """Angular errors of surface normals in degrees (MTLoRA ``NormalsMeterV1`` + MTI-Net extras)."""

    kind = "normals"
    metric_names = ("mean", "median", "rmse") + _NORMALS_KEYS

    def _new_states(self) -> dict[str, Tensor]:
        return {
            "sum_angle": torch.zeros((), dtype=torch.float64),
            "sum_angle_sq": torch.zeros((), dtype=torch.float64),
            "n_below": torch.zeros(len(NORMALS_THRESHOLDS_DEG), dtype=torch.int64),
            "n_valid": torch.zeros((), dtype=torch.int64),
            "hist": torch.zeros(_NORMALS_BINS, dtype=torch.int64),
        }

    def _update(self, pred: Tensor, target: Tensor) -> dict[str, Tensor]:
        if pred.shape[1] != 3 or target.shape != pred.shape:
            raise ValueError(f"task {self.task.name!r}: prediction {tuple(pred.shape)} and target "
                             f"{tuple(target.shape)} must both be [B, 3, H, W]")
        valid = (target != self.task.ignore_index).all(dim=1)
        unit = F.normalize(pred.double(), p=2, dim=1, eps=1e-12)
        cos = (unit * target.double()).sum(dim=1)[valid].clamp(-1.0, 1.0)
        angle = torch.rad2deg(torch.acos(cos))
        bins = torch.floor(angle / NORMALS_MEDIAN_BIN_DEG).long().clamp(0, _NORMALS_BINS - 1)
        limits = torch.tensor(NORMALS_THRESHOLDS_DEG, dtype=torch.float64, device=angle.device)
        return {
            "sum_angle": angle.sum(),
            "sum_angle_sq": (angle * angle).sum(),
            "n_below": (angle[:, None] < limits).sum(dim=0),
            "n_valid": valid.sum(),
            "hist": torch.bincount(bins, minlength=_NORMALS_BINS),
        }

    def _compute(self, states: dict[str, Tensor]) -> dict[str, float]:
        n = int(states["n_valid"])
        if n == 0:
            return {k: math.nan for k in self.metric_names}
        cum = states["hist"].cumsum(0)
        # 1-based ranks of the middle pixels (equal for odd n); the median is the mean of their bin centres.
        ranks = torch.tensor([(n + 1) // 2, n // 2 + 1], dtype=cum.dtype)
        bins = torch.searchsorted(cum, ranks).double()
        out = {
            "mean": float(states["sum_angle"]) / n,
            "median": float(((bins + 0.5) * NORMALS_MEDIAN_BIN_DEG).mean()),
            "rmse": math.sqrt(float(states["sum_angle_sq"]) / n),
        }
        for key, count in zip(_NORMALS_KEYS, states["n_below"].tolist()):
            out[key] = 100.0 * count / n
        return out


class SaliencyMeter(Meter):
    """Saliency: MTLoRA's threshold-max image-mean IoU and the pixel-pooled maxF (β² = 0.3)."""

    kind = "saliency"
    metric_names = ("mIoU", "maxF")

    def _new_states(self) -> dict[str, Tensor]:
        t_iou, t_f = len(SALIENCY_IOU_THRESHOLDS), len(SALIENCY_F_THRESHOLDS)
        return {
            "iou_sum": torch.zeros(t_iou, dtype=torch.float64),
            "n_images": torch.zeros((), dtype=torch.int64),
            "tp": torch.zeros(t_f, dtype=torch.int64),
            "pred_pos": torch.zeros(t_f, dtype=torch.int64),
            "gt_pos": torch.zeros((), dtype=torch.int64),
        }

    def _update(self, pred: Tensor, target: Tensor) -> dict[str, Tensor]:
        target = _single_channel(target, pred, f"task {self.task.name!r}")
        batch = pred.shape[0]
        prob = torch.sigmoid(pred.double()).reshape(batch, -1)
        target = target.reshape(batch, -1)
        valid = target != self.task.ignore_index
        pos = valid & (target >= 0.5)
        device = prob.device

        # Per-image IoU at every threshold (p > t): bucket each pixel by how many thresholds it exceeds.
        t_iou = torch.tensor(SALIENCY_IOU_THRESHOLDS, dtype=torch.float64, device=device)
        n_t = t_iou.numel()
        k = torch.bucketize(prob, t_iou, right=False)  # #{t < p}
        idx = torch.arange(batch, device=device)[:, None] * (n_t + 1) + k
        per_image = torch.bincount(idx[valid], minlength=batch * (n_t + 1)).reshape(batch, n_t + 1)
        per_image_pos = torch.bincount(idx[pos], minlength=batch * (n_t + 1)).reshape(batch, n_t + 1)
        predicted = per_image.flip(1).cumsum(1).flip(1)[:, 1:]  # [B, T]: #{p > t_j}
        inter = per_image_pos.flip(1).cumsum(1).flip(1)[:, 1:]
        union = per_image_pos.sum(1, keepdim=True) + predicted - inter
        iou = torch.where(union > 0, inter.double() / union.clamp(min=1).double(),
                          torch.ones((), dtype=torch.float64, device=device))
        has_pixels = per_image.sum(1) > 0

        # Pixel-pooled counts for maxF (p >= t).
        prob_f = torch.sigmoid(prob) if self.task.options.get("double_sigmoid") else prob
        t_f = torch.tensor(SALIENCY_F_THRESHOLDS, dtype=torch.float64, device=device)
        k_valid = torch.bucketize(prob_f[valid], t_f, right=True)  # #{t <= p}
        k_pos = torch.bucketize(prob_f[pos], t_f, right=True)
        return {
            "iou_sum": iou[has_pixels].sum(0),
            "n_images": has_pixels.sum(),
            "tp": _counts_above(k_pos, t_f.numel()),
            "pred_pos": _counts_above(k_valid, t_f.numel()),
            "gt_pos": pos.sum(),
        }

    def _compute(self, states: dict[str, Tensor]) -> dict[str, float]:
        n_images = int(states["n_images"])
        miou = 100.0 * float((states["iou_sum"] / n_images).max()) if n_images else math.nan
        tp = states["tp"].double()
        if n_images == 0:
            max_f = math.nan
        else:
            precision = tp / states["pred_pos"].double()
            recall = tp / states["gt_pos"].double()
            b2 = SALIENCY_BETA_SQUARED
            f = (1 + b2) * precision * recall / (b2 * precision + recall)
            max_f = 100.0 * float(torch.nan_to_num(f, nan=0.0).max())
        return {"mIoU": miou, "maxF": max_f}


def edge_thresholds(count: int = 99) -> tuple[float, ...]:
    """``count`` evenly spaced thresholds in (0, 1): 1/(count+1), ..., count/(count+1) (99 → 0.01 ... 0.99)."""
    return tuple(round((i + 1) / (count + 1), 10) for i in range(count))


def edge_backend() -> str | None:
    """None when odsF can be computed, else why not (one line)."""
    try:
        from pyEdgeEval._lib import correspond_pixels  # noqa: F401
        from skimage.morphology import thin  # noqa: F401
    except ImportError as exc:
        return (f"odsF is not computed: {exc.name or exc} is not installed (pip install 'mtpeft-bench[edge]' "
                "brings pyEdgeEval and scikit-image); F_tol is a tolerance-based approximation, not odsF")
    return None


def boundary_counts(prob, gt, max_dist: float, thresholds) -> "Any":
    """SEISM/BSDS boundary counts of one image (numpy in, numpy out).

    Args:
        prob: float64[H, W] edge probability (ignored pixels set to 0).
        gt: bool[H, W] ground-truth edges (thinned here, as SEISM's edgesEvalImg thins its GT).
        max_dist: match tolerance as a fraction of the image diagonal.
        thresholds: ascending thresholds; a pixel is an edge at t when prob >= t.

    Returns:
        int64[4, T]: matched GT pixels, GT pixels, matched predicted pixels, predicted pixels.
    """
    import numpy as np
    from pyEdgeEval._lib import correspond_pixels
    from skimage.morphology import thin

    thresholds = np.asarray(thresholds, dtype=np.float64)
    out = np.zeros((4, thresholds.size), dtype=np.int64)
    gt = thin(np.asarray(gt, dtype=bool))
    n_gt = int(gt.sum())
    # k = number of thresholds <= p: the map at threshold j is k > j, so thresholds with no pixel
    # in [t_j, t_j+1) give the same map as the one before and reuse its counts.
    k = np.searchsorted(thresholds, prob, side="right")
    present = np.bincount(k.reshape(-1), minlength=thresholds.size + 1)
    previous = None
    for j in range(thresholds.size):
        if previous is not None and present[j] == 0:
            out[:, j] = previous
            continue
        edges = thin(k > j)
        n_pred = int(edges.sum())
        if n_gt == 0 or n_pred == 0:
            counts = (0, n_gt, 0, n_pred)
        else:
            match_pred, match_gt, _, _ = correspond_pixels(edges.astype(np.float64), gt.astype(np.float64),
                                                           max_dist=max_dist)
            counts = (int((match_gt > 0).sum()), n_gt, int((match_pred > 0).sum()), n_pred)
        out[:, j] = counts
        previous = out[:, j].copy()
    return out


def _boundary_counts_job(args: tuple) -> "Any":
    return boundary_counts(*args)


def ods_from_counts(counts: Tensor) -> float:
    """SEISM's ODS F (%) from dataset-summed counts int64[4, T] (gather_measure.m, general_ods.m)."""
    cnt_r, sum_r, cnt_p, sum_p = (c.double() for c in counts)
    rec = torch.zeros_like(cnt_r)
    prec = torch.zeros_like(cnt_r)
    normal = (sum_p != 0) & (cnt_r != 0)
    rec[normal] = cnt_r[normal] / sum_r[normal]
    prec[normal] = cnt_p[normal] / sum_p[normal]
    no_gt = (sum_r == 0) & (cnt_p == 0)  # nothing to find: recall 1, precision 0
    rec[no_gt], prec[no_gt] = 1.0, 0.0
    no_pred = (sum_p == 0) & (cnt_r == 0)  # nothing predicted: recall 0, precision 1
    rec[no_pred], prec[no_pred] = 0.0, 1.0
    total = prec + rec
    f = torch.where(total > 0, 2 * prec * rec / total.clamp(min=1e-300), torch.zeros_like(total))
    return 100.0 * float(f.max())


class EdgeMeter(Meter):
    """Edges: SEISM-style ``odsF`` when the task asks for it, and the approximation ``F_tol``."""

    kind = "edge"
    metric_names = ("F_tol",)
    extra_names = ("odsF",)
    _warned: ClassVar[set[str]] = set()

    def __init__(self, task: TaskSpec, skip_expensive: bool = False) -> None:
        if "max_dist" not in task.options:
            raise ValueError(f"edge task {task.name!r} needs options['max_dist'] (the match tolerance as a "
                             "fraction of the image diagonal, e.g. 0.0075 for PASCAL)")
        self.max_dist = float(task.options["max_dist"])
        if not self.max_dist >= 0:
            raise ValueError(f"edge task {task.name!r}: options['max_dist'] must be >= 0, got {self.max_dist!r}")
        self.wants_ods = any(m.name == "odsF" for m in task.metrics) and not skip_expensive
        self.thresholds = edge_thresholds(int(task.options.get("thresholds", 99)))
        self.backend_problem = edge_backend() if self.wants_ods else None
        self._pending: list[Any] = []
        self._pool: Any = None
        super().__init__(task, skip_expensive)

    def _new_states(self) -> dict[str, Tensor]:
        n_t = len(EDGE_THRESHOLDS)
        states = {
            "pred_pos": torch.zeros(n_t, dtype=torch.int64),
            "pred_match": torch.zeros(n_t, dtype=torch.int64),
            "gt_match": torch.zeros(n_t, dtype=torch.int64),
            "gt_pos": torch.zeros((), dtype=torch.int64),
            "n_valid": torch.zeros((), dtype=torch.int64),
        }
        if self.wants_ods:
            states["ods_counts"] = torch.zeros(4, len(self.thresholds), dtype=torch.int64)
        return states

    def radius(self, height: int, width: int) -> float:
        """The match tolerance in pixels for an image of ``height`` × ``width``."""
        return self.max_dist * math.hypot(height, width)

    def _update(self, pred: Tensor, target: Tensor) -> dict[str, Tensor]:
        target = _single_channel(target, pred, f"task {self.task.name!r}")
        prob = torch.sigmoid(pred.double())
        valid = target != self.task.ignore_index
        gt = valid & (target >= 0.5)
        if self.wants_ods and self.backend_problem is None:
            self._submit(torch.where(valid, prob, torch.zeros_like(prob)), gt)
        r = self.radius(pred.shape[-2], pred.shape[-1])
        near_gt = _disk_max(gt.double(), r) > 0.5
        # Highest probability of a (valid) pixel within r: a GT pixel is matched at t iff it is >= t.
        best_near = _disk_max(torch.where(valid, prob, torch.full_like(prob, -1.0)), r)
        thr = torch.tensor(EDGE_THRESHOLDS, dtype=torch.float64, device=prob.device)
        n_t = thr.numel()
        return {
            "pred_pos": _counts_above(torch.bucketize(prob[valid], thr, right=True), n_t),
            "pred_match": _counts_above(torch.bucketize(prob[valid & near_gt], thr, right=True), n_t),
            "gt_match": _counts_above(torch.bucketize(best_near[gt], thr, right=True), n_t),
            "gt_pos": gt.sum(),
            "n_valid": valid.sum(),
        }

    # -- odsF: per-image boundary matching, in this process or a pool ---------------------------------
    def _submit(self, prob: Tensor, gt: Tensor) -> None:
        workers = int(os.environ.get("MTBENCH_EDGE_WORKERS", "0") or 0)
        for p, g in zip(prob[:, 0].cpu().numpy(), gt[:, 0].cpu().numpy()):
            job = (p, g, self.max_dist, self.thresholds)
            if workers <= 0:
                self._add_ods(torch.from_numpy(boundary_counts(*job)))
                continue
            if self._pool is None:
                import concurrent.futures
                import multiprocessing

                # spawn: the evaluating process may hold CUDA state, which must not be forked
                self._pool = concurrent.futures.ProcessPoolExecutor(
                    workers, mp_context=multiprocessing.get_context("spawn"))
            self._pending.append(self._pool.submit(_boundary_counts_job, job))

    def _add_ods(self, counts: Tensor) -> None:
        state = self.states["ods_counts"]
        self.states["ods_counts"] = state + counts.to(state.device, state.dtype)

    def drain(self) -> None:
        """Wait for queued odsF jobs and add their counts to the states."""
        pending, self._pending = self._pending, []
        for future in pending:
            self._add_ods(torch.from_numpy(future.result()))
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None

    def compute(self) -> dict[str, float]:
        self.drain()
        return super().compute()

    def merge(self, other: "Meter") -> "Meter":
        self.drain()
        if isinstance(other, EdgeMeter):
            other.drain()
        return super().merge(other)

    def all_reduce(self) -> None:
        self.drain()
        super().all_reduce()

    def reset(self) -> None:
        self.drain()
        super().reset()

    def _compute(self, states: dict[str, Tensor]) -> dict[str, float]:
        out: dict[str, float] = {}
        if int(states["n_valid"]) == 0:
            out["F_tol"] = math.nan
        else:
            precision = states["pred_match"].double() / states["pred_pos"].double()
            recall = states["gt_match"].double() / states["gt_pos"].double()
            f = 2 * precision * recall / (precision + recall)
            out["F_tol"] = 100.0 * float(torch.nan_to_num(f, nan=0.0).max())
        if self.wants_ods:
            if self.backend_problem is not None:
                if self.backend_problem not in EdgeMeter._warned:
                    EdgeMeter._warned.add(self.backend_problem)
                    log.warning("task %s: %s", self.task.name, self.backend_problem)
                out["odsF"] = math.nan
            elif int(states["n_valid"]) == 0:
                out["odsF"] = math.nan
            else:
                out["odsF"] = ods_from_counts(states["ods_counts"])
        return out


def resize_prediction(pred: Tensor, size: tuple[int, int], kind: str) -> Tensor:
    """Bring a raw head output ``[B, C, h, w]`` to the target size (H, W), as MTI-Net resizes its
    post-processed predictions back to the original image size (PROTOCOL.md 2): labels with
    nearest neighbour (OpenCV ``INTER_NEAREST``, i.e. on the argmax; nearest on logits gives the same
    labels), saliency and edges as probabilities with bilinear interpolation (returned as logits
    again, so the meters' sigmoid gives the interpolated probability), normals as unit vectors with
    bilinear interpolation (the meter renormalises), depth bilinearly. Returns float64 for the
    probability kinds, the input's dtype otherwise.
    """
    size = (int(size[0]), int(size[1]))
    if tuple(pred.shape[-2:]) == size:
        return pred
    if kind == "segmentation":
        return F.interpolate(pred, size=size, mode="nearest")
    if kind in ("saliency", "edge"):
        prob = F.interpolate(torch.sigmoid(pred.double()), size=size, mode="bilinear", align_corners=False)
        prob = prob.clamp(1e-15, 1 - 1e-15)
        return torch.log(prob) - torch.log1p(-prob)
    if kind == "normals":
        unit = F.normalize(pred.double(), p=2, dim=1, eps=1e-12)
        return F.interpolate(unit, size=size, mode="bilinear", align_corners=False).to(pred.dtype)
    if kind == "depth":
        return F.interpolate(pred, size=size, mode="bilinear", align_corners=False)
    raise ValueError(f"no resize rule for task kind {kind!r}")


_METERS: dict[str, type[Meter]] = {
    "segmentation": SegmentationMeter,
    "depth": DepthMeter,
    "normals": NormalsMeter,
    "saliency": SaliencyMeter,
    "edge": EdgeMeter,
}


def build_meter(task: TaskSpec, skip_expensive: bool = False) -> Meter:
    """The meter for ``task.kind`` (``skip_expensive``: leave out metrics such as odsF whose cost
    dwarfs the forward passes; used for the periodic evaluations during training).

    Raises:
        ValueError: the task asks for a metric its meter does not compute, or (edge) has no
            ``options["max_dist"]``.
    """
    try:
        cls = _METERS[task.kind]
    except KeyError:
        raise ValueError(f"task {task.name!r}: no meter for kind {task.kind!r}") from None
    return cls(task, skip_expensive=skip_expensive)
