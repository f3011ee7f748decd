"""The meters against docs/protocol.md 3: an independent numpy implementation on random predictions,
small hand-computed cases, the SEISM-style edge odsF, and predictions resized to original size."""

from __future__ import annotations

import importlib.util
import logging
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from mtpeft_bench.metrics import edge as metrics  # the module whose edge_backend the EdgeMeter calls
from mtpeft_bench.metrics import boundary_counts, build_meter, ods_from_counts, resize_prediction
from mtpeft_bench.registry import get_dataset
from mtpeft_bench.tasks.protocols import edge_task_with_approximation
from mtpeft_bench.tasks.specs import depth_task, normals_task, saliency_task, segmentation_task


# -- an independent implementation of docs/protocol.md 3, written from the text (numpy, per image loops) --

def ref_miou(preds, gts, n_classes):
    tp = np.zeros(n_classes)
    fp = np.zeros(n_classes)
    fn = np.zeros(n_classes)
    for p, g in zip(preds, gts):
        valid = g != 255
        for c in range(n_classes):
            tp[c] += np.sum((g == c) & (p == c) & valid)
            fp[c] += np.sum((g != c) & (p == c) & valid)
            fn[c] += np.sum((g == c) & (p != c) & valid)
    return 100 * np.mean(tp / np.maximum(tp + fp + fn, 1e-8))


def ref_saliency(probs, gts):
    thresholds = np.linspace(0.2, 0.9, 15)
    ious = []
    for t in thresholds:
        per_image = []
        for p, g in zip(probs, gts):
            pm, gm = p > t, g > 0.5
            union = np.sum(pm | gm)
            per_image.append(1.0 if union == 0 else np.sum(pm & gm) / union)
        ious.append(np.mean(per_image))
    best_f = 0.0
    for t in np.arange(1, 20) * 0.05:
        tp = sum(np.sum((p >= t) & (g > 0.5)) for p, g in zip(probs, gts))
        pp = sum(np.sum(p >= t) for p in probs)
        ap = sum(np.sum(g > 0.5) for g in gts)
        prec, rec = (tp / pp if pp else 0.0), (tp / ap if ap else 0.0)
        f = 1.3 * prec * rec / (0.3 * prec + rec) if prec + rec > 0 else 0.0
        best_f = max(best_f, f)
    return 100 * max(ious), 100 * best_f


def ref_normals(preds, gts):
    angles = []
    for p, g in zip(preds, gts):
        valid = ~(g == 255).all(axis=0)
        unit = p / np.linalg.norm(p, axis=0, keepdims=True)
        cos = np.clip(np.sum(unit * g, axis=0), -1, 1)[valid]
        angles.append(np.degrees(np.arccos(cos)))
    a = np.concatenate(angles)
    return {"mean": a.mean(), "median": np.median(a), "rmse": np.sqrt(np.mean(a ** 2)),
            "11.25": 100 * np.mean(a < 11.25), "22.5": 100 * np.mean(a < 22.5), "30": 100 * np.mean(a < 30)}


def ref_depth(preds, gts):
    sq, lsq, n = 0.0, 0.0, 0
    for p, g in zip(preds, gts):
        valid = (g != 255) & (g > 0)
        pv = np.maximum(p[valid], 1e-9)
        sq += np.sum((g[valid] - pv) ** 2)
        lsq += np.sum((np.log(g[valid]) - np.log(pv)) ** 2)
        n += valid.sum()
    return math.sqrt(sq / n), math.sqrt(lsq / n)


def _stream(task, preds, targets, split_at=3):
    """Feed the meter in two batches through two meters and merge them (streaming + reduction)."""
    a, b = build_meter(task), build_meter(task)
    a.update(preds[:split_at], targets[:split_at])
    b.update(preds[split_at:], targets[split_at:])
    return a.merge(b).compute()


