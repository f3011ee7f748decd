"""Streaming meters (docs/protocol.md 3): hand-computed cases, an in-memory numpy implementation of each
definition on random data, merge / all-reduce equivalence and ignore handling."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.ndimage import distance_transform_edt

from mtpeft_bench.metrics import (
    DepthMeter,
    EdgeMeter,
    NormalsMeter,
    SaliencyMeter,
    SegmentationMeter,
    build_meter,
)
from mtpeft_bench.tasks.base import MetricSpec, TaskSpec

IGN = 255
REL = 1e-6

METRICS = {
    "segmentation": (("mIoU", True, True), ("pixAcc", True, False)),
    "depth": (("rmse", False, True), ("log_rmse", False, False), ("abs_rel", False, False), ("delta1", True, False)),
    "normals": (("mean", False, True), ("median", False, False), ("rmse", False, False), ("11.25", True, False),
                ("22.5", True, False), ("30", True, False)),
    "saliency": (("mIoU", True, True), ("maxF", True, False)),
    "edge": (("F_tol", True, True),),
}
LOSS = {"segmentation": "cross_entropy", "depth": "depth_l1", "normals": "normals_l1", "saliency": "balanced_bce",
        "edge": "edge_bce"}


def make_task(kind, num_outputs=1, metrics=None, **options):
    specs = tuple(MetricSpec(n, hib, primary=prim) for n, hib, prim in (metrics or METRICS[kind]))
    return TaskSpec(name=f"t_{kind}", kind=kind, num_outputs=num_outputs, loss=LOSS[kind], loss_weight=1.0,
                    metrics=specs, options=options)


def logit(p):
    p = torch.as_tensor(p, dtype=torch.float64)
    return torch.log(p / (1 - p)).float()


def stream(meter, samples, sizes):
    """Feed (pred, target) samples to ``meter`` in batches of the given sizes (must sum to len)."""
    assert sum(sizes) == len(samples)
    start = 0
    for size in sizes:
        chunk = samples[start:start + size]
        meter.update(torch.stack([p for p, _ in chunk]), torch.stack([t for _, t in chunk]))
        start += size
    return meter


def assert_close(got, expected, rel=REL, abs_=1e-9):
    assert set(expected) <= set(got)
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, rel=rel, abs=abs_), key


# ================================================================================ numpy implementations
# Straightforward, in-memory versions of the docs/protocol.md 3 definitions (every pixel kept).

def np_segmentation(samples, num_classes):
    pred = np.concatenate([p.numpy().argmax(0).ravel() for p, _ in samples])
    gt = np.concatenate([t.numpy().ravel() for _, t in samples])
    valid = gt != IGN
    pred, gt = pred[valid], gt[valid]
    ious = []
    for c in range(num_classes):
        tp = np.sum((pred == c) & (gt == c))
        fp = np.sum((pred == c) & (gt != c))
        fn = np.sum((pred != c) & (gt == c))
        ious.append(tp / max(tp + fp + fn, 1e-8))
    return {"mIoU": 100 * np.mean(ious), "pixAcc": 100 * np.mean(pred == gt)}


def np_depth(samples):
    pred = np.concatenate([p.numpy().astype(np.float64).ravel() for p, _ in samples])
    gt = np.concatenate([t.numpy().astype(np.float64).ravel() for _, t in samples])
    valid = (gt != IGN) & (gt > 0)
    pred, gt = np.maximum(pred[valid], 1e-9), gt[valid]
    return {
        "rmse": np.sqrt(np.mean((gt - pred) ** 2)),
        "log_rmse": np.sqrt(np.mean((np.log(gt) - np.log(pred)) ** 2)),
        "abs_rel": np.mean(np.abs(pred - gt) / gt),
        "delta1": 100 * np.mean(np.maximum(pred / gt, gt / pred) < 1.25),
    }


def np_normals_angles(samples):
    angles = []
    for p, t in samples:
        p = p.numpy().astype(np.float64)
        t = t.numpy().astype(np.float64)
        valid = np.all(t != IGN, axis=0)
        unit = p / np.maximum(np.linalg.norm(p, axis=0, keepdims=True), 1e-12)
        cos = np.clip(np.sum(unit * t, axis=0), -1, 1)
        angles.append(np.degrees(np.arccos(cos))[valid])
    return np.concatenate(angles)


def np_normals(samples):
    a = np_normals_angles(samples)
    return {"mean": a.mean(), "median": np.median(a), "rmse": np.sqrt(np.mean(a ** 2)),
            "11.25": 100 * np.mean(a < 11.25), "22.5": 100 * np.mean(a < 22.5), "30": 100 * np.mean(a < 30)}


def np_saliency(samples):
    ious = []
    tp = np.zeros(19)
    predicted = np.zeros(19)
    actual = 0
    f_thresholds = [0.05 * i for i in range(1, 20)]
    for p, t in samples:
        prob = 1 / (1 + np.exp(-p.numpy()[0].astype(np.float64)))
        t = t.numpy()[0]
        valid = t != IGN
        if not valid.any():
            continue
        gt = (t >= 0.5) & valid
        row = []
        for thr in np.linspace(0.2, 0.9, 15):
            mask = (prob > thr) & valid
            union = np.sum(gt | mask)
            row.append(1.0 if union == 0 else np.sum(gt & mask) / union)
        ious.append(row)
        for i, thr in enumerate(f_thresholds):
            mask = (prob >= thr) & valid
            tp[i] += np.sum(mask & gt)
            predicted[i] += np.sum(mask)
        actual += np.sum(gt)
    with np.errstate(divide="ignore", invalid="ignore"):
        prec, rec = tp / predicted, tp / actual
        f = 1.3 * prec * rec / (0.3 * prec + rec)
    return {"mIoU": 100 * np.max(np.mean(ious, axis=0)), "maxF": 100 * np.max(np.nan_to_num(f))}


def np_edge(samples, max_dist):
    # Tolerance matching by exact Euclidean distance transforms (scipy), one per threshold.
    thresholds = [0.01 * i for i in range(1, 100)]
    pred_pos = np.zeros(99)
    pred_match = np.zeros(99)
    gt_match = np.zeros(99)
    gt_pos = 0
    for p, t in samples:
        prob = 1 / (1 + np.exp(-p.numpy()[0].astype(np.float64)))
        t = t.numpy()[0]
        h, w = t.shape
        r = max_dist * math.hypot(h, w)
        valid = t != IGN
        gt = (t >= 0.5) & valid
        dist_to_gt = distance_transform_edt(~gt) if gt.any() else np.full(gt.shape, np.inf)
        gt_pos += gt.sum()
        for i, thr in enumerate(thresholds):
            pred = (prob >= thr) & valid
            dist_to_pred = distance_transform_edt(~pred) if pred.any() else np.full(gt.shape, np.inf)
            pred_pos[i] += pred.sum()
            pred_match[i] += np.sum(pred & (dist_to_gt <= r))
            gt_match[i] += np.sum(gt & (dist_to_pred <= r))
    with np.errstate(divide="ignore", invalid="ignore"):
        prec, rec = pred_match / pred_pos, gt_match / gt_pos
        f = 2 * prec * rec / (prec + rec)
    return {"F_tol": 100 * np.max(np.nan_to_num(f))}


# ========================================================================================= random data
# Each generator returns a list of per-image (pred [C, H, W], target) pairs, deterministic by seed.

def seg_samples(seed=0, n=7, c=5, h=9, w=11):
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        target = torch.randint(0, c, (h, w), generator=g)
        logits = torch.randn(c, h, w, generator=g) + 1.5 * F.one_hot(target, c).permute(2, 0, 1)
        target[torch.rand(h, w, generator=g) < 0.2] = IGN
        if i == 3:
            target[:] = IGN  # a "non-person" image: all ignore
        out.append((logits, target))
    return out


def depth_samples(seed=1, n=7, h=8, w=10):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        target = torch.rand(1, h, w, generator=g) * 9 + 0.5
        pred = target * (1 + 0.3 * torch.randn(1, h, w, generator=g))  # some negative predictions
        target[torch.rand(1, h, w, generator=g) < 0.2] = IGN
        out.append((pred, target))
    return out


def normals_samples(seed=2, n=7, h=8, w=10):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        target = F.normalize(torch.randn(3, h, w, generator=g), dim=0)
        pred = (target + 0.6 * torch.randn(3, h, w, generator=g)) * 3
        invalid = torch.rand(h, w, generator=g) < 0.2
        target[:, invalid] = IGN
        out.append((pred, target))
    return out


def saliency_samples(seed=3, n=7, h=8, w=10):
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        target = (torch.rand(1, h, w, generator=g) < 0.35).float()
        if i == 2:
            target[:] = 0  # an image without salient pixels
        pred = 2.0 * (target - 0.5) + 1.5 * torch.randn(1, h, w, generator=g)
        target[torch.rand(1, h, w, generator=g) < 0.1] = IGN
        if i == 5:
            target[:] = IGN  # skipped by mIoU
        out.append((pred, target))
    return out


def edge_samples(seed=4, n=7, h=24, w=32):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        target = torch.zeros(1, h, w)
        row = int(torch.randint(2, h - 2, (1,), generator=g))
        col = int(torch.randint(2, w - 2, (1,), generator=g))
        target[0, row, :] = 1
        target[0, :, col] = 1
        # prediction: a blurred, shifted copy of the edges plus noise
        shifted = torch.roll(target, shifts=(int(torch.randint(-3, 4, (1,), generator=g)),
                                             int(torch.randint(-3, 4, (1,), generator=g))), dims=(1, 2))
        pred = 4 * F.avg_pool2d(shifted[None], 3, 1, 1)[0] - 2.5 + 1.2 * torch.randn(1, h, w, generator=g)
        target[torch.rand(1, h, w, generator=g) < 0.05] = IGN
        out.append((pred, target))
    return out


EDGE_MAX_DIST = 0.06  # r = 0.06 · hypot(24, 32) = 0.06 · 40 = 2.4 px


def cases():
    """(task, samples, numpy reference) for each meter kind, for the random-data tests."""
    seg = seg_samples()
    dep = depth_samples()
    nor = normals_samples()
    sal = saliency_samples()
    edg = edge_samples()
    return {
        "segmentation": (make_task("segmentation", 5), seg, lambda s: np_segmentation(s, 5)),
        "depth": (make_task("depth"), dep, np_depth),
        "normals": (make_task("normals", 3), nor, np_normals),
        "saliency": (make_task("saliency"), sal, np_saliency),
        "edge": (make_task("edge", max_dist=EDGE_MAX_DIST), edg, lambda s: np_edge(s, EDGE_MAX_DIST)),
    }


KINDS = ["segmentation", "depth", "normals", "saliency", "edge"]


# =============================================================================================== hand cases
def test_segmentation_by_hand():
    # GT          Pred         4 classes, one (class 3) absent from both
    # 0 0 1       0 1 1
    # 1 2 255     1 2 0        (the 255 pixel is ignored whatever is predicted)
    # valid pixels (g, p): (0,0) (0,1) (1,1) (1,1) (2,2)
    # class 0: TP 1, FP 0, FN 1 → 1/2;  class 1: TP 2, FP 1, FN 0 → 2/3;  class 2: 1/1;  class 3: 0/max(0,1e-8) = 0
    # mIoU = (1/2 + 2/3 + 1 + 0) / 4 = 13/24;  pixAcc = 4/5
    gt = torch.tensor([[0, 0, 1], [1, 2, IGN]])
    pred_cls = torch.tensor([[0, 1, 1], [1, 2, 0]])
    logits = 5.0 * F.one_hot(pred_cls, 4).permute(2, 0, 1).float()
    meter = build_meter(make_task("segmentation", 4))
    assert isinstance(meter, SegmentationMeter)
    meter.update(logits[None], gt[None])
    assert_close(meter.compute(), {"mIoU": 100 * 13 / 24, "pixAcc": 80.0})
    assert meter.class_iou() == pytest.approx([50.0, 200 / 3, 100.0, 0.0])
    # an all-ignore image (human parts on a non-person image) changes nothing
    meter.update(torch.randn(1, 4, 2, 3), torch.full((1, 2, 3), IGN))
    assert_close(meter.compute(), {"mIoU": 100 * 13 / 24, "pixAcc": 80.0})


def test_depth_by_hand():
    # g = 1, 2, 4 (valid), 255 (ignored);  p = 2, 2, 2, 7
    # squared errors 1, 0, 4 → rmse = sqrt(5/3)
    # log errors ln 2, 0, -ln 2 → log_rmse = ln 2 · sqrt(2/3)
    # abs_rel = (1/1 + 0 + 2/4) / 3 = 0.5;  max(p/g, g/p) = 2, 1, 2 → delta1 = 1/3
    meter = build_meter(make_task("depth"))
    meter.update(torch.tensor([2.0, 2.0, 2.0, 7.0]).reshape(1, 1, 2, 2),
                 torch.tensor([1.0, 2.0, 4.0, IGN]).reshape(1, 1, 2, 2))
    assert_close(meter.compute(), {"rmse": math.sqrt(5 / 3), "log_rmse": math.log(2) * math.sqrt(2 / 3),
                                   "abs_rel": 0.5, "delta1": 100 / 3})


def test_depth_clamps_negative_predictions_like_the_reference():
    # g = 1, p = -1: the reference DepthMeter clamps p to 1e-9 first → rmse = 1 - 1e-9, not 2.
    meter = DepthMeter(make_task("depth"))
    meter.update(torch.tensor([-1.0]).reshape(1, 1, 1, 1), torch.tensor([1.0]).reshape(1, 1, 1, 1))
    assert meter.compute()["rmse"] == pytest.approx(1.0, abs=1e-6)


def test_depth_is_pooled_not_per_image():
    # image 1: 1 pixel, error 3;  image 2: 3 pixels, error 1
    # pooled: sqrt((9 + 1 + 1 + 1) / 4) = sqrt(3);  per-image average would be (3 + 1) / 2 = 2
    meter = DepthMeter(make_task("depth"))
    meter.update(torch.tensor([4.0, 0, 0, 0]).reshape(1, 1, 2, 2), torch.tensor([1.0, IGN, IGN, IGN]).reshape(1, 1, 2, 2))
    meter.update(torch.full((1, 1, 2, 2), 2.0), torch.tensor([1.0, 1.0, 1.0, IGN]).reshape(1, 1, 2, 2))
    assert meter.compute()["rmse"] == pytest.approx(math.sqrt(3), rel=REL)


def test_normals_by_hand():
    # target (0, 0, 1) everywhere; predictions at 0°, 20°, 45°, 90° (unnormalised), one invalid pixel.
    # mean = (0 + 20 + 45 + 90) / 4 = 38.75;  median = (20 + 45) / 2 = 32.5
    # rmse = sqrt((0 + 400 + 2025 + 8100) / 4) = sqrt(2631.25);  <11.25: 1/4, <22.5: 2/4, <30: 2/4
    s, c = math.sin(math.radians(20)), math.cos(math.radians(20))
    # (x, y, z) per pixel: 0°, 20°, 45°, 90°, and an arbitrary vector on the invalid pixel
    vectors = [(0.0, 0.0, 5.0), (2 * s, 0.0, 2 * c), (1.0, 0.0, 1.0), (0.0, 3.0, 0.0), (0.3, 0.4, 0.5)]
    pred = torch.tensor(vectors, dtype=torch.float32).T.reshape(1, 3, 1, 5)
    target = torch.tensor([(0.0, 0.0, 1.0)] * 4 + [(IGN, 0.5, 0.5)]).T.reshape(1, 3, 1, 5)  # 255 in one channel
    meter = build_meter(make_task("normals", 3))
    assert isinstance(meter, NormalsMeter)
    meter.update(pred, target)
    got = meter.compute()
    assert_close(got, {"mean": 38.75, "rmse": math.sqrt(2631.25), "11.25": 25.0, "22.5": 50.0, "30": 50.0}, rel=1e-5)
    assert got["median"] == pytest.approx(32.5, abs=0.005 + 1e-9)


def test_normals_opposite_and_odd_median():
    # angles 180° (opposite) and 0° and 90° → median 90, mean 90, rmse sqrt((180² + 90²) / 3)
    pred = torch.tensor([(0.0, 0.0, -1.0), (0.0, 0.0, 2.0), (1.0, 0.0, 0.0)]).T.reshape(1, 3, 1, 3)
    target = torch.tensor([(0.0, 0.0, 1.0)] * 3).T.reshape(1, 3, 1, 3)
    meter = NormalsMeter(make_task("normals", 3))
    meter.update(pred, target)
    got = meter.compute()
    assert got["mean"] == pytest.approx(90.0, rel=1e-6)
    assert got["median"] == pytest.approx(90.0, abs=0.005 + 1e-9)
    assert got["rmse"] == pytest.approx(math.sqrt((180 ** 2 + 90 ** 2) / 3), rel=1e-6)


def saliency_hand_samples():
    # A: GT 1 1 / 0 0,  p .97 .57 / .32 .12
    # B: GT 0 1 / 0 0,  p .62 .78 / .12 .12
    # C: GT 0 0 / 0 0,  p .12 .12 / .12 .16
    gts = [[1, 1, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0]]
    probs = [[0.97, 0.57, 0.32, 0.12], [0.62, 0.78, 0.12, 0.12], [0.12, 0.12, 0.12, 0.16]]
    return [(logit(p).reshape(1, 2, 2), torch.tensor(g, dtype=torch.float32).reshape(1, 2, 2))
            for p, g in zip(probs, gts)]


def test_saliency_by_hand():
    # mIoU, thresholds p > t for t = .20 .25 ... .90:
    #   A: t ≤ .30: pred {.97 .57 .32} → 2/3;  .35 ≤ t ≤ .55: {.97 .57} → 1;  t ≥ .60: {.97} → 1/2
    #   B: t ≤ .60: {.62 .78} → 1/2;  .65 ≤ t ≤ .75: {.78} → 1;  t ≥ .80: {} vs {.78} → 0
    #   C: GT and prediction empty at every t → IoU := 1
    #   means: t ≤ .30: (2/3 + 1/2 + 1)/3 = 13/18;  .35–.55: (1 + 1/2 + 1)/3 = 5/6;  .60: 2/3;
    #          .65–.75: (1/2 + 1 + 1)/3 = 5/6;  ≥ .80: 1/2         → mIoU = 5/6
    #   (were empty/empty counted as 0, the max would be 1/2.)
    # maxF, pooled, p ≥ t, 3 positives (.97 .57 .78), 9 negatives (.32 .62 .16 and six .12):
    #   .65 ≤ t ≤ .75: predicted {.97 .78}, TP 2 → P = 1, R = 2/3 → F_0.3 = 1.3·(2/3) / (0.3 + 2/3) = 26/29
    #   .35 ≤ t ≤ .55: predicted 4, TP 3 → P = 3/4, R = 1 → 0.975 / 1.225 = 39/49 < 26/29
    #   t = .60: P = R = 2/3 → 2/3;  t ≥ .80: P = 1, R = 1/3 → 13/19;  t ≤ .30: P ≤ 3/5
    #   → maxF = 26/29 (with β² = 1 it would be 6/7 at t = .35).
    meter = build_meter(make_task("saliency"))
    assert isinstance(meter, SaliencyMeter)
    stream(meter, saliency_hand_samples(), [2, 1])
    assert_close(meter.compute(), {"mIoU": 100 * 5 / 6, "maxF": 100 * 26 / 29})


def test_saliency_ignore_and_all_ignore_image():
    samples = saliency_hand_samples()
    # An ignored pixel is invisible: A's .32 negative ignored → A is IoU 1 for t ≤ .55 as well;
    # an all-ignore image is skipped entirely.
    a_logits, a_gt = samples[0]
    a_gt = a_gt.clone()
    a_gt[0, 1, 0] = IGN
    extra = (torch.randn(1, 2, 2) * 5, torch.full((1, 2, 2), float(IGN)))
    meter = SaliencyMeter(make_task("saliency"))
    stream(meter, [(a_logits, a_gt), samples[1], samples[2], extra], [4])
    # mIoU: t ≤ .30: (1 + 1/2 + 1)/3 = 5/6, same max as before → 5/6
    # maxF: the .32 negative is gone; at .35–.55 still P = 3/4 → unchanged max 26/29
    assert_close(meter.compute(), {"mIoU": 100 * 5 / 6, "maxF": 100 * 26 / 29})


def edge_hand(points, max_r, size=10, ignore=()):
    """One size×size image, GT edge pixel at (5, 5); ``points`` = {(y, x): probability}."""
    probs = torch.full((1, size, size), 1e-9, dtype=torch.float64)
    for (y, x), p in points.items():
        probs[0, y, x] = p
    target = torch.zeros(1, size, size)
    target[0, 5, 5] = 1
    for y, x in ignore:
        target[0, y, x] = IGN
    task = make_task("edge", max_dist=max_r / math.hypot(size, size))  # r = max_r pixels
    meter = build_meter(task)
    meter.update(logit(probs.clamp(1e-7, 1 - 1e-7))[None], target[None])
    return meter.compute()["F_tol"]


def test_edge_tolerance_decides_the_match():
    # GT edge at (5,5); predicted p = .605 at (5,7) (distance 2), p = .905 at (5,8) (distance 3).
    pts = {(5, 7): 0.605, (5, 8): 0.905}
    # r = 2.5: t ≤ .60: predicted {near, far}, 1 matched → P = 1/2, R = 1 → F = 2/3;
    #          .61 ≤ t ≤ .90: {far} only → P = R = 0;  → F_tol = 2/3
    assert edge_hand(pts, 2.5) == pytest.approx(100 * 2 / 3, rel=REL)
    # r = 1.5: nothing within tolerance → 0
    assert edge_hand(pts, 1.5) == pytest.approx(0.0, abs=1e-12)
    # r = 3.5: both match → t ≤ .60: P = R = 1 → 100
    assert edge_hand(pts, 3.5) == pytest.approx(100.0, rel=REL)
    # r = 2.5 with the far pixel ignored: only {near} is ever predicted → 100
    assert edge_hand(pts, 2.5, ignore=[(5, 8)]) == pytest.approx(100.0, rel=REL)


def test_edge_tolerance_is_a_disk_not_a_square():
    # prediction at (7,7): distance 2√2 ≈ 2.83 from the GT pixel (5,5).
    # A 5×5 square window (half-width 2) would match it; the disk of radius 2.5 must not; radius 3 does.
    assert edge_hand({(7, 7): 0.9}, 2.5) == pytest.approx(0.0, abs=1e-12)
    assert edge_hand({(7, 7): 0.9}, 3.0) == pytest.approx(100.0, rel=REL)


def test_edge_odsf_is_computed_now():
    # no GT edge anywhere: SEISM counts recall 1 and precision 0 at every threshold, so odsF = 0
    task = make_task("edge", metrics=(("odsF", True, True),), max_dist=0.0075)
    meter = build_meter(task)
    meter.update(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 4))
    assert meter.compute()["odsF"] == 0.0


# ========================================================================== against numpy, streamed
@pytest.mark.parametrize("kind", KINDS)
def test_streaming_matches_numpy(kind):
    task, samples, reference = cases()[kind]
    meter = stream(build_meter(task), samples, [1, 3, 2, len(samples) - 6])
    got = meter.compute()
    expected = {k: float(v) for k, v in reference(samples).items()}
    assert set(got) == set(expected)
    if kind == "normals":
        assert got["median"] == pytest.approx(expected.pop("median"), abs=0.005 + 1e-9)
    assert_close(got, expected)
    # sanity: the random data is not degenerate
    assert all(math.isfinite(v) for v in got.values())


@pytest.mark.parametrize("kind", KINDS)
def test_merge_equals_one_pass(kind):
    task, samples, _ = cases()[kind]
    whole = stream(build_meter(task), samples, [len(samples)])
    first = stream(build_meter(task), samples[:4], [3, 1])
    second = stream(build_meter(task), samples[4:], [len(samples) - 4])
    assert first.compute() != whole.compute()  # the halves alone differ ...
    first.merge(second)  # ... their sum does not
    assert_close(first.compute(), whole.compute(), rel=1e-12)
    for name, state in whole.states.items():
        assert state.dtype in (torch.float64, torch.int64)
        torch.testing.assert_close(first.states[name], state, rtol=1e-12, atol=0)


@pytest.mark.parametrize("kind", KINDS)
def test_reset_and_empty(kind):
    task, samples, _ = cases()[kind]
    meter = build_meter(task)
    assert all(math.isnan(v) for v in meter.compute().values())
    stream(meter, samples, [len(samples)])
    before = meter.compute()
    meter.reset()
    assert all(math.isnan(v) for v in meter.compute().values())
    stream(meter, samples, [len(samples)])
    assert meter.compute() == before


def test_all_reduce_is_noop_without_distributed():
    task, samples, _ = cases()["segmentation"]
    meter = stream(build_meter(task), samples, [len(samples)])
    before = meter.compute()
    meter.all_reduce()
    assert meter.compute() == before


_RANK1_SCRIPT = """
import datetime, json, sys
import torch
import torch.distributed as dist
from mtpeft_bench.metrics import build_meter

