"""The NYUD_MT layout reader and the nyud / pascal_mt plugins, on a hand-made miniature NYUD_MT folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mtpeft_bench.errors import UserError
from mtpeft_bench.registry import get_dataset
from mtpeft_bench.tasks.nyud_layout import NYUD_SOURCES, LayoutDataset, NyudLayout, check_sample, decode_labels


H, W = 12, 16
IDS = {"train": ["0001", "0002"], "val": ["0003"]}


def _labels(k: int) -> np.ndarray:
    """uint8[H, W] NYUD-stored labels: a 0 (unlabelled) band at the top, then classes 1, k, 40."""
    seg = np.zeros((H, W), np.uint8)
    seg[3:, :6], seg[3:, 6:11], seg[3:, 11:] = 1, k, 40
    return seg


def _depth() -> np.ndarray:
    depth = np.linspace(0.5, 9.0, H * W, dtype=np.float32).reshape(H, W)
    depth[:, :4] = 0.0  # missing measurements on the left
    return depth


def _normals() -> np.ndarray:
    n = np.zeros((H, W, 3), np.float32)
    n[..., 2] = 1.0
    n[H // 2:, :, :] = (0.6, 0.0, 0.8)
    n[:2, -3:] = 0.0  # invalid corner
    return n


@pytest.fixture()
def nyud_root(tmp_path) -> Path:
    root = tmp_path / "NYUD_MT"
    for folder in ("images", "gt_sets", "segmentation", "depth", "normals", "edge"):
        (root / folder).mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, ids in IDS.items():
        (root / "gt_sets" / f"{split}.txt").write_text("\n".join(ids) + "\n\n")  # trailing blank line
        for k, sid in enumerate(ids, start=5):
            Image.fromarray(rng.integers(0, 256, (H, W, 3), dtype=np.uint8)).save(root / "images" / f"{sid}.jpg")
            Image.fromarray(_labels(k)).save(root / "segmentation" / f"{sid}.png")
            np.save(root / "depth" / f"{sid}.npy", _depth())
            np.save(root / "normals" / f"{sid}.npy", _normals())
            edge = np.zeros((H, W), np.float32)
            edge[:, 7] = 1.0
            np.save(root / "edge" / f"{sid}.npy", edge)
    return root


def test_decode_labels_maps_zero_to_ignore_and_shifts_classes():
    stored = np.array([[0, 1, 2], [40, 0, 17]], np.uint8)
    np.testing.assert_array_equal(decode_labels(stored), [[255, 0, 1], [39, 255, 16]])
    assert decode_labels(stored).dtype == np.int64


def test_layout_reader_returns_raw_decoded_targets(nyud_root):
    nyud = get_dataset("nyud")
    layout = NyudLayout(nyud_root)
    assert layout.ids("train") == ["0001", "0002"] and layout.ids("val") == ["0003"]
    assert layout.read_image("0001").shape == (H, W, 3)
    seg = layout.read_target(nyud.tasks["semseg"], "0001")
    assert seg.dtype == np.int64 and seg.shape == (H, W)
    assert set(np.unique(seg)) == {255, 0, 4, 39}
    depth = layout.read_target(nyud.tasks["depth"], "0001")
    assert depth.shape == (1, H, W) and depth.dtype == np.float32
    np.testing.assert_array_equal(depth[0], _depth())  # metres kept, zeros kept for AddIgnoreRegions
    normals = layout.read_target(nyud.tasks["normals"], "0001")
    assert normals.shape == (3, H, W)
    np.testing.assert_array_equal(normals, _normals().transpose(2, 0, 1))
    edge = layout.read_target(nyud.tasks["edge"], "0001")
    assert edge.shape == (1, H, W) and edge.sum() == H


def test_dataset_items_mark_ignore_regions(nyud_root):
    plugin = get_dataset("nyud")()
    specs = plugin.task_specs()
    ds = plugin.build("val", specs, (H, W), plugin.resolve_root(nyud_root), train=False)
    assert len(ds) == 1
    item = ds[0]
    assert item["meta"] == {"id": "0003", "size": (H, W)}
    seg = item["semseg"]
    assert seg.dtype == torch.int64 and seg.shape == (H, W)
    assert (seg[:3] == 255).all() and (seg[3:, :6] == 0).all() and (seg[3:, 6:11] == 4).all()
    assert (seg[3:, 11:] == 39).all()
    depth = item["depth"]
    assert depth.shape == (1, H, W) and (depth[0, :, :4] == 255).all()
    np.testing.assert_allclose(depth[0, :, 4:].numpy(), _depth()[:, 4:])
    normals = item["normals"]
    assert normals.shape == (3, H, W) and (normals[:, :2, -3:] == 255).all()
    valid = ~(normals == 255).all(dim=0)
    assert valid.sum() == H * W - 6
    torch.testing.assert_close(normals[:, valid].norm(dim=0), torch.ones(int(valid.sum())))
    assert item["edge"].shape == (1, H, W) and set(item["edge"].unique().tolist()) == {0.0, 1.0}
    image = item["image"]
    assert image.dtype == torch.float32 and image.shape == (3, H, W)


def test_items_resized_to_the_protocol_size(nyud_root):
    plugin = get_dataset("nyud")()
    ds = plugin.build("train", plugin.task_specs(), (30, 20), nyud_root, train=True)
    item = ds[1]
    assert item["image"].shape == (3, 30, 20) and item["meta"]["size"] == (H, W)
    assert set(item["semseg"].unique().tolist()) <= {255, 0, 5, 39}  # nearest keeps the value set
    n = item["normals"]
    ignored = (n == 255).all(dim=0)
    # the 2x3 invalid corner is too small to survive cubic interpolation's 4x4 taps; no vector is half-ignored
    assert not ((n == 255).any(dim=0) & ~ignored).any()
    torch.testing.assert_close(n[:, ~ignored].norm(dim=0), torch.ones(int((~ignored).sum())))
    d = item["depth"][0]
    assert ((d == 255) | ((d >= 0.5) & (d <= 9.0))).all() and (d == 255).any()


def test_millimetre_depth_is_detected(nyud_root):
    np.save(nyud_root / "depth" / "0003.npy", _depth() * 1000)
    spec = get_dataset("nyud").tasks["depth"]
    np.testing.assert_allclose(NyudLayout(nyud_root).read_target(spec, "0003")[0], _depth(), rtol=1e-6)
    assert NyudLayout(nyud_root, depth_unit="m").read_target(spec, "0003").max() > 100


def test_mismatched_target_size_is_reported(nyud_root):
    np.save(nyud_root / "depth" / "0003.npy", np.ones((H + 1, W), np.float32))
    plugin = get_dataset("nyud")()
    ds = plugin.build("val", plugin.task_specs(["depth"]), (H, W), nyud_root, train=False)
    with pytest.raises(UserError, match="0003.npy: target is 13x16, its image is 12x16"):
        ds[0]


def test_resolve_root_finds_the_folder_or_says_how_to_fix(nyud_root, tmp_path, monkeypatch):
    plugin = get_dataset("nyud")()
    assert plugin.resolve_root(nyud_root) == nyud_root
    assert plugin.resolve_root(nyud_root.parent) == nyud_root  # a parent holding NYUD_MT
    with pytest.raises(UserError, match="--data-root or MTBENCH_DATA"):
        plugin.resolve_root(None)
    monkeypatch.setenv("MTBENCH_DATA", str(nyud_root.parent))
    assert plugin.resolve_root(None) == nyud_root
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match="holds no NYUD_MT dataset") as info:
        plugin.resolve_root(empty)
    assert "\n" not in str(info.value)


def test_nyud_declares_the_protocol_tasks():
    cls = get_dataset("nyud")
    assert cls.default_tasks == ("semseg", "depth", "normals", "edge")
    assert cls.image_size == (448, 448) and cls.requires_root
    assert cls.tasks["semseg"].num_outputs == 40
    assert cls.tasks["edge"].primary.name == "odsF" and cls.tasks["edge"].options == {"max_dist": 0.011}
    assert cls().task_specs(["edge"])[0].options == {"max_dist": 0.011, "thresholds": 99}
    assert cls.tasks["depth"].primary.name == "rmse" and not cls.tasks["depth"].primary.higher_is_better
    with pytest.raises(ValueError, match="depth_unit"):
        cls.Config(depth_unit="cm")


def test_pascal_mt_declares_the_protocol_tasks():
    cls = get_dataset("pascal_mt")
    assert cls.default_tasks == ("semseg", "human_parts", "sal", "normals")
    assert cls.reference == "pascal_mt" and cls.image_size == (448, 448)
    assert {n: s.num_outputs for n, s in cls.tasks.items()} == {
        "semseg": 21, "human_parts": 7, "sal": 1, "normals": 3, "edge": 1}
    assert cls.tasks["edge"].options["max_dist"] == 0.0075
    assert [m.name for m in cls.tasks["sal"].metrics] == ["mIoU", "maxF"]
    assert [m.name for m in cls.tasks["edge"].metrics] == ["odsF", "F_tol"]
    assert "APPROXIMATION" in cls.tasks["edge"].metric("F_tol").description


def test_check_sample_rejects_wrong_formats(nyud_root):
    specs = get_dataset("nyud")().task_specs()
    ds = LayoutDataset(NyudLayout(nyud_root, NYUD_SOURCES), "val", specs, (H, W), train=False)
    good = ds[0]
    check_sample(good, specs, (H, W))
    bad_dtype = {**good, "semseg": good["semseg"].int()}
    with pytest.raises(ValueError, match="semseg must be int64"):
        check_sample(bad_dtype, specs, (H, W))
    bad_class = {**good, "semseg": torch.full((H, W), 40)}
    with pytest.raises(ValueError, match="class ids"):
        check_sample(bad_class, specs, (H, W))
    bad_edge = {**good, "edge": good["edge"] * 0.5}
    with pytest.raises(ValueError, match="binary"):
        check_sample(bad_edge, specs, (H, W))
    with pytest.raises(ValueError, match="image must be"):
        check_sample(good, specs, (H + 1, W))
