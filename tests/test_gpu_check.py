"""The writers and helpers of ``benchmarks/gpu_check.sh``, on canned measurements (no GPU needed).

The slow test runs the whole script as its CPU rehearsal (``GPU_CHECK_REHEARSAL=1``).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import REPO

BENCHMARKS = REPO / "benchmarks"


def load(name: str):
    """A module of benchmarks/ (not a package) by file path."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def step(wall_s: float, **extra) -> dict:
    return {"wall_s": wall_s, "cpu_s": wall_s, "wall_all": [wall_s, wall_s * 1.1], **extra}


EAGER = {"device": "NVIDIA H100 80GB HBM3", "backbone": "swin_tiny_patch4_window7_224", "image": 448, "batch": 32,
         "amp_dtype": "float16", "precision": "fp16", "peak_flops_per_s": 989.4e12, "torch": "2.11.0",
         "steps": {"full": step(0.100, peak_gib=15.0, flops_per_image=4.0e10, mfu=0.0388, images_per_s=320.0),
                   "full_streams": step(0.125),
                   "ditask": step(0.150, flops_per_image=5.0e10, mfu=0.0323),
                   "ditask_dense": step(0.180)},
         "failed": {"mtlora": "RuntimeError: out of memory"},
         "cpa_fwd_bwd": {"triton": step(0.00128)}}
COMPILED = {**EAGER, "failed": {}, "cpa_fwd_bwd": None,
            "steps": {"full": step(0.090), "full+compile": step(0.060, first_s=55.0)}}
TRAFFIC = {"device_type": "cuda", "dtype": "float16", "batch": 32, "image": 448, "estimate": 200.0, "measured": 80.0,
           "stages": [{"tokens": 401408, "width": 96, "macs_per_s": 3.0e14, "accesses_per_s": 3.75e12, "weight": 80.0}],
           "modes": {"stage0:96x96": {"estimate": "dense", "measured": "dense"},
                     "stage0:384x96": {"estimate": "dense", "measured": "factored"}}}


def test_report_rows_ratios_within_a_part_and_first_part_wins():
    report = load("check_report")
    rows = {r["variant"]: r for r in report.speed_rows([EAGER, COMPILED])}
    assert list(rows) == ["full", "full_streams", "ditask", "ditask_dense", "full+compile"]
    assert rows["full"]["step_ms"] == pytest.approx(100.0)  # the eager part's, not the compile part's 90 ms
    assert rows["ditask"]["x_full"] == pytest.approx(1.5)
    assert rows["ditask"]["x_full_streams"] == pytest.approx(1.2)
    assert rows["ditask"]["images_per_s"] == pytest.approx(32 / 0.150)  # no images_per_s stored: from the batch
    assert rows["full+compile"]["x_eager"] == pytest.approx(0.060 / 0.090)  # its own part's eager full
    assert rows["full+compile"]["x_full"] == pytest.approx(0.060 / 0.090)
    assert rows["full+compile"]["first_step_s"] == 55.0 and rows["full"]["first_step_s"] is None
    assert rows["ditask"]["gflops_per_image"] == pytest.approx(50.0)


def test_report_markdown_and_files(tmp_path):
    report = load("check_report")
    e2e = {"runs": [{"dataset": "nyud", "method": "ditask", "status": "completed", "device_name": "H100",
                     "backend": "gloo", "world_size": 1, "amp": True, "kernel": "triton", "steps": 20,
                     "train_images_per_s": 250.0, "evaluation": "original size",
                     "problems": ["backend gloo (expected nccl)"]}],
           "missing": ["pascal_mt:mtlora"]}
    paths = []
    for name, obj in (("eager", EAGER), ("compile", COMPILED), ("traffic", TRAFFIC), ("e2e", e2e)):
        paths.append(tmp_path / f"{name}.json")
        paths[-1].write_text(json.dumps(obj))
    out = tmp_path / "out"
    report.main(["--speed", str(paths[0]), str(paths[1]), str(tmp_path / "absent.json"), "--traffic", str(paths[2]),
                 "--e2e", str(paths[3]), "--out-dir", str(out), "--meta", json.dumps({"date": "2026-12-08"})])
    text = (out / "gpu_check.md").read_text()
    assert "| `ditask` | DiTASK (defaults" in text and "| 150.0 ms | 213.3 | 1.50 | 1.20 |" in text
    assert "| 40.0 | 3.9 % |" in text  # full: GFLOPs/image and MFU
    assert "| `full+compile` | full fine-tuning, torch.compile | 60.0 ms" in text and "| 0.67 | 55.0 s |" in text
    assert "`mtlora` failed: RuntimeError: out of memory" in text
    assert "estimate 200**, **measured 80.0**" in text and "stage0:384x96 dense → factored" in text
    assert "backend gloo (expected nccl)" in text and "No result record for pascal_mt:mtlora." in text
    assert "989.4 TFLOP/s" in text
    summary = json.loads((out / "gpu_check.json").read_text())
    assert summary["date"] == "2026-12-08" and len(summary["speed"]) == 2 and summary["traffic_weight"]["measured"] == 80


def test_utilisation_from_flops_rate_and_peak(monkeypatch):
    sys.path.insert(0, str(BENCHMARKS))
    try:
        speed = load("ditask_speed")
    finally:
        sys.path.remove(str(BENCHMARKS))
    monkeypatch.setenv("MTBENCH_PEAK_TFLOPS", "100")
    steps = {"full": step(0.1), "lora": step(0.2)}
    peak = speed.add_utilisation(steps, {"full": 1e10}, 32, "cpu", "fp32")
    assert peak == pytest.approx(1e14)
    assert steps["full"]["images_per_s"] == pytest.approx(320)
    assert steps["full"]["mfu"] == pytest.approx(1e10 * 3 * 320 / 1e14)
    assert steps["lora"]["mfu"] is None and steps["lora"]["images_per_s"] == pytest.approx(160)
    assert speed.split_variant("ditask+compile") == ("ditask", True)
    assert speed.ratios({"full": step(0.1), "full+compile": step(0.05)})["full+compile/full"] == pytest.approx(0.5)


