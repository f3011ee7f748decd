"""Losses (docs/protocol.md 4.3) against hand-computed values and torch's own CE/BCE."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mtpeft_bench.losses import LOSSES, balanced_bce, compute_losses, cross_entropy, depth_l1, edge_bce, normals_l1
from mtpeft_bench.tasks.base import MetricSpec, TaskSpec

IGN = 255


def make_task(name, kind, num_outputs, loss, weight=1.0, **options):
    metric = {"segmentation": "mIoU", "depth": "rmse", "normals": "mean", "saliency": "mIoU", "edge": "F_tol"}[kind]
    return TaskSpec(name=name, kind=kind, num_outputs=num_outputs, loss=loss, loss_weight=weight,
                    metrics=(MetricSpec(metric, kind not in ("depth", "normals"), primary=True),), options=options)


SEG = make_task("semseg", "segmentation", 2, "cross_entropy")
SAL = make_task("sal", "saliency", 1, "balanced_bce")
EDGE = make_task("edge", "edge", 1, "edge_bce", max_dist=0.0075)
NORMALS = make_task("normals", "normals", 3, "normals_l1")
DEPTH = make_task("depth", "depth", 1, "depth_l1")


# ---------------------------------------------------------------------------------------------- hand values
def test_cross_entropy_by_hand():
    # pixel 0: logits (0, ln 3), target 1 → softmax = (1/4, 3/4) → -ln(3/4) = ln(4/3)
    # pixel 1: logits (0, 0),    target 0 → -ln(1/2) = ln 2
    # pixel 2: ignored (absurd logits must not matter)
    # mean over the 2 valid pixels = (ln(4/3) + ln 2) / 2 = ln(8/3) / 2
    logits = torch.tensor([[0.0, 0.0, 50.0], [math.log(3), 0.0, -50.0]]).reshape(1, 2, 1, 3)
    target = torch.tensor([[[1, 0, IGN]]])
    assert cross_entropy(logits, target, SEG).item() == pytest.approx(math.log(8 / 3) / 2, rel=1e-6)
    # [B, 1, H, W] targets are accepted too
    assert cross_entropy(logits, target[:, None], SEG).item() == pytest.approx(math.log(8 / 3) / 2, rel=1e-6)


def test_balanced_bce_by_hand():
    # logits (ln 3, 0, ln 3, 100), targets (1, 0, 0, ignore):
    #   positive, x = ln 3: ℓ = ln(1 + e^-x) = ln(4/3)
    #   negative, x = 0:    ℓ = ln(1 + e^x)  = ln 2
    #   negative, x = ln 3: ℓ = ln(1 + 3)    = ln 4 = 2 ln 2
    # valid = 3, negatives = 2 → w = 2/3
    # L = [w·ln(4/3) + (1-w)·3 ln 2] / 3 = [2/3 ln(4/3) + ln 2] / 3
    logits = torch.tensor([math.log(3), 0.0, math.log(3), 100.0]).reshape(1, 1, 2, 2)
    target = torch.tensor([1.0, 0.0, 0.0, IGN]).reshape(1, 1, 2, 2)
    expected = (2 / 3 * math.log(4 / 3) + math.log(2)) / 3
    assert balanced_bce(logits, target, SAL).item() == pytest.approx(expected, rel=1e-6)
    # edge_bce: fixed w = 0.95 → [0.95 ln(4/3) + 0.05 · 3 ln 2] / 3
    expected_edge = (0.95 * math.log(4 / 3) + 0.05 * 3 * math.log(2)) / 3
    assert edge_bce(logits, target, EDGE).item() == pytest.approx(expected_edge, rel=1e-6)
    # the positive weight is an option of the task
    edge_half = make_task("edge", "edge", 1, "edge_bce", max_dist=0.0075, pos_weight=0.5)
    assert edge_bce(logits, target, edge_half).item() == pytest.approx(
        (0.5 * math.log(4 / 3) + 0.5 * 3 * math.log(2)) / 3, rel=1e-6)


def test_normals_l1_by_hand():
    # pixel 0: pred (0, 0, 2) → (0, 0, 1), target (0, 0, 1): |diff| = 0
    # pixel 1: pred (3, 4, 0) → (0.6, 0.8, 0), target (1, 0, 0): 0.4 + 0.8 + 0 = 1.2
    # pixel 2: target 255 in all channels → ignored
    # valid elements = 2 pixels × 3 = 6 → 1.2 / 6 = 0.2
    pred = torch.tensor([[0.0, 3.0, 7.0], [0.0, 4.0, -1.0], [2.0, 0.0, 5.0]]).reshape(1, 3, 1, 3)
    target = torch.tensor([[0.0, 1.0, IGN], [0.0, 0.0, IGN], [1.0, 0.0, IGN]]).reshape(1, 3, 1, 3)
    assert normals_l1(pred, target, NORMALS).item() == pytest.approx(0.2, rel=1e-6)


def test_depth_l1_by_hand():
    # valid: (pred 1, gt 2) and (pred 3, gt 2) → |1-2| + |3-2| = 2 over 2 pixels = 1.
    # gt 255 = no measurement; gt 0 also counts as no measurement.
    pred = torch.tensor([1.0, 3.0, 5.0, 9.0]).reshape(1, 1, 2, 2)
    target = torch.tensor([2.0, 2.0, IGN, 0.0]).reshape(1, 1, 2, 2)
    assert depth_l1(pred, target, DEPTH).item() == pytest.approx(1.0)
    assert depth_l1(pred, target[:, 0], DEPTH).item() == pytest.approx(1.0)  # [B, H, W] target


# ---------------------------------------------------------------------------------- against torch / numpy
def test_cross_entropy_matches_torch():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, 7, 6, generator=g) * 3
    target = torch.randint(0, 5, (3, 7, 6), generator=g)
    target[torch.rand(3, 7, 6, generator=g) < 0.3] = IGN
    task = make_task("semseg", "segmentation", 5, "cross_entropy")
    expected = F.cross_entropy(logits, target, ignore_index=IGN)
    assert cross_entropy(logits, target, task).item() == pytest.approx(expected.item(), rel=1e-6)


def _random_binary(seed, shape=(2, 1, 9, 11), ignore_frac=0.2):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(shape, generator=g) * 4
    target = (torch.rand(shape, generator=g) < 0.3).float()
    target[torch.rand(shape, generator=g) < ignore_frac] = IGN
    return logits, target


@pytest.mark.parametrize("fn,fixed_w", [(balanced_bce, None), (edge_bce, 0.95)])
def test_weighted_bce_matches_torch(fn, fixed_w):
    logits, target = _random_binary(1)
    valid = target != IGN
    pos = (target == 1) & valid
    neg = (target == 0) & valid
    n_valid = valid.sum().item()
    w = neg.sum().item() / n_valid if fixed_w is None else fixed_w
    weight = w * pos.float() + (1 - w) * neg.float()  # 0 on ignored pixels
    expected = F.binary_cross_entropy_with_logits(logits, pos.float(), weight=weight, reduction="sum") / n_valid
    task = SAL if fixed_w is None else EDGE
    assert fn(logits, target, task).item() == pytest.approx(expected.item(), rel=1e-6)


def test_balanced_bce_matches_astmt_formula_without_ignore():
    # The ASTMT/MTLoRA BalancedCrossEntropyLoss written out in numpy (no void pixels): there the sum is
    # divided by all pixels and w = #neg / #pixels — identical to ours when nothing is ignored.
    logits, target = _random_binary(2, ignore_frac=0.0)
    x = logits.double().numpy()
    y = (target.numpy() >= 0.5).astype(np.float64)
    x_ge0 = (x >= 0).astype(np.float64)
    loss_val = x * (y - x_ge0) - np.log(1 + np.exp(x - 2 * x * x_ge0))
    w = np.sum(1 - y) / y.size
    expected = (w * np.sum(-y * loss_val) + (1 - w) * np.sum(-(1 - y) * loss_val)) / y.size
    assert balanced_bce(logits, target, SAL).item() == pytest.approx(expected, rel=1e-6)


def test_normals_and_depth_match_torch_l1():
    g = torch.Generator().manual_seed(3)
    pred = torch.randn(2, 3, 5, 4, generator=g)
    target = F.normalize(torch.randn(2, 3, 5, 4, generator=g), dim=1)
    invalid = torch.rand(2, 1, 5, 4, generator=g) < 0.3
    target = torch.where(invalid, torch.full_like(target, IGN), target)
    mask = target != IGN
    expected = F.l1_loss(F.normalize(pred, dim=1)[mask], target[mask])  # mean over valid elements
    assert normals_l1(pred, target, NORMALS).item() == pytest.approx(expected.item(), rel=1e-6)

    d_pred = torch.rand(2, 1, 5, 4, generator=g) * 10
    d_target = torch.rand(2, 1, 5, 4, generator=g) * 10 + 0.1
    d_target[invalid] = IGN
    m = d_target != IGN
    assert depth_l1(d_pred, d_target, DEPTH).item() == pytest.approx(F.l1_loss(d_pred[m], d_target[m]).item(), rel=1e-6)


# ------------------------------------------------------------------------------ ignore, extremes, gradients
ALL_CASES = [
    (SEG, lambda: torch.randn(2, 2, 3, 4), lambda: torch.randint(0, 2, (2, 3, 4))),
    (SAL, lambda: torch.randn(2, 1, 3, 4), lambda: (torch.rand(2, 1, 3, 4) < 0.5).float()),
    (EDGE, lambda: torch.randn(2, 1, 3, 4), lambda: (torch.rand(2, 1, 3, 4) < 0.5).float()),
    (NORMALS, lambda: torch.randn(2, 3, 3, 4), lambda: F.normalize(torch.randn(2, 3, 3, 4), dim=1)),
    (DEPTH, lambda: torch.rand(2, 1, 3, 4), lambda: torch.rand(2, 1, 3, 4) + 0.5),
]


@pytest.mark.parametrize("task,make_pred,make_target", ALL_CASES, ids=[c[0].name for c in ALL_CASES])
def test_all_ignore_batch_gives_zero_loss_and_zero_grad(task, make_pred, make_target):
    pred = make_pred().requires_grad_(True)
    target = torch.full_like(make_target(), IGN)
    loss = LOSSES[task.loss](pred, target, task)
    assert loss.item() == 0.0
    loss.backward()
    assert pred.grad is not None and torch.all(pred.grad == 0)


@pytest.mark.parametrize("task,make_pred,make_target", ALL_CASES, ids=[c[0].name for c in ALL_CASES])
def test_extreme_predictions_give_finite_loss_and_grad(task, make_pred, make_target):
    torch.manual_seed(4)
    pred = (make_pred() * 1e4).requires_grad_(True)
    target = make_target()
    target.view(-1)[::5] = IGN
    loss = LOSSES[task.loss](pred, target, task)
    assert torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(pred.grad).all()
    assert pred.grad.abs().sum() > 0


def test_bce_ignored_pixels_get_no_gradient():
    logits, target = _random_binary(5)
    logits.requires_grad_(True)
    balanced_bce(logits, target, SAL).backward()
    assert torch.all(logits.grad[target == IGN] == 0)
    assert torch.all(logits.grad[target != IGN] != 0)


def test_zero_normal_prediction_is_finite():
    pred = torch.zeros(1, 3, 2, 2, requires_grad=True)
    target = F.normalize(torch.ones(1, 3, 2, 2), dim=1)
    loss = normals_l1(pred, target, NORMALS)
    loss.backward()
    # p̂ = 0 → |0 - 1/√3| per element
    assert loss.item() == pytest.approx(1 / math.sqrt(3), rel=1e-6)
    assert torch.isfinite(pred.grad).all()


# ------------------------------------------------------------------------------------------ compute_losses
def test_compute_losses_weighted_sum():
    seg = make_task("semseg", "segmentation", 2, "cross_entropy", weight=1.0)
    sal = make_task("sal", "saliency", 1, "balanced_bce", weight=5.0)
    normals = make_task("normals", "normals", 3, "normals_l1", weight=10.0)
    # hand-made inputs from the tests above
    outputs = {
        "semseg": torch.tensor([[0.0, 0.0, 50.0], [math.log(3), 0.0, -50.0]]).reshape(1, 2, 1, 3),
        "sal": torch.tensor([math.log(3), 0.0, math.log(3)]).reshape(1, 1, 1, 3),
        "normals": torch.tensor([[0.0, 3.0, 7.0], [0.0, 4.0, -1.0], [2.0, 0.0, 5.0]]).reshape(1, 3, 1, 3),
    }
    batch = {
        "semseg": torch.tensor([[[1, 0, IGN]]]),
        "sal": torch.tensor([1.0, 0.0, IGN]).reshape(1, 1, 1, 3),
        "normals": torch.tensor([[0.0, 1.0, IGN], [0.0, 0.0, IGN], [1.0, 0.0, IGN]]).reshape(1, 3, 1, 3),
        "image": torch.zeros(1, 3, 1, 3),
    }
    # sal: valid 2, one positive (ℓ = ln 4/3), one negative x = 0 (ℓ = ln 2), w = 1/2
    #      → [½ ln(4/3) + ½ ln 2] / 2
    l_seg = math.log(8 / 3) / 2
    l_sal = (0.5 * math.log(4 / 3) + 0.5 * math.log(2)) / 2
    l_normals = 0.2
    total, per_task = compute_losses(outputs, batch, [seg, sal, normals])
    assert set(per_task) == {"semseg", "sal", "normals"}
    assert per_task["semseg"].item() == pytest.approx(l_seg, rel=1e-6)
    assert per_task["sal"].item() == pytest.approx(l_sal, rel=1e-6)
    assert per_task["normals"].item() == pytest.approx(l_normals, rel=1e-6)
    assert total.item() == pytest.approx(1.0 * l_seg + 5.0 * l_sal + 10.0 * l_normals, rel=1e-6)


def test_compute_losses_errors():
    bad = make_task("semseg", "segmentation", 2, "focal")
    out = {"semseg": torch.zeros(1, 2, 2, 2)}
    batch = {"semseg": torch.zeros(1, 2, 2, dtype=torch.long)}
    with pytest.raises(ValueError, match="focal"):
        compute_losses(out, batch, [bad])
    with pytest.raises(ValueError, match="semseg"):
        compute_losses({}, batch, [SEG])
    with pytest.raises(ValueError, match="semseg"):
        compute_losses(out, {}, [SEG])


def test_loss_registry_names():
    assert set(LOSSES) == {"cross_entropy", "balanced_bce", "edge_bce", "normals_l1", "depth_l1"}
