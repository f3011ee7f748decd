"""``mtbench sweep``: the grid runs, a second pass does no work, compare shows every run, an
interrupted run is resumed, a failing run does not stop the others, and the torchrun commands."""

from __future__ import annotations

import json
import os
import shlex
import signal

import pytest
import torch

from helpers import run_cli
from mtpeft_bench.cli.options import parse_seeds
from mtpeft_bench.train import Trainer


GRID = ["sweep", "--method", "full,decoder_only", "--dataset", "synth", "--seeds", "0,1", "--preset", "smoke",
        "--tasks", "semseg,depth", "--set", "data.num_train=8", "--set", "data.num_val=4", "--batch-size", "4",
        "--epochs", "1", "--no-progress"]


pytestmark = pytest.mark.usefixtures("one_thread")



def test_parse_seeds():
    assert parse_seeds("0,1,2") == [0, 1, 2]
    assert parse_seeds("0-2,5,1") == [0, 1, 2, 5]
    from mtpeft_bench.errors import UserError

    with pytest.raises(UserError, match="--seeds"):
        parse_seeds("a")


def test_sweep_runs_the_grid_once_and_compare_shows_every_run(capsys, tmp_path, monkeypatch):
    out_dir = tmp_path / "results"
    code, _, err = run_cli([*GRID, "--out", str(out_dir)], capsys)
    assert code == 0, err
    assert "4 runs: 0 completed (skipped), 0 to resume, 4 to start" in err
    records = [json.loads(p.read_text()) for p in out_dir.rglob("*.json")]
    assert sorted((r["method"], r["seed"]) for r in records) == [("decoder_only", 0), ("decoder_only", 1),
                                                                ("full", 0), ("full", 1)]
    assert all(r["status"] == "completed" for r in records)

    # A second pass finds every result by its configuration hash and runs nothing.
    def no_work(*args, **kwargs):
        raise AssertionError("a finished sweep must not run again")

    monkeypatch.setattr("mtpeft_bench.running.pipeline.run", no_work)
    code, _, err = run_cli([*GRID, "--out", str(out_dir)], capsys)
    assert code == 0, err
    assert "4 completed (skipped), 0 to resume, 0 to start" in err
    assert len(list(out_dir.rglob("*.json"))) == 4
    # ...and the commands it would print for a scheduler: none left with the same world size,
    code, out, err = run_cli([*GRID, "--out", str(out_dir), "--print-commands"], capsys)
    assert code == 0 and out == ""
    # but all four with 2 processes per run (another global batch: another configuration).
    code, out, err = run_cli([*GRID, "--out", str(out_dir), "--print-commands", "--nproc-per-node", "2"], capsys)
    lines = out.splitlines()
    assert code == 0 and len(lines) == 4
    words = shlex.split(lines[0])
    assert words[:3] == ["torchrun", "--standalone", "--nproc_per_node=2"]
    assert words[3:6] == ["-m", "mtpeft_bench", "run"] and words[-1] == "--resume"
    assert ["--method", "full"] == words[6:8] and "--seed" in words and "data.num_train=8" in words

    code, out, err = run_cli(["compare", "--results", str(out_dir)], capsys)
    assert code == 0, err
    rows = [line for line in out.splitlines() if line.startswith("| full") or line.startswith("| decoder_only")]
    assert len(rows) == 2 and all("| 0,1 " in row for row in rows)


def test_sweep_resumes_an_interrupted_run_and_survives_a_failing_one(capsys, tmp_path, monkeypatch):
    out_dir = tmp_path / "results"
    grid = [*GRID[:2], "full", *GRID[3:6], "0", *GRID[7:], "--epochs", "2", "--out", str(out_dir)]

    # A Ctrl-C in the first run's second epoch: the sweep stops after the run saved its checkpoint.
    original = Trainer.train_step

    def interrupt_once(self, images, targets):
        if self.step == 2 and not getattr(interrupt_once, "fired", False):
            interrupt_once.fired = True
            os.kill(os.getpid(), signal.SIGINT)
        return original(self, images, targets)

    monkeypatch.setattr(Trainer, "train_step", interrupt_once)
    code, _, err = run_cli(grid, capsys)
    assert code == 130 and "cancelled" in err
    cancelled = [p.name for p in (tmp_path / "runs").iterdir()]
    assert len(cancelled) == 1 and not list(out_dir.rglob("*.json"))
    monkeypatch.undo()
    torch.set_num_threads(1)

    # Next pass, with a second seed whose loss diverges: the first run resumes, the second fails and is
    # reported, the sweep finishes and exits 1.
    import mtpeft_bench.running.pipeline as runner
    import mtpeft_bench.train.trainer as engine

    current = {}
    original_seeding, original_losses = runner.seed_everything, engine.compute_losses

    def remember_seed(seed, deterministic=False):
        current["seed"] = seed
        original_seeding(seed, deterministic)

    def nan_for_seed_1(outputs, targets, specs):
        total, per_task = original_losses(outputs, targets, specs)
        if current["seed"] == 1:
            per_task["semseg"] = per_task["semseg"] * float("nan")
            total = total * float("nan")
        return total, per_task

    monkeypatch.setattr(runner, "seed_everything", remember_seed)
    monkeypatch.setattr(engine, "compute_losses", nan_for_seed_1)
    grid[grid.index("0")] = "0,1"
    code, _, err = run_cli(grid, capsys)
    assert code == 1
    assert "1 to resume, 1 to start" in err
    assert f"resume {cancelled[0]} at epoch 2, step 1" in err
    assert "synth/full/seed 1 failed: the loss became non-finite" in err and "task semseg" in err
    assert "1 of 2 runs failed" in err
    records = [json.loads(p.read_text()) for p in out_dir.rglob("*.json")]
    assert [(r["run_id"], r["seed"], r["execution"]["sessions"]) for r in records] == [(cancelled[0], 0, 2)]
