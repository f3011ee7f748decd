"""Per-sample transforms: flip, resize, ignore marking, normalisation and the composed pipelines."""

from __future__ import annotations

import pytest
import torch

from mtpeft_bench.tasks.specs import depth_task, edge_task, normals_task, saliency_task, segmentation_task
from mtpeft_bench.tasks.transforms import (
    AddIgnoreRegions,
    Compose,
    FixedResize,
    Normalize,
    RandomHorizontalFlip,
    build_transforms,
    denormalize,
    resize_target,
)


TASKS = {
    "semseg": segmentation_task("semseg", 5, 1.0, ""),
    "human_parts": segmentation_task("human_parts", 7, 2.0, ""),
    "depth": depth_task(),
    "normals": normals_task(),
    "sal": saliency_task(),
    "edge": edge_task("odsF", 0.011),
}
H, W = 10, 14


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=0, keepdim=True)


def make_sample(seed: int = 0) -> dict:
    """A sample with asymmetric content, some missing depth and some zero (invalid) normals."""
    g = torch.Generator().manual_seed(seed)
    normals = _unit(torch.randn(3, H, W, generator=g) + torch.tensor([0.0, 0.0, 2.0]).view(3, 1, 1))
    normals[:, :3, :4] = 0.0
    depth = torch.rand(1, H, W, generator=g) * 5 + 0.5
    depth[:, -2:, -5:] = 0.0
    semseg = torch.randint(0, 5, (H, W), generator=g)
    semseg[0, :] = 255
    return {
        "image": torch.rand(3, H, W, generator=g),
        "semseg": semseg,
        "human_parts": torch.zeros(H, W, dtype=torch.int64),
        "depth": depth,
        "normals": normals,
        "sal": (torch.rand(1, H, W, generator=g) > 0.5).float(),
        "edge": (torch.rand(1, H, W, generator=g) > 0.8).float(),
        "meta": {"id": "x", "size": (H, W)},
    }


def test_flip_mirrors_everything_and_negates_normals_x():
    s = make_sample()
    out = RandomHorizontalFlip(p=1.0)(s, TASKS)
    for key in ("image", "semseg", "depth", "sal", "edge", "human_parts"):
        assert torch.equal(out[key], s[key].flip(-1)), key
    flipped = s["normals"].flip(-1)
    assert torch.equal(out["normals"][0], -flipped[0])
    assert torch.equal(out["normals"][1:], flipped[1:])
    assert out["meta"] is s["meta"]
    assert torch.equal(s["normals"], make_sample()["normals"])  # the input is not modified
    # flipping twice is the identity
    back = RandomHorizontalFlip(p=1.0)(out, TASKS)
    assert all(torch.equal(back[k], s[k]) for k in TASKS)


def test_flip_keeps_ignored_normals_and_p0_is_identity():
    s = make_sample()
    s["normals"][:, 5:, :] = 255.0
    out = RandomHorizontalFlip(p=1.0)(s, TASKS)
    assert (out["normals"][:, 5:, :] == 255).all()
    assert RandomHorizontalFlip(p=0.0)(s, TASKS) is s


def test_flip_is_random_with_the_given_probability():
    g = torch.Generator().manual_seed(1)
    flip = RandomHorizontalFlip(p=0.5, generator=g)
    s = make_sample()
    flipped = sum(not torch.equal(flip(s, TASKS)["image"], s["image"]) for _ in range(200))
    assert 70 < flipped < 130


def test_resize_keeps_label_value_sets_and_dtypes():
    s = make_sample()
    out = FixedResize((23, 9))(s, TASKS)
    assert out["image"].shape == (3, 23, 9) and out["semseg"].shape == (23, 9)
    for key in TASKS:
        assert out[key].dtype == s[key].dtype and out[key].shape[-2:] == (23, 9)
    assert set(out["semseg"].unique().tolist()) <= set(s["semseg"].unique().tolist())
    for key in ("sal", "edge"):
        assert set(out[key].unique().tolist()) <= {0.0, 1.0}
    assert set(out["depth"].unique().tolist()) <= set(s["depth"].unique().tolist())


def test_resized_normals_are_unit_or_exactly_zero_then_ignored():
    s = make_sample()
    for size in ((25, 31), (6, 7)):
        n = FixedResize(size)(s, TASKS)["normals"]
        norm = n.norm(dim=0)
        zero = norm == 0
        assert zero.any() and (~zero).any()
        torch.testing.assert_close(norm[~zero], torch.ones(int((~zero).sum())))
        marked = AddIgnoreRegions()({"normals": n}, TASKS)["normals"]
        assert (marked[:, zero] == 255).all() and torch.equal(marked[:, ~zero], n[:, ~zero])


