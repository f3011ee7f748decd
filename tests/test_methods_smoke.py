"""Every baseline method runs ``mtbench run`` end to end and appears in ``mtbench compare`` (slow)."""

from __future__ import annotations

import json

import pytest

from helpers import run_cli


TINY = ["--preset", "smoke", "--tasks", "semseg,depth", "--set", "data.num_train=24", "--set", "data.num_val=6",
        "--set", "batch_size=8", "--epochs", "1", "--no-progress"]
RUNS = {
    "lora": [], "mtlora": ["--set", "method.plus=true"], "adapter": ["--set", "method.bottleneck=8"], "bitfit": [],
    "peft": ["--set", "method.peft_type=LOHA", "--set", "method.r=4"],
}



@pytest.mark.slow
def test_every_baseline_runs_and_is_compared(capsys, tmp_path):
    out_dir = tmp_path / "results"
    for method, extra in RUNS.items():
        code, _, err = run_cli(["run", "--method", method, "--out", str(out_dir), *TINY, *extra], capsys)
        assert code == 0, err
    records = [json.loads(p.read_text()) for p in out_dir.rglob("*.json")]
    assert sorted(r["method"] for r in records) == sorted(RUNS)
    assert all(r["status"] == "completed" for r in records)
    peft_record = next(r for r in records if r["method"] == "peft")
    assert peft_record["method_info"]["peft_type"] == "LOHA"
    code, out, err = run_cli(["compare", "--results", str(out_dir)], capsys)
    assert code == 0, err
    for method in RUNS:
        assert f"| {method}" in out or f"{method} " in out