def test_segmentation_matches_the_reference_on_random_predictions():
    rng = np.random.default_rng(0)
    task = segmentation_task("semseg", 5, 1.0, "")
    logits = rng.normal(size=(6, 5, 9, 11))
    gt = rng.integers(0, 5, (6, 9, 11))
    gt[rng.random(gt.shape) < 0.2] = 255
    out = _stream(task, torch.from_numpy(logits), torch.from_numpy(gt))
    expected = ref_miou(list(logits.argmax(1)), list(gt), 5)
    assert out["mIoU"] == pytest.approx(expected, abs=1e-9)


def test_saliency_matches_the_reference_on_random_predictions():
    rng = np.random.default_rng(1)
    logits = rng.normal(scale=2, size=(6, 1, 8, 10))
    gt = (rng.random((6, 1, 8, 10)) < 0.3).astype(np.float32)
    gt[2] = 0.0  # an image without salient pixels
    out = _stream(saliency_task(), torch.from_numpy(logits), torch.from_numpy(gt))
    probs = 1 / (1 + np.exp(-logits[:, 0]))
    miou, maxf = ref_saliency(list(probs), list(gt[:, 0]))
    assert out["mIoU"] == pytest.approx(miou, abs=1e-9)
    assert out["maxF"] == pytest.approx(maxf, abs=1e-9)


def test_saliency_double_sigmoid_switch_reproduces_the_reference_bug():
    rng = np.random.default_rng(2)
    logits = torch.from_numpy(rng.normal(scale=3, size=(4, 1, 8, 8)))
    gt = torch.from_numpy((rng.random((4, 1, 8, 8)) < 0.4).astype(np.float32))
    plain = get_dataset("pascal_mt")().task_specs(["sal"])[0]
    bugged = get_dataset("pascal_mt")(get_dataset("pascal_mt").Config(sal_maxf_double_sigmoid=True)).task_specs(["sal"])[0]
    a, b = build_meter(plain), build_meter(bugged)
    a.update(logits, gt)
    b.update(logits, gt)
    probs = torch.sigmoid(torch.sigmoid(logits)).numpy()[:, 0]
    _, expected = ref_saliency(list(probs), list(gt.numpy()[:, 0]))
    assert b.compute()["maxF"] == pytest.approx(expected, abs=1e-9)
    assert a.compute()["mIoU"] == b.compute()["mIoU"] and a.compute()["maxF"] != b.compute()["maxF"]


def test_normals_and_depth_match_the_reference_on_random_predictions():
    rng = np.random.default_rng(3)
    pred = rng.normal(size=(6, 3, 7, 9))
    gt = rng.normal(size=(6, 3, 7, 9))
    gt /= np.linalg.norm(gt, axis=1, keepdims=True)
    gt[:, :, :2, :3] = 255.0
    out = _stream(normals_task(), torch.from_numpy(pred), torch.from_numpy(gt))
    expected = ref_normals(list(pred), list(gt))
    for key in ("mean", "rmse", "11.25", "22.5", "30"):
        assert out[key] == pytest.approx(expected[key], abs=1e-7), key
    assert out["median"] == pytest.approx(expected["median"], abs=0.01)  # 0.01° histogram bins

    d_pred = rng.uniform(0.1, 5, size=(6, 1, 7, 9))
    d_gt = rng.uniform(0.5, 8, size=(6, 1, 7, 9))
    d_gt[:, :, 0] = 255.0
    d_gt[:, :, 1, :2] = 0.0
    out = _stream(depth_task(), torch.from_numpy(d_pred), torch.from_numpy(d_gt))
    rmse, log_rmse = ref_depth(list(d_pred), list(d_gt))
    assert out["rmse"] == pytest.approx(rmse, rel=1e-12) and out["log_rmse"] == pytest.approx(log_rmse, rel=1e-12)


