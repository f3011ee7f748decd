"""The procedural ``synth`` dataset: analytic ground truth, determinism, the files on disk, the items."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mtpeft_bench.errors import UserError
from mtpeft_bench.registry import get_dataset
from mtpeft_bench.tasks.synth import cache as synth_cache
from mtpeft_bench.tasks.synth.cache import MANIFEST, ensure_dataset, generate_dataset, generate_sample, write_sample
from mtpeft_bench.tasks.synth.config import GENERATOR_VERSION, SynthConfig
from mtpeft_bench.tasks.synth.geometry import camera_rotation
from mtpeft_bench.tasks.synth.render import render_scene
from mtpeft_bench.tasks.synth.scene import (
    CLASS_NAMES,
    CLASS_OF_KIND,
    FLOOR,
    HFOV_DEG,
    PART_NAMES,
    WALL,
    Camera,
    Light,
    Primitive,
    Room,
    Scene,
)
from mtpeft_bench.tasks.base import config_from_mapping


SMALL = dict(num_train=8, num_val=4, height=48, width=64)


@pytest.fixture(scope="module")
def small_root(tmp_path_factory) -> Path:
    """A small generated dataset shared by the read-only tests of this module."""
    root = tmp_path_factory.mktemp("synth") / "data"
    return ensure_dataset(root, SynthConfig(**SMALL), progress=False)


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# -- analytic scenes ---------------------------------------------------------------------------

ROOM = Room(width=4.0, depth=6.0, height=3.0)
H, W = 31, 41  # odd, so the centre pixel's ray is the optical axis


def _focal() -> float:
    return (W / 2) / math.tan(math.radians(HFOV_DEG) / 2)


def _render(camera: Camera, *prims: Primitive) -> dict[str, np.ndarray]:
    return render_scene(Scene(ROOM, camera, Light((0.0, 2.9, 0.0)), tuple(prims)), H, W)


def test_empty_room_level_camera_matches_analytic_depth_and_normals():
    out = _render(Camera((0.0, 1.5, 2.0)))
    c = (H // 2, W // 2)
    # the optical axis meets the far wall (z = -3) 5 m ahead, head-on
    assert out["depth"][c] == pytest.approx(5.0, abs=1e-5)
    np.testing.assert_allclose(out["normals"][c], (0, 0, 1), atol=1e-6)
    assert out["semseg"][c] == WALL and out["parts"][c] == 0 and out["sal"][c] == 0
    # the bottom-centre ray drops 15 px / f per metre of depth and meets the floor 1.5 m below
    bottom = (H - 1, W // 2)
    assert out["depth"][bottom] == pytest.approx(1.5 * _focal() / 15.0, rel=1e-5)
    np.testing.assert_allclose(out["normals"][bottom], (0, 1, 0), atol=1e-6)
    assert out["semseg"][bottom] == FLOOR
    assert not out["sal"].any() and not out["parts"].any()


def test_pitched_and_turned_cameras_see_floor_and_walls_where_expected():
    pitch = math.radians(20)
    out = _render(Camera((0.0, 1.5, 2.0), pitch=pitch))
    c = (H // 2, W // 2)
    assert out["semseg"][c] == FLOOR
    assert out["depth"][c] == pytest.approx(1.5 / math.sin(pitch), rel=1e-5)
    # world up seen from a camera pitched down by a: (0, cos a, sin a)
    np.testing.assert_allclose(out["normals"][c], (0, math.cos(pitch), math.sin(pitch)), atol=1e-6)

    turned = _render(Camera((0.0, 1.5, 2.0), yaw=math.radians(90)))  # looks along -x at the x = -2 wall
    assert turned["depth"][c] == pytest.approx(2.0, rel=1e-5)
    np.testing.assert_allclose(turned["normals"][c], (0, 0, 1), atol=1e-6)


def _sphere_hit(o: np.ndarray, u: np.ndarray, c: np.ndarray, r: float) -> float | None:
    """Distance along the unit ray u to the sphere, or None (a textbook solution, independent of synth)."""
    oc = o - c
    b = float(oc @ u)
    disc = b * b - (float(oc @ oc) - r * r)
    return None if disc < 0 else -b - math.sqrt(disc)


def test_single_sphere_depth_and_normals_match_analytic_values():
    o = np.array([0.0, 1.5, 2.0])
    c, r = np.array([0.3, 1.2, -1.0]), 0.6
    out = _render(Camera(tuple(o)), Primitive("sphere", tuple(c), (r,)))
    f = _focal()
    checked = 0
    for i in range(H):
        for j in range(W):
            d_cam = np.array([(j + 0.5 - W / 2) / f, -(i + 0.5 - H / 2) / f, -1.0])
            u = d_cam / np.linalg.norm(d_cam)  # camera frame == world frame for yaw = pitch = 0
            s = _sphere_hit(o, u, c, r)
            if s is None or s <= 0 or out["semseg"][i, j] != 3:
                continue
            p = o + s * u
            assert out["depth"][i, j] == pytest.approx(o[2] - p[2], rel=1e-5)
            np.testing.assert_allclose(out["normals"][i, j], (p - c) / r, atol=1e-5)
            checked += 1
    hit_mask = out["semseg"] == 3
    assert checked == hit_mask.sum() > 30
    assert (out["sal"] == hit_mask).all() and (out["parts"][hit_mask] == 1).all()


def test_sphere_on_a_pitched_optical_axis():
    cam = Camera((0.5, 1.6, 2.0), yaw=math.radians(-15), pitch=math.radians(25))
    forward = -camera_rotation(cam.yaw, cam.pitch)[:, 2]
    centre = np.array(cam.position) + 3.0 * forward
    out = _render(cam, Primitive("sphere", tuple(centre), (0.5,)))
    c = (H // 2, W // 2)
    assert out["depth"][c] == pytest.approx(2.5, rel=1e-5)
    np.testing.assert_allclose(out["normals"][c], (0, 0, 1), atol=1e-6)


def test_box_cylinder_and_cone_faces_have_the_right_parts_normals_and_depths():
    c = (H // 2, W // 2)
    down = Camera((0.0, 2.8, 0.0), pitch=math.radians(90))  # looks straight down
    box = _render(down, Primitive("box", (0.0, 0.4, 0.0), (0.5, 0.4, 0.3), yaw=0.7))
    assert box["depth"][c] == pytest.approx(2.0, rel=1e-5)
    np.testing.assert_allclose(box["normals"][c], (0, 0, 1), atol=1e-6)
    assert PART_NAMES[box["parts"][c]] == "box_top" and CLASS_NAMES[box["semseg"][c]] == "box"

    cap = _render(down, Primitive("cylinder", (0.0, 0.0, 0.0), (0.4, 1.0)))
    assert cap["depth"][c] == pytest.approx(1.8, rel=1e-5)
    assert PART_NAMES[cap["parts"][c]] == "cylinder_cap"

    front = Camera((0.0, 0.5, 2.0))  # level camera at half the primitives' height
    side = _render(front, Primitive("cylinder", (0.0, 0.0, -1.0), (0.4, 1.0)))
    assert side["depth"][c] == pytest.approx(2.6, rel=1e-5)
    np.testing.assert_allclose(side["normals"][c], (0, 0, 1), atol=1e-6)
    assert PART_NAMES[side["parts"][c]] == "cylinder_side"

    r, h = 0.4, 1.0
    cone = _render(front, Primitive("cone", (0.0, 0.0, -1.0), (r, h)))
    # at half height the cone's radius is r / 2; its normal leans up by atan(r / h)
    assert cone["depth"][c] == pytest.approx(3.0 - r / 2, rel=1e-5)
    expected = np.array([0.0, r / h, 1.0]) / math.hypot(r / h, 1.0)
    np.testing.assert_allclose(cone["normals"][c], expected, atol=1e-6)
    assert PART_NAMES[cone["parts"][c]] == "cone" and cone["sal"][c] == 1

    box_front = _render(front, Primitive("box", (0.0, 0.5, -1.0), (0.3, 0.5, 0.25)))
    assert box_front["depth"][c] == pytest.approx(2.75, rel=1e-5)
    assert PART_NAMES[box_front["parts"][c]] == "box_side"


def test_shadows_darken_the_floor_under_an_object():
    light = Light((0.0, 2.9, -1.0), ambient=0.2)
    cam = Camera((0.0, 1.5, 2.0), pitch=math.radians(35))
    lit = render_scene(Scene(ROOM, cam, light, ()), H, W)
    # a floating sphere right below the light throws its shadow straight down
    shadowed = render_scene(Scene(ROOM, cam, light, (Primitive("sphere", (0.0, 1.6, -1.0), (0.3,)),)), H, W)
    floor = (shadowed["semseg"] == FLOOR) & (lit["semseg"] == FLOOR)
    darker = floor & (shadowed["image"].sum(-1) < lit["image"].sum(-1) - 0.05)
    assert darker.sum() > 5


# -- random scenes -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def samples() -> list[dict[str, np.ndarray]]:
    cfg = SynthConfig(**SMALL)
    return [generate_sample(cfg, "train", i) for i in range(6)]


def _view_dirs(h: int, w: int) -> np.ndarray:
    f = (w / 2) / math.tan(math.radians(HFOV_DEG) / 2)
    x = (np.arange(w) + 0.5 - w / 2) / f
    y = -(np.arange(h) + 0.5 - h / 2) / f
    xx, yy = np.meshgrid(x, y)
    return np.stack([xx, yy, -np.ones_like(xx)], -1)


def test_generated_ground_truth_is_geometrically_sane(samples):
    for s in samples:
        h, w = s["depth"].shape
        np.testing.assert_allclose(np.linalg.norm(s["normals"], axis=-1), 1.0, atol=1e-5)
        # every visible surface faces the camera
        assert (np.sum(s["normals"] * _view_dirs(h, w), axis=-1) < 0).all()
        assert (s["depth"] > 0.05).all() and (s["depth"] < 15).all()
        assert s["image"].min() >= 0 and s["image"].max() <= 1
        assert set(np.unique(s["semseg"])) <= set(range(len(CLASS_NAMES)))
        assert set(np.unique(s["parts"])) <= set(range(len(PART_NAMES)))


def test_saliency_is_exactly_the_primitive_pixels(samples):
    for s in samples:
        is_primitive = s["semseg"] >= CLASS_OF_KIND["sphere"]
        np.testing.assert_array_equal(s["sal"], is_primitive.astype(np.float32))
        np.testing.assert_array_equal(s["parts"] > 0, is_primitive)
        np.testing.assert_array_equal(s["instance"] > 0, is_primitive)
    assert any(s["sal"].any() for s in samples)


def _neighbour_pairs(a: np.ndarray):
    """(first, second) views of every horizontally and vertically adjacent pixel pair."""
    return [(a[:, :-1], a[:, 1:]), (a[:-1, :], a[1:, :])]


def test_edges_lie_exactly_on_label_changes_and_depth_jumps(samples):
    for s in samples:
        h, w = s["depth"].shape
        edge = s["edge"].astype(bool)
        label = np.stack([s["semseg"], s["parts"], s["instance"]], -1).astype(np.int64) @ np.array([1, 64, 4096])
        view = _view_dirs(h, w)
        facing = -np.sum(s["normals"] * view / np.linalg.norm(view, axis=-1, keepdims=True), axis=-1)
        near_change = np.zeros_like(edge)
        for (sl_a, sl_b) in (((slice(None), slice(None, -1)), (slice(None), slice(1, None))),
                             ((slice(None, -1), slice(None)), (slice(1, None), slice(None)))):
            la, lb, ea, eb = label[sl_a], label[sl_b], edge[sl_a], edge[sl_b]
            da, db = s["depth"][sl_a], s["depth"][sl_b]
            differ = la != lb
            # every label change has an edge on one side of it, on the nearer side at depth jumps
            assert (ea | eb)[differ].all()
            jump = np.abs(da - db) > 0.1 * np.minimum(da, db)
            assert ea[differ & jump & (da < db)].all() and eb[differ & jump & (db < da)].all()
            # a depth jump inside one label is a continuous surface seen at a grazing angle
            # (> 70 degrees off its normal), never a missed occlusion boundary
            grazing = np.minimum(facing[sl_a], facing[sl_b]) < 0.34
            assert grazing[jump & ~differ].all()
            near_change[sl_a] |= differ
            near_change[sl_b] |= differ
        # and no edge pixel is away from a change
        assert not (edge & ~near_change).any()
        assert 0 < edge.mean() < 0.2


def test_edges_are_one_pixel_thin_on_a_straight_boundary():
    out = _render(Camera((0.0, 1.5, 2.0)))
    edge = out["edge"].astype(bool)
    # below the optical axis, the central columns see only the floor / far-wall boundary, a
    # horizontal line: exactly one edge pixel per column, on the floor (the nearer side)
    lower_centre = (slice(H // 2, None), slice(W // 4, W - W // 4))
    assert (edge[lower_centre].sum(axis=0) == 1).all()
    assert (out["semseg"][lower_centre][edge[lower_centre]] == FLOOR).all()


# -- determinism, the files, the cache ---------------------------------------------------------

def test_same_seed_is_byte_identical_other_seed_differs(tmp_path, small_root):
    again = ensure_dataset(tmp_path / "again", SynthConfig(**SMALL), progress=False)
    a, b = _tree(small_root), _tree(again)
    a.pop(MANIFEST), b.pop(MANIFEST)  # the manifest records the creating command
    assert a.keys() == b.keys() and all(a[k] == b[k] for k in a)

    other = ensure_dataset(tmp_path / "other", SynthConfig(**{**SMALL, "seed": 1}), progress=False)
    c = _tree(other)
    assert sum(a[k] != c[k] for k in a if k.startswith("images/")) == 12


def test_any_image_regenerates_alone_and_workers_do_not_change_the_output(tmp_path, small_root):
    cfg = SynthConfig(**SMALL)
    s = generate_sample(cfg, "val", 2)
    np.testing.assert_array_equal(np.load(small_root / "depth" / "val_00002.npy"), s["depth"])
    stored = np.asarray(Image.open(small_root / "segmentation" / "val_00002.png"))
    np.testing.assert_array_equal(stored, s["semseg"] + 1)

    parallel = tmp_path / "parallel"
    parallel.mkdir()
    generate_dataset(parallel, cfg, progress=False, workers=2)
    a, b = _tree(small_root), _tree(parallel)
    a.pop(MANIFEST), b.pop(MANIFEST)
    assert a == b


def test_layout_on_disk(small_root):
    manifest = json.loads((small_root / MANIFEST).read_text())
    assert manifest["generator_version"] == GENERATOR_VERSION
    assert manifest["counts"] == {"train": 8, "val": 4}
    assert manifest["classes"]["semseg"] == list(CLASS_NAMES)
    h, w = SMALL["height"], SMALL["width"]
    for split, n in (("train", 8), ("val", 4)):
        ids = (small_root / "gt_sets" / f"{split}.txt").read_text().split()
        assert ids == [f"{split}_{i:05d}" for i in range(n)]
        for sid in ids:
            with Image.open(small_root / "images" / f"{sid}.jpg") as im:
                assert im.mode == "RGB" and im.size == (w, h)
            for folder, values in (("segmentation", range(1, 8)), ("parts", range(1, 8)), ("saliency", (0, 255))):
                with Image.open(small_root / folder / f"{sid}.png") as im:
                    arr = np.asarray(im)
                assert arr.dtype == np.uint8 and arr.shape == (h, w)
                assert set(np.unique(arr)) <= set(values)
            depth = np.load(small_root / "depth" / f"{sid}.npy")
            normals = np.load(small_root / "normals" / f"{sid}.npy")
            edge = np.load(small_root / "edge" / f"{sid}.npy")
            assert depth.dtype == normals.dtype == edge.dtype == np.float32
            assert depth.shape == edge.shape == (h, w) and normals.shape == (h, w, 3)
            assert (depth > 0).all() and set(np.unique(edge)) <= {0.0, 1.0}
            np.testing.assert_allclose(np.linalg.norm(normals, axis=-1), 1.0, atol=1e-5)


def test_cache_is_reused_and_foreign_folders_are_refused(tmp_path, small_root, monkeypatch):
    def boom(*args, **kwargs):
        raise AssertionError("regenerated although the manifest matches")

    monkeypatch.setattr(synth_cache, "generate_dataset", boom)
    assert ensure_dataset(small_root, SynthConfig(**SMALL)) == small_root
    with pytest.raises(UserError, match="other settings"):
        ensure_dataset(small_root, SynthConfig(**{**SMALL, "seed": 3}))
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="not a synth dataset"):
        ensure_dataset(foreign, SynthConfig(**SMALL))


def test_a_failed_generation_leaves_nothing_behind(tmp_path, monkeypatch):
    calls = []
    real = write_sample

    def flaky(*args):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        real(*args)

    monkeypatch.setattr(synth_cache, "write_sample", flaky)
    with pytest.raises(KeyboardInterrupt):
        ensure_dataset(tmp_path / "data", SynthConfig(**SMALL), progress=False)
    assert list(tmp_path.iterdir()) == []


def test_default_cache_folder_follows_mtbench_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MTBENCH_CACHE", str(tmp_path))
    plugin = get_dataset("synth")(SynthConfig(**SMALL))
    assert plugin.cache_dir() == tmp_path / "synth" / SynthConfig(**SMALL).key()
    assert f"g{GENERATOR_VERSION}" in plugin.cache_dir().name
    assert plugin.resolve_root(None) == plugin.cache_dir()
    assert (plugin.cache_dir() / MANIFEST).is_file()


def test_mtbench_data_meant_for_real_datasets_is_not_used_by_synth(tmp_path, monkeypatch):
    """$MTBENCH_DATA locates real datasets; a run on synth must not write into it."""
    from mtpeft_bench.config import resolve
    from mtpeft_bench.running.setup import prepare

    data = tmp_path / "datasets"
    (data / "NYUD_MT").mkdir(parents=True)
    monkeypatch.setenv("MTBENCH_DATA", str(data))
    assert prepare(resolve("smoke", {"dataset": "synth"}, {})).data_root is None
    assert prepare(resolve("smoke", {"dataset": "nyud"}, {})).data_root == data
    explicit = tmp_path / "mine"
    assert prepare(resolve("smoke", {"dataset": "synth", "data_root": str(explicit)}, {})).data_root == explicit


def test_config_validation():
    with pytest.raises(ValueError, match="num_train"):
        SynthConfig(num_train=0)
    with pytest.raises(ValueError, match="height"):
        SynthConfig(height=8)
    with pytest.raises(ValueError, match="integer"):
        SynthConfig(seed=1.5)
    with pytest.raises(UserError, match="unknown"):
        config_from_mapping(SynthConfig, {"num_images": 3}, "data")
    with pytest.raises(UserError, match="width"):
        config_from_mapping(SynthConfig, {"width": "wide"}, "data")
    assert config_from_mapping(SynthConfig, {"seed": 4}, "data").seed == 4


# -- the plugin and its items ------------------------------------------------------------------

def test_plugin_declares_the_documented_tasks():
    plugin_cls = get_dataset("synth")
    assert plugin_cls.default_tasks == ("semseg", "depth", "normals", "sal", "edge", "parts")
    assert plugin_cls.requires_root is False and plugin_cls.image_size == (96, 128)
    t = plugin_cls.tasks
    assert [m.name for m in t["semseg"].metrics] == ["mIoU", "pixAcc"]
    assert [m.name for m in t["normals"].metrics] == ["mean", "median", "rmse", "11.25", "22.5", "30"]
    assert t["edge"].primary.name == "F_tol" and t["edge"].options["max_dist"] == 0.011
    assert {n: s.loss_weight for n, s in t.items()} == {
        "semseg": 1, "parts": 2, "sal": 5, "normals": 10, "edge": 50, "depth": 1}
    assert t["semseg"].num_outputs == len(CLASS_NAMES) and t["parts"].num_outputs == len(PART_NAMES)
    assert t["normals"].interpolation == "normals"
    assert plugin_cls(SynthConfig(**SMALL)).image_size == (48, 64)


@pytest.mark.parametrize("train", [False, True])
def test_dataset_items_have_the_documented_formats(small_root, train):
    import torch

    plugin = get_dataset("synth")(SynthConfig(**SMALL))
    specs = plugin.task_specs()
    ds = plugin.build("train" if train else "val", specs, plugin.image_size, small_root, train=train)
    assert len(ds) == (8 if train else 4)
    h, w = plugin.image_size
    item = ds[1]
    assert item["image"].dtype == torch.float32 and item["image"].shape == (3, h, w)
    assert item["meta"] == {"id": f"{'train' if train else 'val'}_00001", "size": (h, w)}
    assert item["semseg"].dtype == torch.int64 and item["semseg"].shape == (h, w)
    assert int(item["semseg"].max()) < len(CLASS_NAMES) and int(item["semseg"].min()) >= 0
    assert item["parts"].dtype == torch.int64 and int(item["parts"].max()) < len(PART_NAMES)
    assert item["depth"].shape == (1, h, w) and bool((item["depth"] > 0).all())
    assert item["normals"].shape == (3, h, w)
    torch.testing.assert_close(item["normals"].norm(dim=0), torch.ones(h, w), atol=1e-5, rtol=0)
    for name in ("sal", "edge"):
        assert item[name].dtype == torch.float32 and item[name].shape == (1, h, w)
        assert set(item[name].unique().tolist()) <= {0.0, 1.0}
    if not train:  # evaluation items are the stored ground truth, unchanged
        stored = np.load(small_root / "depth" / "val_00001.npy")
        np.testing.assert_array_equal(item["depth"][0].numpy(), stored)
        assert torch.equal(item["sal"][0] > 0, item["semseg"] >= 3)


def test_items_resized_to_another_size_keep_their_formats(small_root):
    import torch

    plugin = get_dataset("synth")(SynthConfig(**SMALL))
    ds = plugin.build("val", plugin.task_specs(), (40, 56), small_root, train=False)
    item = ds[0]
    assert item["image"].shape == (3, 40, 56) and item["meta"]["size"] == (48, 64)
    norms = item["normals"].norm(dim=0)
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-5)


def test_unknown_split_is_a_user_error(small_root):
    plugin = get_dataset("synth")(SynthConfig(**SMALL))
    with pytest.raises(UserError, match="no split 'test'"):
        plugin.build("test", plugin.task_specs(), plugin.image_size, small_root, train=False)


def test_draw_samples_writes_a_png(tmp_path, small_root):
    from mtpeft_bench.viz import draw_samples

    plugin = get_dataset("synth")(SynthConfig(**SMALL))
    out = draw_samples(plugin, plugin.task_specs(), small_root, 2, tmp_path / "figs" / "synth.png")
    data = out.read_bytes()
    assert data.startswith(b"\x89PNG") and len(data) > 10_000
    assert [p.name for p in out.parent.iterdir()] == ["synth.png"]  # no temporary file left
    with Image.open(out) as im:
        assert im.size[0] > im.size[1]  # 7 columns, 2 rows
