"""``mtbench sweep --launcher local|slurm``: one submitit job per run, with the sweep's resume/skip
logic; a job killed mid-run is submitted again once and its run resumes (one record, not two).
Run with submitit's LocalExecutor (no Slurm here); the Slurm side is checked up to the sbatch
parameters."""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time

import pytest

from helpers import error_lines, run_cli
from mtpeft_bench.errors import UserError
from mtpeft_bench.running.launchers import executor_parameters, make_executor, parse_launcher_opts


pytestmark = pytest.mark.usefixtures("one_thread")

EPOCHS = 12  # enough epochs after the first checkpoint for the killer (polling every 20 ms) to see it
GRID = ["sweep", "--method", "full", "--dataset", "synth", "--seeds", "0", "--preset", "smoke", "--tasks", "semseg,depth",
        "--set", "data.num_train=8", "--set", "data.num_val=4", "--batch-size", "4", "--epochs", str(EPOCHS),
        "--no-progress", "--set", "measure_repeats=0", "--launcher", "local"]


def _kill_after_first_checkpoint(runs, killed, stop):
    """SIGKILL the process training the run (run.json's pid) once its first checkpoint exists."""
    while not stop.is_set():
        for state in runs.glob("*/run.json"):
            try:
                info = json.loads(state.read_text())
            except (OSError, json.JSONDecodeError):
                continue
            if (state.parent / "last.safetensors").is_file() and info.get("pid") and info.get("status") == "running":
                os.kill(int(info["pid"]), signal.SIGKILL)
                killed.append(int(info["pid"]))
                return
        time.sleep(0.02)


def test_a_job_killed_mid_run_is_rerun_once_and_resumes(tmp_path, capsys):
    out, runs = tmp_path / "results", tmp_path / "runs"
    killed, stop = [], threading.Event()
    killer = threading.Thread(target=_kill_after_first_checkpoint, args=(runs, killed, stop), daemon=True)
    killer.start()
    try:
        code, _, err = run_cli([*GRID, "--out", str(out), "--launcher-opts", "reruns=1"], capsys)
    finally:
        stop.set()
        killer.join()
    assert killed, "the run ended before its first checkpoint could be killed"
    assert code == 0, err
    assert "died" in err and "submitting it again" in err and "(rerun 1)" in err
    records = [json.loads(p.read_text()) for p in out.rglob("*.json")]
    assert len(records) == 1  # rerun, not duplicated
    execution = records[0]["execution"]
    assert execution["sessions"] == 2 and execution["resumed_from"][0] >= 2  # resumed after epoch 1's checkpoint
    assert len(records[0]["history"]) == EPOCHS

    # the same sweep again: the point is done, no job is submitted
    code, _, err = run_cli([*GRID, "--out", str(out)], capsys)
    assert code == 0 and "1 completed (skipped)" in err and "submitted" not in err, err


@pytest.mark.slow  # two subprocess trainings: minutes on a loaded machine
def test_a_job_killed_with_no_reruns_left_fails_the_sweep(tmp_path, capsys):
    out, runs = tmp_path / "results", tmp_path / "runs"
    killed, stop = [], threading.Event()
    killer = threading.Thread(target=_kill_after_first_checkpoint, args=(runs, killed, stop), daemon=True)
    killer.start()
    try:
        code, _, err = run_cli([*GRID, "--out", str(out), "--launcher-opts", "reruns=0"], capsys)
    finally:
        stop.set()
        killer.join()
    assert killed and code == 1
    assert "no reruns left" in err and not list(out.rglob("*.json"))
    # its run folder keeps the checkpoint: the in-process sweep resumes it
    code, _, err = run_cli([*GRID[:-2], "--out", str(out)], capsys)
    assert code == 0 and "1 to resume" in err, err
    (record,) = [json.loads(p.read_text()) for p in out.rglob("*.json")]
    assert record["execution"]["sessions"] == 2


def test_launcher_opts_are_parsed_and_checked():
    assert parse_launcher_opts(("partition=gpu,time=120", "gpus=2")) == {"partition": "gpu", "time": 120, "gpus": 2}
    for items, message in [(("partion=gpu",), "did you mean 'partition'"), (("time=soon",), "must be an integer"),
                           (("gpus",), "KEY=VALUE")]:
        with pytest.raises(UserError, match=message):
            parse_launcher_opts(items)


def test_slurm_options_become_sbatch_parameters():
    params = executor_parameters("slurm", parse_launcher_opts(("partition=gpu,time=90,gpus=4,cpus=16,mem_gb=64",)))
    assert params["partition"] == "gpu" and params["time"] == 90 and params["gpus_per_node"] == 4
    assert params["cpus_per_task"] == 16 and params["mem"] == "64GB" and params["nodes"] == 1
    local = executor_parameters("local", parse_launcher_opts(("partition=gpu,time=90",)))
    assert local == {"timeout_min": 90}


@pytest.mark.skipif(shutil.which("srun") is not None, reason="a Slurm cluster is here")
def test_slurm_without_slurm_is_one_line(tmp_path):
    with pytest.raises(UserError, match="--launcher slurm finds no Slurm here"):
        make_executor("slurm", tmp_path, {})


def test_missing_submitit_and_bad_combinations_are_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "submitit", None)
    code, _, err = run_cli([*GRID, "--out", str(tmp_path / "r")], capsys)
    (line,) = [line for line in error_lines(err) if line.startswith("mtbench: error:")]
    assert code == 2 and "needs submitit: pip install 'mtpeft-bench[slurm]'" in line
    code, _, err = run_cli([*GRID, "--out", str(tmp_path / "r"), "--print-commands"], capsys)
    assert code == 2 and "does not combine with --print-commands" in err