def test_resize_normals_treats_ignored_vectors_as_zero():
    n = _unit(torch.ones(3, 4, 4))
    n[:, :, :2] = 255.0
    # linear: output column x samples source x/2 - 0.25; columns 0..2 only see the invalid columns 0, 1
    out = resize_target(n, (4, 8), "normals", normals="linear")
    assert not (out == 255).any()
    assert (out[:, :, :3].norm(dim=0) == 0).all()
    torch.testing.assert_close(out[:, :, 3:].norm(dim=0), torch.ones(4, 5))
    # cubic (the reference): four taps, so only column 0 (taps -2..1, clamped to 0..1) stays invalid
    out = resize_target(n, (4, 8), "normals")
    assert not (out == 255).any()
    assert (out[:, :, 0].norm(dim=0) == 0).all()
    torch.testing.assert_close(out[:, :, 1:].norm(dim=0), torch.ones(4, 7), rtol=0, atol=1e-6)


def test_resize_nearest_follows_opencv_by_default():
    # OpenCV INTER_NEAREST takes source floor(x * 4 / 3) for 3 output columns: 0, 1, 2;
    # nearest-to-centre takes floor((x + 0.5) * 4 / 3): 0, 2, 3
    t = torch.tensor([[10, 11, 12, 13]])
    assert resize_target(t, (1, 3), "nearest").tolist() == [[10, 11, 12]]
    assert resize_target(t, (1, 3), "nearest", nearest="centre").tolist() == [[10, 12, 13]]


def test_resize_image_is_bicubic_and_clamped():
    s = make_sample()
    s["image"] = (torch.arange(W).float().remainder(2)).expand(3, H, W).clone()  # 0/1 stripes overshoot
    out = FixedResize((H * 3, W * 3))(s, TASKS)["image"]
    assert out.min() >= 0 and out.max() <= 1
    assert ((out > 0.05) & (out < 0.95)).any()  # interpolated, not nearest


def test_same_size_resize_is_exact():
    s = make_sample()
    out = FixedResize((H, W))(s, TASKS)
    assert all(torch.equal(out[k], s[k]) for k in ("image", *TASKS))


def test_resize_target_linear_interpolates():
    t = torch.tensor([[[0.0, 1.0]]])
    out = resize_target(t, (1, 4), "linear")
    assert out.shape == (1, 1, 4) and 0 < out[0, 0, 1] < 1
    with pytest.raises(ValueError, match="interpolation"):
        resize_target(t, (1, 4), "cubic")


def test_add_ignore_regions():
    s = make_sample()
    out = AddIgnoreRegions()(s, TASKS)
    assert (out["depth"][:, -2:, -5:] == 255).all() and (out["depth"] != 0).all()
    assert (out["normals"][:, :3, :4] == 255).all()
    assert (out["human_parts"] == 255).all()  # no person annotated: the whole map is ignored
    assert torch.equal(out["semseg"], s["semseg"]) and torch.equal(out["sal"], s["sal"])
    s["human_parts"][4, 4] = 2
    assert (AddIgnoreRegions()(s, TASKS)["human_parts"] != 255).all()


def test_normalize_round_trips():
    s = make_sample()
    out = Normalize()(s, TASKS)
    assert not torch.allclose(out["image"], s["image"])
    torch.testing.assert_close(denormalize(out["image"]), s["image"])


def test_pipelines_have_the_protocol_order():
    train = build_transforms((8, 8), train=True)
    assert [type(t) for t in train.transforms] == [RandomHorizontalFlip, FixedResize, AddIgnoreRegions, Normalize]
    evaluation = build_transforms((8, 8), train=False)
    assert [type(t) for t in evaluation.transforms] == [FixedResize, AddIgnoreRegions, Normalize]

    seen = []

    def spy(sample, tasks):
        seen.append(sample["image"].shape[-2:])
        return sample

    custom = build_transforms((8, 8), train=True, augmentations=[spy])
    out = custom(make_sample(), TASKS)
    assert seen == [(H, W)]  # augmentations run before the resize
    assert out["image"].shape == (3, 8, 8) and (out["depth"] == 255).any()
    assert isinstance(custom, Compose) and "FixedResize" in repr(custom)