init_file, data_file, out_file = sys.argv[1:4]
data = torch.load(data_file, weights_only=False)
dist.init_process_group("gloo", init_method="file://" + init_file, rank=1, world_size=2,
                        timeout=datetime.timedelta(seconds=60))
try:
    results = {}
    for kind in sorted(data):
        task, share = data[kind]
        meter = build_meter(task)
        meter.update(torch.stack([p for p, _ in share]), torch.stack([t for _, t in share]))
        meter.all_reduce()
        results[kind] = meter.compute()
    with open(out_file, "w") as fh:
        json.dump(results, fh)
finally:
    dist.destroy_process_group()
"""


def test_all_reduce_over_two_processes_equals_one_pass(tmp_path):
    # Rank 0 is this process, rank 1 a child; each sees every other image, then all_reduce.
    import datetime
    import subprocess
    import sys

    import torch.distributed as dist

    if dist.is_initialized():
        pytest.skip("a process group is already initialised in this process")
    all_cases = cases()
    init_file, data_file, out_file = tmp_path / "store", tmp_path / "rank1.pt", tmp_path / "rank1.json"
    torch.save({kind: (task, samples[1::2]) for kind, (task, samples, _) in all_cases.items()}, data_file)
    child = subprocess.Popen([sys.executable, "-c", _RANK1_SCRIPT, str(init_file), str(data_file), str(out_file)])
    reduced = {}
    try:
        dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=0, world_size=2,
                                timeout=datetime.timedelta(seconds=60))
        try:
            for kind in sorted(all_cases):
                task, samples, _ = all_cases[kind]
                meter = stream(build_meter(task), samples[0::2], [1, len(samples[0::2]) - 1])
                meter.all_reduce()
                reduced[kind] = meter.compute()
        finally:
            dist.destroy_process_group()
    finally:
        assert child.wait(timeout=120) == 0
    rank1 = json.loads(out_file.read_text())
    for kind, (task, samples, _) in all_cases.items():
        whole = stream(build_meter(task), samples, [len(samples)]).compute()
        assert_close(reduced[kind], whole, rel=1e-12)
        assert_close(rank1[kind], whole, rel=1e-12)


# ================================================================================ interface / errors
def test_build_meter_kinds_and_validation():
    assert isinstance(build_meter(make_task("depth")), DepthMeter)
    assert isinstance(build_meter(make_task("edge", max_dist=0.011)), EdgeMeter)
    with pytest.raises(ValueError, match="max_dist"):
        build_meter(make_task("edge"))
    with pytest.raises(ValueError, match="AP"):
        build_meter(make_task("depth", metrics=(("AP", True, True),)))


def test_shape_errors():
    meter = build_meter(make_task("segmentation", 3))
    with pytest.raises(ValueError, match="resolution"):
        meter.update(torch.zeros(1, 3, 4, 4), torch.zeros(1, 8, 8, dtype=torch.long))
    with pytest.raises(ValueError, match="channels"):
        meter.update(torch.zeros(1, 2, 4, 4), torch.zeros(1, 4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="class ids"):
        meter.update(torch.zeros(1, 3, 4, 4), torch.full((1, 4, 4), 7))


def test_saliency_threshold_grids():
    from mtpeft_bench.metrics import EDGE_THRESHOLDS, SALIENCY_F_THRESHOLDS, SALIENCY_IOU_THRESHOLDS

    assert np.array_equal(np.array(SALIENCY_IOU_THRESHOLDS), np.linspace(0.2, 0.9, 15))
    assert np.allclose(SALIENCY_F_THRESHOLDS, np.arange(1, 20) * 0.05)
    assert np.allclose(EDGE_THRESHOLDS, np.arange(1, 100) * 0.01)


@pytest.mark.parametrize("kind", KINDS)
def test_low_precision_outputs_are_accepted(kind):
    # AMP heads give bf16; the meter must give the numbers of the same values in float32.
    task, samples, _ = cases()[kind]
    low = [(p.bfloat16(), t) for p, t in samples]
    same = [(p.bfloat16().float(), t) for p, t in samples]
    got = stream(build_meter(task), low, [len(low)]).compute()
    assert_close(got, stream(build_meter(task), same, [len(same)]).compute(), rel=1e-12)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("kind", KINDS)
def test_cuda_matches_cpu(kind):
    task, samples, _ = cases()[kind]
    cpu = stream(build_meter(task), samples, [len(samples)])
    gpu = stream(build_meter(task), [(p.cuda(), t.cuda()) for p, t in samples], [3, len(samples) - 3])
    assert all(s.is_cuda for s in gpu.states.values())
    assert_close(gpu.compute(), cpu.compute(), rel=1e-9)
    gpu.merge(cpu)  # states on different devices merge
    twice = stream(stream(build_meter(task), samples, [len(samples)]), samples, [len(samples)])
    for name, state in twice.states.items():
        torch.testing.assert_close(gpu.states[name].cpu(), state, rtol=1e-9, atol=0)
