"""Streaming evaluation meters, one per task kind (docs/protocol.md 3), and Δm.

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
    sigmoid for maxF, docs/protocol.md 8 item 2). ``mIoU``: for each t in linspace(0.2, 0.9, 15), per image
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
docs/protocol.md 2 "MTI-Net") are brought to the target's size first by :func:`resize_prediction`.

Δm: :func:`delta_m` and :func:`per_task_delta` are re-exported from :mod:`mtpeft_bench.report.delta`.

Modules: :mod:`~mtpeft_bench.metrics.base` (the :class:`Meter` protocol), one per kind
(:mod:`~mtpeft_bench.metrics.segmentation`, :mod:`~mtpeft_bench.metrics.depth`,
:mod:`~mtpeft_bench.metrics.normals`, :mod:`~mtpeft_bench.metrics.saliency`,
:mod:`~mtpeft_bench.metrics.edge`), :mod:`~mtpeft_bench.metrics.seism` (the odsF boundary matching
and its process pool) and :mod:`~mtpeft_bench.metrics.resize` (the resize rules).
:func:`build_meter` and :func:`resize_prediction` pick a meter and a rule by task kind in
:mod:`mtpeft_bench.task_kinds`, the one table of kinds.
"""

from __future__ import annotations

import importlib
from typing import Any

from mtpeft_bench.report.delta import delta_m, per_task_delta
from mtpeft_bench.metrics.base import Meter
from mtpeft_bench.metrics.depth import DepthMeter
from mtpeft_bench.metrics.edge import EDGE_THRESHOLDS, EdgeMeter
from mtpeft_bench.metrics.normals import NORMALS_MEDIAN_BIN_DEG, NORMALS_THRESHOLDS_DEG, NormalsMeter
from mtpeft_bench.metrics.saliency import (SALIENCY_BETA_SQUARED, SALIENCY_F_THRESHOLDS, SALIENCY_IOU_THRESHOLDS,
                                           SaliencyMeter)
from mtpeft_bench.metrics.segmentation import SegmentationMeter
from mtpeft_bench.metrics.seism import boundary_counts, edge_backend, edge_thresholds, ods_from_counts

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
    # the constants of the definitions and the odsF building blocks
    "EDGE_THRESHOLDS",
    "NORMALS_MEDIAN_BIN_DEG",
    "NORMALS_THRESHOLDS_DEG",
    "SALIENCY_BETA_SQUARED",
    "SALIENCY_F_THRESHOLDS",
    "SALIENCY_IOU_THRESHOLDS",
    "boundary_counts",
    "edge_backend",
    "edge_thresholds",
    "ods_from_counts",
]

# The table of task kinds names the meters above, so it is imported on first use of these two
# (importing it here would make metrics and task_kinds import each other).
_FROM_TASK_KINDS = ("build_meter", "resize_prediction")


def __getattr__(name: str) -> Any:
    if name in _FROM_TASK_KINDS:
        return getattr(importlib.import_module("mtpeft_bench.task_kinds"), name)
    raise AttributeError(f"module 'mtpeft_bench.metrics' has no attribute {name!r}")
