"""Sweeps sharing a grid: a lock per run (running/run_lock.py), a point another process holds is
skipped, and two sweeps started at once on the same grid run each point exactly once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from helpers import run_cli
from mtpeft_bench.running.run_lock import lock_path, run_lock


GRID = ["sweep", "--method", "decoder_only", "--dataset", "synth", "--seeds", "0,1", "--preset", "smoke",
        "--tasks", "depth", "--set", "data.num_train=8", "--set", "data.num_val=2", "--set", "batch_size=4",
        "--epochs", "1", "--no-progress"]


def test_a_lock_is_held_once_and_leaves_nothing_behind(tmp_path):
    runs = tmp_path / "runs"
    with run_lock(runs, "abc") as first:
        assert first and lock_path(runs, "abc").exists()
        with run_lock(runs, "abc") as second:  # another open file: flock refuses it, even in this process
            assert not second
        with run_lock(runs, "other") as third:
            assert third
        assert lock_path(runs, "abc").exists()  # the refused one did not take the holder's file away
    assert not runs.exists()  # created for the lock, empty again: removed
    with run_lock(runs, "abc") as again:
        assert again


def test_a_point_held_by_another_process_is_skipped_and_counted(tmp_path, capsys):
    from mtpeft_bench.config import parse_sets
    from mtpeft_bench.running.sweep import expand

    out = tmp_path / "results"
    sets = parse_sets(["data.num_train=8", "data.num_val=2", "batch_size=4"])
    points = expand(["synth"], ["decoder_only"], [0, 1], "smoke",
                    {"tasks": "depth", "epochs": 1, "progress": False, "out": str(out)}, sets)
    runs = tmp_path / "runs"
    with run_lock(runs, points[0].config_hash) as a, run_lock(runs, points[1].config_hash) as b:
        assert a and b
        code, _, err = run_cli([*GRID, "--out", str(out)], capsys)
    assert code == 0, err
    assert err.count("is running in another process; skipped") == 2
    assert "sweep: synth/decoder_only/seed 0 is running in another process; skipped" in err
    assert "0 completed, 0 skipped, 0 failed, 2 running in another process" in err
    assert not out.exists()


@pytest.mark.slow
def test_two_sweeps_on_one_grid_run_each_point_once(tmp_path):
    out, runs = tmp_path / "results", tmp_path / "runs"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "MTBENCH_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(p for p in (os.path.dirname(os.path.abspath(__file__)),
                                                     os.environ.get("PYTHONPATH")) if p)}
    env.pop("MTBENCH_DATA", None)
    command = [sys.executable, "-m", "mtpeft_bench", *GRID, "--out", str(out)]
    started = time.monotonic()
    procs = [subprocess.Popen(command, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    outputs = [proc.communicate(timeout=600) for proc in procs]
    for proc, (_, err) in zip(procs, outputs):
        assert proc.returncode == 0, err
    records = [json.loads(path.read_text()) for path in out.rglob("*.json")]
    assert sorted(r["seed"] for r in records) == [0, 1]  # one completed record per point, none twice
    assert all(r["status"] == "completed" and "load" in r["efficiency"] for r in records)
    run_states = [json.loads(path.read_text()) for path in runs.glob("*/run.json")]
    assert sorted(s["config"]["seed"] for s in run_states) == [0, 1]
    assert all(s["status"] == "completed" for s in run_states)
    leftovers = [p for p in tmp_path.rglob("*") if p.name.endswith((".tmp", ".lock"))]
    assert leftovers == []
    # Each point was run by exactly one of the two; the other skipped it, one way or the other.
    said = "".join(err for _, err in outputs)
    assert said.count(": start") == 2, said
    print(f"two sweeps took {time.monotonic() - started:.0f} s")


def test_an_unwritable_runs_folder_is_left_to_the_run_to_report(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with run_lock(blocker / "runs", "abc") as held:  # a folder under a file cannot be made
        assert held


@pytest.mark.slow
def test_jobs_share_the_grid_and_the_cores(tmp_path):
    out = tmp_path / "results"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "MTBENCH_CACHE": str(tmp_path / "cache")}
    env.pop("MTBENCH_DATA", None)
    done = subprocess.run([sys.executable, "-m", "mtpeft_bench", *GRID, "--out", str(out), "--jobs", "2"], env=env,
                          cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "sweep: 2 jobs share the grid, each with" in done.stderr
    records = [json.loads(path.read_text()) for path in out.rglob("*.json")]
    assert sorted(r["seed"] for r in records) == [0, 1]
    from mtpeft_bench.machine_load import cpu_count

    assert {r["efficiency"]["load"]["threads"] for r in records} == {max(cpu_count() // 2, 1)}
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith((".tmp", ".lock"))]


def test_jobs_must_be_positive_and_do_not_combine_with_print_commands(tmp_path, capsys):
    code, _, err = run_cli([*GRID, "--out", str(tmp_path), "--jobs", "0"], capsys)
    assert code == 2 and "--jobs must be at least 1" in err
    code, _, err = run_cli([*GRID, "--out", str(tmp_path), "--jobs", "2", "--print-commands"], capsys)
    assert code == 2 and "does not combine" in err