# -- ScaleNRotate and the protocol pipelines (docs/protocol.md 2) ---------------------------------------

def test_rotate_normals_hand_case_and_unit_length():
    from mtpeft_bench.tasks.transforms import rotate_normals

    n = torch.tensor([1.0, 0.0, 0.0]).view(3, 1, 1)
    # the reference: a = atan2(n_x, n_y) = 90°, x' = sin(a + θ), y' = cos(a + θ); θ = 90° gives (0, -1, 0)
    torch.testing.assert_close(rotate_normals(n, 90.0)[:, 0, 0], torch.tensor([0.0, -1.0, 0.0]), atol=1e-7, rtol=0)
    s = make_sample()
    out = rotate_normals(s["normals"], 17.0)
    valid = s["normals"].norm(dim=0) > 0
    torch.testing.assert_close(out.norm(dim=0)[valid], torch.ones(int(valid.sum())))
    assert torch.equal(out[2], s["normals"][2])


def test_scale_n_rotate_moves_pixels_as_opencv_and_divides_depth():
    from mtpeft_bench.tasks.transforms import ScaleNRotate

    h = w = 6
    label = torch.zeros(h, w, dtype=torch.int64)
    label[2, 1] = 3  # (x=1, y=2)
    depth = torch.full((1, h, w), 2.0)
    sample = {"image": torch.rand(3, h, w), "semseg": label, "depth": depth}
    tasks = {"semseg": TASKS["semseg"], "depth": TASKS["depth"]}
    # getRotationMatrix2D((3, 3), 90, 1) maps (x, y) to (y, 6 - x): the marked pixel lands at (x=2, y=5)
    out = ScaleNRotate([0.0], [1.0]).apply(sample, tasks, 90.0, 1.0)
    assert out["semseg"][5, 2] == 3 and int((out["semseg"] == 3).sum()) == 1
    assert (out["semseg"][0] == 0).all()  # the row rotated in from outside is filled with 0 (background)
    zoomed = ScaleNRotate([0.0], [1.5]).apply(sample, tasks, 0.0, 1.5)
    assert zoomed["depth"][0, 3, 3] == pytest.approx(2.0 / 1.5)  # the centre stays, depth / zoom
    out = ScaleNRotate([0.0], [0.5], border="ignore").apply(sample, tasks, 0.0, 0.5)
    assert out["semseg"][0, 0] == 255 and out["depth"][0, 0, 0] == 0  # zoom-out border: ignore / missing


def test_scale_n_rotate_draws_from_the_protocol_ranges():
    from mtpeft_bench.tasks.transforms import ScaleNRotate

    g = torch.Generator().manual_seed(0)
    cont = ScaleNRotate((-20.0, 20.0), (0.75, 1.25), generator=g)
    draws = [cont._draw() for _ in range(200)]
    assert all(-20 <= a <= 20 and 0.75 <= s <= 1.25 for a, s in draws)
    assert min(a for a, _ in draws) < -15 and max(a for a, _ in draws) > 15
    disc = ScaleNRotate([0.0], [1.0, 1.2, 1.5], generator=g)
    assert {disc._draw() for _ in range(100)} == {(0.0, 1.0), (0.0, 1.2), (0.0, 1.5)}
    with pytest.raises(ValueError, match="both be"):
        ScaleNRotate((-20.0, 20.0), [1.0])


def test_pascal_training_pipeline_keeps_normals_unit_and_labels_in_range():
    from mtpeft_bench.tasks.protocols import ProtocolConfig, protocol_transforms

    pipeline = protocol_transforms("pascal", ProtocolConfig(), (16, 20), train=True)
    assert [type(t).__name__ for t in pipeline.transforms] == [
        "RandomHorizontalFlip", "ScaleNRotate", "FixedResize", "AddIgnoreRegions", "Normalize"]
    torch.manual_seed(3)
    for _ in range(5):
        out = pipeline(make_sample(), TASKS)
        n = out["normals"]
        valid = ~(n == 255).all(dim=0)
        torch.testing.assert_close(n[:, valid].norm(dim=0), torch.ones(int(valid.sum())), rtol=0, atol=1e-5)
        assert set(out["semseg"].unique().tolist()) <= set(range(5)) | {255}
    evaluation = protocol_transforms("pascal", ProtocolConfig(protocol="mtinet"), (16, 20), train=False)
    out = evaluation(make_sample(), TASKS)
    assert out["image"].shape == (3, 16, 20) and out["semseg"].shape == (H, W)  # targets stay at the original size
