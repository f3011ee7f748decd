"""`mtbench bench`: a method timed beside `full` with the runs' own timing code, printed as ratios."""

from __future__ import annotations

import json
import re

import pytest

from mtpeft_bench.bench import format_bench
from mtpeft_bench.cli import main


SMALL = ["--steps", "2", "--warmup", "1", "--batch-size", "2", "--tasks", "semseg"]


def bench(capsys, *args):
    with pytest.raises(SystemExit) as info:
        main(["bench", *args])
    out, err = capsys.readouterr()
    return info.value.code, out, err


def test_bench_json_and_table(capsys, lowrank_method):
    code, out, err = bench(capsys, "--method", "lowrank_fc2", *SMALL, "--format", "json")
    assert code == 0, err
    result = json.loads(out)
    models = result["models"]
    assert list(models) == ["lowrank_fc2", "full", "lowrank_fc2 (merged)"]
    for name in ("lowrank_fc2", "full"):
        assert models[name]["train_step_ms"] > 0 and models[name]["train_images_per_s"] > 0
    for name in models:
        assert models[name]["latency_ms"] > 0 and models[name]["inference_images_per_s"] > 0
    # Same forward as full except the rank-2 fc2 terms (348,160 FLOPs, see test_measure_merge); merging removes them.
    extra = models["lowrank_fc2"]["gflops_per_image"] - models["full"]["gflops_per_image"]
    assert extra * 1e9 == pytest.approx(348_160)
    assert models["lowrank_fc2 (merged)"]["gflops_per_image"] == pytest.approx(models["full"]["gflops_per_image"])
    ratios = result["ratios"]["lowrank_fc2"]
    assert ratios["trainable_params"] == pytest.approx(models["lowrank_fc2"]["trainable_params"]
                                                       / models["full"]["trainable_params"])
    assert ratios["trainable_params"] < 1
    assert models["full"]["peak_train_memory_mb"] is None  # CPU: not split per model

    table = format_bench(result)
    header = re.split(r"\s{2,}", table.splitlines()[1].strip())  # columns are 2+ spaces apart
    assert header == ["measure", "lowrank_fc2", "full", "lowrank_fc2 (merged)", "lowrank_fc2 / full",
                      "lowrank_fc2 (merged) / full"]
    assert "lowrank_fc2 (merged) / full" in table and "training step (ms, median) ↓" in table
    flops_line = next(line for line in table.splitlines() if line.startswith("forward GFLOPs per image"))
    assert flops_line.split()[-1] == "1.00x"  # merged: exactly the backbone's forward again
    assert "peak training memory" not in table  # CUDA only
    # Achieved model FLOP/s beside images/s; no MFU on a CPU (no known peak).
    for name in ("lowrank_fc2", "full"):
        assert models[name]["train_tflops_per_s"] == pytest.approx(
            3 * models[name]["gflops_per_image"] * models[name]["train_images_per_s"] / 1e3)
    assert models["lowrank_fc2 (merged)"]["train_tflops_per_s"] is None  # never trained
    assert all(models[name]["train_mfu"] is None and models[name]["inference_mfu"] is None for name in models)
    assert result["peak"]["peak_flops_per_s"] is None and result["peak"]["precision"] == "fp32"
    assert "training model TFLOP/s (3 forwards/image) ↑" in table and "MFU" not in table


def test_bench_mfu_with_a_given_peak(capsys, monkeypatch):
    monkeypatch.setenv("MTBENCH_PEAK_TFLOPS", "0.5")
    code, out, err = bench(capsys, "--method", "full", *SMALL, "--format", "json")
    assert code == 0, err
    result = json.loads(out)
    full = result["models"]["full"]
    assert result["peak"]["peak_flops_per_s"] == pytest.approx(0.5e12)
    assert full["train_mfu"] == pytest.approx(3 * full["gflops_per_image"] * 1e9 * full["train_images_per_s"] / 0.5e12)
    assert full["inference_mfu"] == pytest.approx(full["gflops_per_image"] * 1e9 * full["inference_images_per_s"]
                                                  / 0.5e12)
    table = format_bench(result)
    mfu_line = next(line for line in table.splitlines() if line.startswith("training MFU"))
    assert mfu_line.split()[-1] == f"{full['train_mfu']:.2%}"
    assert table.splitlines()[-1].startswith("MFU: model FLOP/s over the 0.5 TFLOP/s dense fp32 peak")


@pytest.mark.parametrize("args, message", [
    (["--method", "nope"], "unknown method 'nope'"),
    (["--method", "full", "--image-size", "16"], "at least 32 px"),
    (["--method", "full", "--steps", "0"], "--steps must be at least 1"),
    (["--method", "full", "--set", "epochs=2"], "only method.<key>"),
    (["--method", "full", "--set", "method.r=2"], "unknown full method option"),
    (["--method", "decoder_only", "--set", "method.r=2"], "unknown decoder_only method option"),
])
def test_bench_bad_input(capsys, args, message):
    code, _, err = bench(capsys, *SMALL, *args)
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1
