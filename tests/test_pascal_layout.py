"""The pascal_mt loader on a miniature PASCAL_MT folder written in the exact formats (JPEG, PNG, .mat)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.io import savemat

from mtpeft_bench.errors import UserError
from mtpeft_bench.registry import get_dataset
from mtpeft_bench.tasks.miniature import CONTEXT_IDS, write_parts_mat, write_pascal
from mtpeft_bench.tasks.nyud_layout import DataFileError
from mtpeft_bench.tasks.pascal_layout import PascalLayout, laplacian_edges, normals_class_ids


@pytest.fixture()
def pascal_root(tmp_path) -> Path:
    return write_pascal(tmp_path / "data" / "PASCAL_MT")


def _plugin(**options):
    cls = get_dataset("pascal_mt")
    return cls(cls.Config(**options))


def test_normals_classes_are_the_170_nyu_compatible_context_classes():
    ids = normals_class_ids()
    assert len(ids) == 170
    assert {427, 397, 284, 72} <= set(ids.tolist())  # tvmonitor (the custom addition), table, person, chair
    assert 189 not in ids and 431 not in ids and 2 not in ids  # ground, unknown, aeroplane


def test_targets_decode_as_the_reference(pascal_root):
    layout = PascalLayout(pascal_root)
    tasks = get_dataset("pascal_mt").tasks
    sid = "2008_000001"  # index 0: 20x24, a person with parts, semseg only in semseg/pascal-context
    image = layout.read_image(sid)
    assert image.shape == (20, 24, 3) and image.dtype == np.uint8
    semseg = layout.read_target(tasks["semseg"], sid)
    assert layout.path("semseg", sid).parent.name == "pascal-context"
    assert semseg[0].tolist() == [255] * 24 and semseg[10, 12] == 15 and semseg[5, 12] == 11 and semseg[5, 2] == 0
    parts = layout.read_target(tasks["human_parts"], sid)
    assert parts[10, 12] == 1 and parts[13, 12] == 2 and parts[13, 23] == 3 and parts[5, 5] == 0
    assert set(np.unique(parts)) == {0, 1, 2, 3}
    sal = layout.read_target(tasks["sal"], sid)
    assert sal.shape == (1, 20, 24) and sal[0, 15, 15] == 1 and sal[0, 1, 1] == 0  # 100/255 < 0.5
    normals = layout.read_target(tasks["normals"], sid)
    # ground (189) is not NYU-compatible: zero; table and person keep 2 v / 255 - 1
    assert (normals[:, 15, 3] == 0).all()
    np.testing.assert_allclose(normals[:, 5, 12], [2 * 128 / 255 - 1, 2 * 128 / 255 - 1, 1.0], atol=1e-6)
    edge = layout.read_target(tasks["edge"], sid)
    assert edge.shape == (1, 20, 24) and set(np.unique(edge)) == {0.0, 1.0}


def test_voc12_semseg_is_preferred(pascal_root):
    sid = "2008_000001"
    Image.fromarray(np.full((20, 24), 7, np.uint8)).save(pascal_root / "semseg" / "VOC12" / f"{sid}.png")
    semseg = PascalLayout(pascal_root).read_target(get_dataset("pascal_mt").tasks["semseg"], sid)
    assert (semseg == 7).all()


def test_laplacian_edges_of_a_step():
    labels = np.zeros((6, 8), np.int64)
    labels[:, 4:] = 5
    edges = laplacian_edges(labels)
    # |Laplacian| > 0 on columns 3 and 4 (a 2-px band); thinning leaves a 1-px line (ends may shorten)
    assert edges[:, :3].sum() == 0 and edges[:, 5:].sum() == 0
    per_row = edges[:, 3:5].sum(axis=1)
    assert per_row.max() == 1 and per_row.sum() >= 4


def test_images_without_annotated_persons_are_fully_ignored(pascal_root):
    plugin = _plugin(augment=False)
    ds = plugin.build("train", plugin.task_specs(["human_parts", "semseg"]), (16, 16), pascal_root, train=False)
    assert (ds[1]["human_parts"] == 255).all()  # index 1: no person
    assert (ds[0]["human_parts"] != 255).all() and (ds[0]["human_parts"] > 0).any()


def test_unannotated_persons_switch(tmp_path):
    root = write_pascal(tmp_path / "PASCAL_MT", ids={"train": ["a"], "val": ["b"]}, size=(10, 10))
    person = np.zeros((10, 10), bool)
    person[5:, 5:] = True
    other = np.zeros((10, 10), bool)
    other[:3, :3] = True
    head = person.copy()
    write_parts_mat(root / "human_parts" / "a.mat", "a", [("person", 15, person, [("head", head)]),
                                                          ("person", 15, other, [])])
    spec = get_dataset("pascal_mt").tasks["human_parts"]
    assert PascalLayout(root).read_target(spec, "a")[1, 1] == 0  # reference: background
    assert PascalLayout(root, unannotated_persons="ignore").read_target(spec, "a")[1, 1] == 255


def test_parts_only_runs_keep_person_images_and_never_write_into_the_data_root(pascal_root, cache_dir):
    before = sorted(p for p in pascal_root.rglob("*"))
    plugin = _plugin()
    ds = plugin.build("train", plugin.task_specs(["human_parts"]), (16, 16), pascal_root, train=True)
    assert ds.ids == ["2008_000001", "2008_000003"]
    assert sorted(p for p in pascal_root.rglob("*")) == before
    assert list((cache_dir / "pascal_mt").glob("persons-train-*.json"))
    again = plugin.build("train", plugin.task_specs(["human_parts"]), (16, 16), pascal_root, train=True)
    assert again.ids == ds.ids
    off = _plugin(parts_only_person_images=False)
    assert len(off.build("train", off.task_specs(["human_parts"]), (16, 16), pascal_root, train=True)) == 4


def test_training_samples_keep_their_formats(pascal_root):
    torch.manual_seed(0)
    plugin = _plugin()
    specs = plugin.task_specs(list(plugin.tasks))
    ds = plugin.build("train", specs, (32, 32), pascal_root, train=True)
    for i in range(len(ds)):
        item = ds[i]
        n = item["normals"]
        valid = ~(n == 255).all(dim=0)
        torch.testing.assert_close(n[:, valid].norm(dim=0), torch.ones(int(valid.sum())), rtol=0, atol=1e-5)


def test_mtinet_protocol_keeps_targets_at_the_original_size(pascal_root):
    plugin = _plugin(protocol="mtinet")
    ds = plugin.build("val", plugin.task_specs(), (32, 32), pascal_root, train=False)
    assert ds.eval_batch_size == 1
    item = ds[1]  # index 5 overall: 22x28
    assert item["image"].shape == (3, 32, 32) and item["semseg"].shape == (22, 28)
    assert item["meta"]["size"] == (22, 28)
    train = plugin.build("train", plugin.task_specs(), (32, 32), pascal_root, train=True)
    assert train.eval_batch_size is None and train[0]["semseg"].shape == (32, 32)


def test_resolve_root_and_archive_hint(pascal_root, tmp_path, monkeypatch):
    plugin = _plugin()
    assert plugin.resolve_root(pascal_root.parent) == pascal_root
    monkeypatch.setenv("MTBENCH_DATA", str(pascal_root.parent))
    assert plugin.resolve_root(None) == pascal_root
    archive = tmp_path / "PASCAL_MT.tgz"
    archive.write_bytes(b"x")
    with pytest.raises(UserError, match="mtbench data prepare pascal_mt --from"):
        plugin.resolve_root(archive)


# -- bad inputs: one line naming the file --------------------------------------------------------

def test_missing_file_is_named_before_training(pascal_root):
    os.remove(pascal_root / "sal_distill" / "2008_000006.png")
    plugin = _plugin()
    with pytest.raises(UserError, match=r"sal_distill/2008_000006.png: file is missing") as info:
        plugin.build("val", plugin.task_specs(), (16, 16), pascal_root, train=False)
    assert "\n" not in str(info.value)


def test_truncated_image_is_named(pascal_root):
    path = pascal_root / "JPEGImages" / "2008_000005.jpg"
    path.write_bytes(path.read_bytes()[:200])
    plugin = _plugin()
    ds = plugin.build("val", plugin.task_specs(), (16, 16), pascal_root, train=False)
    with pytest.raises(DataFileError, match=r"JPEGImages/2008_000005.jpg: cannot be decoded"):
        ds[0]


def test_label_of_the_wrong_size_is_named(pascal_root):
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(pascal_root / "sal_distill" / "2008_000005.png")
    savemat(str(pascal_root / "pascal-context" / "trainval" / "2008_000006.mat"),
            {"LabelMap": np.zeros((3, 3), np.uint16)})
    plugin = _plugin()
    ds = plugin.build("val", plugin.task_specs(), (16, 16), pascal_root, train=False)
    with pytest.raises(UserError, match=r"sal_distill/2008_000005.png: target is 5x5, its image is 20x24"):
        ds[0]
    with pytest.raises(UserError, match=r"2008_000006.mat: LabelMap is 3x3"):
        ds[1]


def test_empty_split_file_is_named(pascal_root):
    (pascal_root / "ImageSets" / "Context" / "val.txt").write_text("\n\n")
    plugin = _plugin()
    with pytest.raises(UserError, match=r"ImageSets/Context/val.txt: split file lists no image id"):
        plugin.build("val", plugin.task_specs(), (16, 16), pascal_root, train=False)


def test_labels_out_of_range_are_named(pascal_root):
    Image.fromarray(np.full((20, 24), 30, np.uint8)).save(pascal_root / "semseg" / "VOC12" / "2008_000005.png")
    plugin = _plugin()
    ds = plugin.build("val", plugin.task_specs(["semseg"]), (16, 16), pascal_root, train=False)
    with pytest.raises(UserError, match=r"VOC12/2008_000005.png: semseg labels must be 0..20 or 255"):
        ds[0]


def test_end_to_end_run_at_original_resolution(pascal_root, tmp_path):
    import mtpeft_bench

    record = mtpeft_bench.run(method="full", dataset="pascal_mt", preset="smoke", data_root=str(pascal_root.parent),
                              out=str(tmp_path / "results"), epochs=1, batch_size=2, progress=False,
                              tasks=("semseg", "human_parts", "sal", "normals", "edge"),
                              **{"data.protocol": "mtinet"})
    assert record["status"] == "completed" and record["data_config"]["protocol"] == "mtinet"
    assert record["efficiency"]["eval_batch_size"] == 1
    for task in ("semseg", "human_parts", "sal", "normals"):
        assert np.isfinite(record["metrics"][task][record["task_specs"][task]["primary"]])
    assert 0.0 <= record["metrics"]["edge"]["odsF"] <= 100.0 and "F_tol" in record["metrics"]["edge"]