def test_hand_computed_cases():
    # semseg, 2 classes, one image: gt [0 0 1 1], pred [0 1 1 1] -> IoU0 = 1/2, IoU1 = 2/3
    seg = build_meter(segmentation_task("s", 2, 1.0, ""))
    logits = torch.tensor([[[[5.0, 0.0, 0.0, 0.0]], [[0.0, 5.0, 5.0, 5.0]]]])
    seg.update(logits, torch.tensor([[[0, 0, 1, 1]]]))
    assert seg.compute()["mIoU"] == pytest.approx(100 * (1 / 2 + 2 / 3) / 2)
    # normals: a prediction at 90 degrees from the GT
    nm = build_meter(normals_task())
    nm.update(torch.tensor([[[[1.0]], [[0.0]], [[0.0]]]]), torch.tensor([[[[0.0]], [[0.0]], [[1.0]]]]))
    assert nm.compute()["mean"] == pytest.approx(90.0)
    # depth: errors 1 and 3 -> rmse sqrt(5)
    dm = build_meter(depth_task())
    dm.update(torch.tensor([[[[2.0, 1.0]]]]), torch.tensor([[[[1.0, 4.0]]]]))
    assert dm.compute()["rmse"] == pytest.approx(math.sqrt(5))


# -- edges: SEISM-style odsF -------------------------------------------------------------------

def _edge_case(shift: int, size: int = 100):
    gt = np.zeros((size, size), np.float32)
    gt[20:80, 50] = 1.0
    pred = np.full((size, size), -8.0)
    pred[20:80, 50 + shift] = 8.0
    return torch.from_numpy(pred)[None, None], torch.from_numpy(gt)[None, None]


@pytest.mark.parametrize("shift, lowest, highest", [(0, 98.0, 100.0), (1, 95.0, 100.0), (3, 0.0, 0.0)])
def test_odsf_perfect_shifted_and_out_of_tolerance(shift, lowest, highest, seeded_bsds_matching):
    # tolerance 0.0075 x diagonal(100 x 100) = 1.06 px: a 1-px shift matches, a 3-px shift does not.
    # BSDS correspondPixels adds random outlier edges, so with some draws a pixel or two of an exact
    # match goes unmatched (60 of 60 GT pixels usually, 59 or 58 now and then); the draws are seeded.
    meter = build_meter(edge_task_with_approximation(0.0075))
    pred, gt = _edge_case(shift)
    meter.update(pred, gt)
    out = meter.compute()
    assert lowest <= out["odsF"] <= highest
    if shift == 3:
        assert out["F_tol"] == 0.0


def test_odsf_thins_thick_predictions_before_matching():
    gt = np.zeros((60, 60), np.float32)
    gt[10:50, 30] = 1.0
    pred = np.full((60, 60), -8.0)
    pred[10:50, 28:33] = 8.0  # 5 px thick (200 px): thinning keeps about one line, which matches
    meter = build_meter(edge_task_with_approximation(0.011))
    meter.update(torch.from_numpy(pred)[None, None], torch.from_numpy(gt)[None, None])
    assert meter.compute()["odsF"] > 90.0
    counts = boundary_counts(1 / (1 + np.exp(-pred)), gt > 0.5, 0.011, [0.5])
    assert counts[1, 0] == 40 and counts[0, 0] >= 30 and counts[3, 0] < 50


def test_ods_counts_sum_over_images_and_follow_seism_special_cases():
    # one threshold, two images: pooled recall 3/4, precision 3/6 -> F = 0.6
    counts = torch.tensor([[3], [4], [3], [6]])
    assert ods_from_counts(counts) == pytest.approx(60.0)
    assert ods_from_counts(torch.tensor([[0], [0], [0], [5]])) == 0.0  # no GT: recall 1, precision 0
    assert ods_from_counts(torch.tensor([[0, 2], [4, 4], [0, 2], [0, 2]])) == pytest.approx(100 * 2 * 0.5 / 1.5)