def test_chooser_modes_follow_the_weight():
    cost = load("cost_weight")
    assert cost.stage_tokens(32, 448, 0) == 32 * 112 * 112 and cost.stage_tokens(2, 64, 3) == 2 * 2 * 2  # 64 px / 4 / 8 = 2
    modes = cost.chooser_modes(32, 448, {"free": 0.0, "dear": 1e6})
    assert len(modes) == 12
    # official form with a gradient: fc1/fc2 factors are cheaper when traffic is free, never when it is dear
    assert modes["stage0:384x96"] == {"free": "factored", "dear": "dense"}
    assert all(m["dear"] == "dense" for m in modes.values())


def test_traffic_weight_measured_on_cpu():
    import torch

    cost = load("cost_weight")
    result = cost.measure(1, 32, torch.device("cpu"), torch.float32, min_run_time=0.001)
    assert result["estimate"] == 0.0 and result["measured"] > 0
    assert [s["width"] for s in result["stages"]] == list(cost.SWIN_T_WIDTHS)
    assert "measured" in cost.summary_lines(result)[0]


def record(backend: str, protocol: str = "mtinet", metrics=None) -> dict:
    return {"schema_version": 3, "run_id": "r1", "status": "completed", "dataset": "nyud", "method": "ditask",
            "environment": {"device": "cuda:0", "device_name": "NVIDIA H100", "versions": {"torch": "2.11"}},
            "execution": {"backend": backend, "world_size": 1}, "config": {"amp": True},
            "method_info": {"kernel": "triton"}, "history": [{"steps": 4}, {"steps": 4}],
            "efficiency": {"train_images_per_s": 100.0}, "data_config": {"protocol": protocol},
            "metrics": {"semseg": {"mIoU": 1.0}} if metrics is None else metrics}


def test_e2e_check_reads_records_and_flags_differences(tmp_path, capsys):
    e2e = load("e2e_check")
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "good.json").write_text(json.dumps(record("nccl")))
    (tmp_path / "a" / "state.json").write_text(json.dumps({"status": "running"}))  # not a record
    expect = ["--expect", "device=cuda", "--expect", "backend=nccl", "--expect", "amp=True",
              "--expect", "kernel=triton", "--expect", "evaluation=original size"]
    out = tmp_path / "e2e.json"
    assert e2e.main([str(tmp_path), *expect, "--runs", "nyud:ditask", "--json", str(out)]) == 0
    facts = json.loads(out.read_text())["runs"][0]
    assert facts["steps"] == 8 and facts["device"] == "cuda" and facts["problems"] == []
    (tmp_path / "a" / "bad.json").write_text(json.dumps(record("gloo", "mtlora", {"depth": {"rmse": float("nan")}})))
    assert e2e.main([str(tmp_path), *expect, "--runs", "nyud:ditask,pascal_mt:mtlora", "--json", str(out)]) == 1
    result = json.loads(out.read_text())
    bad = next(r for r in result["runs"] if r["path"].endswith("bad.json"))
    assert "backend gloo (expected nccl)" in bad["problems"]
    assert "evaluation training size (expected original size)" in bad["problems"]
    assert "metrics missing or not finite" in bad["problems"]
    assert result["missing"] == ["pascal_mt:mtlora"]
    assert "NOT as expected" in capsys.readouterr().out


def test_mini_datasets_written_in_both_layouts(tmp_path):
    mini = load("make_mini_datasets")
    mini.main([str(tmp_path), "--train", "3", "--val", "1"])
    assert (tmp_path / "PASCAL_MT" / "ImageSets" / "Context" / "train.txt").read_text().split() == \
        ["2008_000001", "2008_000002", "2008_000003"]
    assert (tmp_path / "NYUD_MT" / "gt_sets" / "val.txt").read_text().split() == ["0004"]
    assert len(list((tmp_path / "NYUD_MT" / "images").glob("*.jpg"))) == 4
    with pytest.raises(SystemExit):
        mini.main([str(tmp_path), "--datasets", "cityscapes"])


@pytest.mark.slow
def test_rehearsal_of_the_whole_gpu_check(tmp_path):
    env = {**os.environ, "GPU_CHECK_REHEARSAL": "1", "OUT": str(tmp_path), "PYTHON": sys.executable}
    proc = subprocess.run(["bash", str(BENCHMARKS / "gpu_check.sh")], env=env, capture_output=True, text=True,
                          timeout=3600, cwd=REPO)
    folders = list((tmp_path / "measurements").glob("*-cpu-rehearsal"))
    assert len(folders) == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((folders[0] / "gpu_check.json").read_text())
    assert summary["rehearsal"] is True
    assert {"full", "ditask", "ditask_factored", "lora", "mtlora"} <= set(summary["speed"][0]["steps"])
    assert "full+compile" in summary["speed"][1]["steps"], summary["speed"][1].get("failed")
    compiled_ditask = summary["speed"][2]
    assert "ditask+compile" in {**compiled_ditask["steps"], **compiled_ditask["failed"]}
    assert summary["traffic_weight"]["measured"] > 0
    assert summary["end_to_end"]["ok"], summary["end_to_end"]
    assert (folders[0] / "gpu_check.md").read_text().startswith("# GPU check")
