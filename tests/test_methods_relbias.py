"""``relbias``: exactly the relative-position bias tables train, counted by formula on Swin-T."""

from __future__ import annotations

import json

import pytest
import torch

from helpers import micro_backbone, run_cli
from helpers.baseline import DECODER, SWIN_T_BLOCKS, swin_t_model, trainable
from mtpeft_bench.registry import get_method

SWIN_T_HEADS = (3, 6, 12, 24)  # Swin-T's heads per stage (Liu et al., ICCV 2021)


def test_count_on_swin_t():
    _, groups, summary = swin_t_model("relbias")
    rows = (2 * 7 - 1) ** 2  # window 7 at 448 px: every stage's grid (112, 56, 28, 14) is a multiple of 7
    expected = rows * sum(b * h for b, h in zip(SWIN_T_BLOCKS, SWIN_T_HEADS))
    assert expected == 23_322
    counts = trainable(groups)
    assert counts["rel_pos"] == groups["rel_pos"]["total"] == expected
    assert all(count == 0 for group, count in counts.items() if group not in ("rel_pos", "decoder"))
    assert summary["total_trainable"] == expected + DECODER


def test_exactly_the_bias_tables_train_and_the_forward_is_stock():
    from helpers.baseline import reference_features

    torch.manual_seed(0)
    backbone = micro_backbone()
    tables = {id(m.relative_position_bias_table) for m in backbone.modules()
              if hasattr(m, "relative_position_bias_table")}
    encoder = get_method("relbias")().build(backbone, ["a"], get_method("relbias").Config())
    assert {id(p) for p in encoder.parameters() if p.requires_grad} == tables
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        for got, want in zip(encoder(images)["a"], reference_features(backbone, images)):
            torch.testing.assert_close(got, want, rtol=0, atol=0)
    loss = sum(f.square().mean() for f in encoder(images)["a"])
    loss.backward()
    grads = [p.grad for p in encoder.parameters() if p.requires_grad]
    assert all(g is not None and g.abs().sum() > 0 for g in grads)


@pytest.mark.slow
def test_smoke_run_on_synth(capsys, tmp_path):
    args = ["--preset", "smoke", "--tasks", "semseg,depth", "--set", "data.num_train=8", "--set", "data.num_val=4",
            "--set", "batch_size=4", "--epochs", "1", "--no-progress"]
    code, _, err = run_cli(["run", "--method", "relbias", "--out", str(tmp_path), *args], capsys)
    assert code == 0, err
    (record,) = [json.loads(p.read_text()) for p in tmp_path.rglob("*.json")]
    assert record["status"] == "completed" and record["method"] == "relbias"