def test_odsf_streams_and_merges_like_one_pass():
    rng = np.random.default_rng(5)
    task = edge_task_with_approximation(0.011)
    gt = (rng.random((4, 1, 24, 24)) < 0.05).astype(np.float32)
    pred = torch.from_numpy(rng.normal(size=(4, 1, 24, 24)) + 4 * gt)
    one = build_meter(task)
    one.update(pred, torch.from_numpy(gt))
    a, b = build_meter(task), build_meter(task)
    a.update(pred[:1], torch.from_numpy(gt[:1]))
    b.update(pred[1:], torch.from_numpy(gt[1:]))
    merged = a.merge(b).states["ods_counts"]
    reference = one.states["ods_counts"]
    # GT and predicted pixel counts are exact; the matched counts may differ by a few pixels because
    # BSDS correspondPixels connects outliers at random (seeded from the clock, as the MATLAB mex)
    assert torch.equal(merged[[1, 3]], reference[[1, 3]])
    assert (merged[[0, 2]] - reference[[0, 2]]).abs().max() <= 0.1 * reference[1].max()
    assert abs(a.compute()["odsF"] - one.compute()["odsF"]) < 5.0


def test_without_the_backend_odsf_is_nan_and_says_why(monkeypatch, caplog):
    monkeypatch.setattr(metrics, "edge_backend", lambda: "odsF is not computed: pyEdgeEval is not installed")
    metrics.EdgeMeter._warned.clear()
    meter = build_meter(edge_task_with_approximation(0.011))
    pred, gt = _edge_case(0)
    meter.update(pred, gt)
    with caplog.at_level(logging.WARNING):
        out = meter.compute()
    assert math.isnan(out["odsF"]) and out["F_tol"] == pytest.approx(100.0)
    assert "pyEdgeEval is not installed" in caplog.text


def test_thinning_is_the_matlab_bwmorph_algorithm():
    """scikit-image's thin (used for odsF and PASCAL edges) against pyEdgeEval's own port of MATLAB's
    bwmorph 'thin', loaded from its file (its package __init__ needs OpenCV)."""
    import pyEdgeEval
    from skimage.morphology import thin

    path = Path(pyEdgeEval.__file__).parent / "preprocess" / "thin" / "thin.py"
    spec = importlib.util.spec_from_file_location("pyedgeeval_thin", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rng = np.random.default_rng(0)
    for _ in range(5):
        x = rng.random((40, 50)) < 0.45
        np.testing.assert_array_equal(thin(x), module.binary_thin(x))


# -- predictions at another resolution ---------------------------------------------------------

def test_resize_prediction_rules():
    logits = torch.tensor([[[[0.0, 1.0], [2.0, 3.0]]]]).repeat(1, 2, 1, 1)
    logits[:, 1] *= -1
    seg = resize_prediction(logits, (4, 4), "segmentation")
    assert seg.shape == (1, 2, 4, 4) and torch.equal(seg[0, 0, :2, :2], torch.zeros(2, 2))  # nearest copies
    sal = resize_prediction(torch.tensor([[[[-20.0, 20.0]]]]), (1, 4), "saliency")
    # probabilities 0 and 1 interpolated linearly (half-pixel centres): 0, 0.25, 0.75, 1
    np.testing.assert_allclose(torch.sigmoid(sal).numpy().ravel(), [0, 0.25, 0.75, 1], atol=1e-8)
    normals = resize_prediction(torch.tensor([[[[2.0, 0.0]], [[0.0, 5.0]], [[0.0, 0.0]]]]), (1, 4), "normals")
    np.testing.assert_allclose(normals[0, :, 0, 1].numpy(), [0.75, 0.25, 0.0], atol=1e-6)  # unit vectors mixed
    with pytest.raises(ValueError, match="no resize rule"):
        resize_prediction(logits, (3, 3), "unknown")


def test_periodic_evaluations_can_skip_expensive_metrics():
    """odsF's boundary matching is left out when asked (evaluations during training); F_tol stays."""
    from mtpeft_bench.metrics import build_meter
    from mtpeft_bench.tasks.specs import edge_task

    task = edge_task("odsF", 0.011)
    torch.manual_seed(0)
    pred = torch.randn(1, 1, 16, 16)
    target = (torch.rand(1, 1, 16, 16) > 0.8).float()
    cheap = build_meter(task, skip_expensive=True)
    full = build_meter(task)
    cheap.update(pred, target)
    full.update(pred, target)
    assert "odsF" not in cheap.compute() and "odsF" in full.compute()
    assert cheap.compute()["F_tol"] == full.compute()["F_tol"]
