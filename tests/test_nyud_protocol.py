"""nyud under the protocol presets, the ATRC variant kept apart, millimetre depth, and an end-to-end run."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers.datasets import to_atrc_packaging
from mtpeft_bench.errors import UserError
from mtpeft_bench.registry import get_dataset
from mtpeft_bench.tasks.miniature import write_nyud


@pytest.fixture()
def nyud_root(tmp_path) -> Path:
    return write_nyud(tmp_path / "data" / "NYUD_MT")


def test_atrc_package_is_a_separate_dataset(nyud_root):
    nyud, atrc = get_dataset("nyud")(), get_dataset("nyud_atrc")()
    with pytest.raises(UserError, match="use --dataset nyud$"):
        atrc.resolve_root(nyud_root)
    to_atrc_packaging(nyud_root)
    with pytest.raises(UserError, match="ATRC/InvPT NYUDv2 package.*use --dataset nyud_atrc"):
        nyud.resolve_root(nyud_root)
    ds = atrc.build("val", atrc.task_specs(), (24, 32), nyud_root, train=False)
    item = ds[0]
    assert item["edge"][0, :, 16].eq(1).all() and item["semseg"][5, 2] == 0 and item["semseg"][5, 20] == 39
    n = item["normals"]
    np.testing.assert_allclose(n[:, 20, 5].numpy(), [0.6, 0.0, 0.8], atol=0.01)  # 8-bit PNG, renormalised


def test_millimetre_depth_is_converted_and_logged(tmp_path, caplog):
    root = write_nyud(tmp_path / "NYUD_MT", depth_scale=1000.0)
    plugin = get_dataset("nyud")()
    ds = plugin.build("val", plugin.task_specs(["depth"]), (24, 32), root, train=False)
    with caplog.at_level(logging.WARNING):
        depth = ds[0]["depth"]
    assert "look like millimetres" in caplog.text
    valid = depth != 255
    assert depth[valid].max() <= 6.0 + 1e-4 and depth[valid].min() >= 0.8 - 1e-4


def test_training_zoom_divides_depth(nyud_root):
    plugin = get_dataset("nyud")()
    ds = plugin.build("train", plugin.task_specs(["depth"]), (24, 32), nyud_root, train=True)
    raw = np.load(nyud_root / "depth" / "0001.npy")
    # the zoom is about (w/2, h/2) = (16, 12), which stays in place; a flip first brings column 15 there
    candidates = {(col, z): raw[12, col] / z for col in (15, 16) for z in (1.0, 1.2, 1.5)}
    zooms = set()
    for seed in range(16):
        torch.manual_seed(seed)
        value = float(ds[0]["depth"][0, 12, 16])
        match = [key for key, v in candidates.items() if abs(v - value) < 1e-5]
        assert match, value
        zooms.add(match[0][1])
    assert zooms == {1.0, 1.2, 1.5}


def test_nyud_end_to_end_run(nyud_root, tmp_path):
    import mtpeft_bench

    record = mtpeft_bench.run(method="full", dataset="nyud", preset="smoke", data_root=str(nyud_root.parent),
                              out=str(tmp_path / "results"), epochs=1, batch_size=2, progress=False)
    assert record["status"] == "completed" and record["data_config"]["protocol"] == "mtlora"
    assert set(record["metrics"]) == {"semseg", "depth", "normals", "edge"}
    assert np.isfinite(record["metrics"]["depth"]["rmse"]) and "odsF" in record["metrics"]["edge"]
