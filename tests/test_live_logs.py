"""Live logs: metrics.jsonl written step by step (and plotted while the run trains), its numbers
those of the run's record, continued without duplicates after a resume; TensorBoard and wandb
(offline) through their libraries; missing libraries and unknown loggers refused in one line."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import torch

from helpers import one_error_line, run_cli
from mtpeft_bench.train.logging_sinks import METRICS_NAME, LiveLog, MetricsFile

TINY = ["run", "--method", "full", "--preset", "smoke", "--tasks", "semseg,depth", "--set", "data.num_train=8",
        "--set", "data.num_val=4", "--batch-size", "4", "--epochs", "2", "--no-progress", "--set", "eval_every=1",
        "--set", "measure_repeats=0", "--set", "deterministic=true"]
STEPS_PER_EPOCH = 2  # 8 training images, batch 4


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def only_folder(runs: Path) -> Path:
    [folder] = [p for p in runs.iterdir() if p.is_dir()]
    return folder


def record_of(out: Path) -> dict:
    [path] = out.rglob("*.json")
    return json.loads(path.read_text())


def test_a_run_logs_every_step_and_evaluation_as_it_trains(tmp_path, capsys, monkeypatch, one_thread):
    from mtpeft_bench.report.curves import plot_curves, read_metrics

    seen_while_running = {}
    original = LiveLog.train_step

    def watching(self, info, elapsed_s):
        original(self, info, elapsed_s)
        if info["step"] == 3:  # the run is still training: its log is complete up to here and can be plotted
            metrics_file = self.sinks[0].path
            seen_while_running["lines"] = [(e["kind"], e["step"]) for e in lines(metrics_file)]
            seen_while_running["figure"] = plot_curves(metrics_file.parent, tmp_path / "figs")

    monkeypatch.setattr(LiveLog, "train_step", watching)
    out = tmp_path / "results"
    code, _, err = run_cli([*TINY, "--out", str(out), "--logger", "tensorboard"], capsys)
    assert code == 0, err
    folder = only_folder(tmp_path / "runs")
    entries = lines(folder / METRICS_NAME)
    train = [e for e in entries if e["kind"] == "train"]
    evals = [e for e in entries if e["kind"] == "eval"]
    assert [e["step"] for e in train] == list(range(1, 2 * STEPS_PER_EPOCH + 1))
    assert [e["epoch"] for e in train] == [1, 1, 2, 2]
    assert seen_while_running["lines"] == [("train", 1), ("train", 2), ("eval", 2), ("train", 3)]
    assert seen_while_running["figure"].stat().st_size > 0
    # an evaluation after epoch 1 (eval_every=1) and the final one
    assert [(e["step"], e["epoch"], e["final"]) for e in evals] == [(2, 1, False), (4, 2, True)]
    assert evals[0]["primary"] == {"semseg": "mIoU", "depth": "rmse"}

    record = record_of(out)
    assert evals[-1]["metrics"].keys() == record["metrics"].keys()
    for task, metrics in record["metrics"].items():
        assert evals[-1]["metrics"][task] == pytest.approx(metrics)
    # each epoch's loss in the record is the mean of its logged steps' losses
    for entry in record["history"]:
        steps = [e for e in train if e["epoch"] == entry["epoch"]]
        assert entry["loss"] == pytest.approx(sum(e["loss"] for e in steps) / len(steps), rel=1e-6)
        for task, value in entry["task_losses"].items():
            assert value == pytest.approx(sum(e["task_losses"][task] for e in steps) / len(steps), rel=1e-6)
    assert all(a["elapsed_s"] <= b["elapsed_s"] for a, b in zip(entries, entries[1:]))

    # TensorBoard got the same numbers, read back with its own reader
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder / "tensorboard"))
    events.Reload()
    losses = events.Scalars("train/loss")
    assert [s.step for s in losses] == [e["step"] for e in train]
    assert [s.value for s in losses] == pytest.approx([e["loss"] for e in train], rel=1e-6)
    assert "val/depth/rmse" in events.Tags()["scalars"] and "train/loss/semseg" in events.Tags()["scalars"]

    # the curves of the finished run, through the command line
    code, printed, err = run_cli(["plot", "--curves", str(folder), "--out", str(tmp_path / "figs")], capsys)
    assert code == 0, err
    assert Path(printed.split("wrote ")[1].strip()).stat().st_size > 0
    steps_frame, eval_frame = read_metrics(folder / METRICS_NAME)
    assert len(steps_frame) == 4 and set(eval_frame["task"]) == {"semseg", "depth"}


def test_a_resumed_run_continues_its_log_without_repeating_steps(tmp_path, capsys, monkeypatch, one_thread):
    from mtpeft_bench.train.trainer import Trainer

    original = Trainer.train_step

    def interrupt_before_step_3(self, images, targets):
        if self.step == 2 and not getattr(self, "_fired", False):
            self._fired = True
            os.kill(os.getpid(), signal.SIGINT)  # the run stops after this step, with a checkpoint of it
        return original(self, images, targets)

    monkeypatch.setattr(Trainer, "train_step", interrupt_before_step_3)
    out = tmp_path / "results"
    code, _, err = run_cli([*TINY, "--out", str(out)], capsys)
    assert code == 130, err
    monkeypatch.undo()
    torch.set_num_threads(1)
    folder = only_folder(tmp_path / "runs")
    logged = lines(folder / METRICS_NAME)
    assert [e["step"] for e in logged if e["kind"] == "train"] == [1, 2, 3]
    # as if the process had been killed after the checkpoint: a later step and a half-written line
    with open(folder / METRICS_NAME, "a") as handle:
        handle.write(json.dumps({"kind": "train", "step": 4, "epoch": 2, "loss": 9.0}) + "\n")
        handle.write('{"kind": "train", "st')

    code, _, err = run_cli([*TINY, "--out", str(out), "--resume"], capsys)
    assert code == 0, err
    entries = lines(folder / METRICS_NAME)
    train_steps = [e["step"] for e in entries if e["kind"] == "train"]
    assert train_steps == [1, 2, 3, 4]
    assert [e for e in entries if e["kind"] == "train"][3]["loss"] != 9.0
    assert [e["step"] for e in entries if e["kind"] == "eval"] == [2, 4]


def test_metrics_file_keeps_only_steps_up_to_the_resumed_one(tmp_path):
    path = tmp_path / METRICS_NAME
    old = [{"kind": "train", "step": s} for s in range(1, 7)] + [{"kind": "eval", "step": 4, "final": False}]
    path.write_text("".join(json.dumps(e) + "\n" for e in old) + '{"kind": "tra')
    log = MetricsFile(path, resume_step=4)
    log.write({"kind": "train", "step": 5, "loss": float("nan")})
    log.close()
    entries = lines(path)
    assert [(e["kind"], e["step"]) for e in entries] == [("train", 1), ("train", 2), ("train", 3), ("train", 4),
                                                         ("eval", 4), ("train", 5)]
    assert entries[-1]["loss"] is None  # NaN is not JSON
    MetricsFile(path).close()  # a new run starts the file afresh
    assert path.read_text() == ""


def test_wandb_offline_receives_the_same_numbers(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    log = LiveLog(tmp_path, "run-abc", {"method": "full"}, ["wandb"], None, {"depth": "rmse"})
    log.train_step({"step": 1, "epoch": 1, "loss": 2.5, "task_losses": {"depth": 2.5}, "lr": 1e-3}, 0.1)
    log.evaluation(1, 1, {"depth": {"rmse": 0.75}}, 0.2, final=True)
    run = log.sinks[1].run
    run_dir = Path(run.dir).parent
    assert run.id == "run-abc" and run.config["method"] == "full"
    log.close()
    assert run_dir.is_relative_to(tmp_path) and "offline-run" in run_dir.name
    # the offline log (protocol buffers; this wandb ships no reader for it) holds the keys and values
    [history] = run_dir.glob("*.wandb")
    data = history.read_bytes()
    assert b"train/loss" in data and b"2.5" in data and b"val/depth/rmse" in data and b"0.75" in data
    assert lines(tmp_path / METRICS_NAME)[0]["loss"] == 2.5


def test_a_missing_logger_library_is_one_line(tmp_path, capsys, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    code, _, err = run_cli([*TINY, "--out", str(tmp_path / "r"), "--logger", "wandb"], capsys)
    line = one_error_line(err)
    assert code == 2 and "pip install 'mtpeft-bench[wandb]'" in line
    assert not (tmp_path / "runs").exists()


def test_an_unknown_logger_gets_a_did_you_mean(tmp_path, capsys):
    code, _, err = run_cli([*TINY, "--out", str(tmp_path / "r"), "--logger", "tensorbord"], capsys)
    line = one_error_line(err)
    assert code == 2 and "did you mean 'tensorboard'?" in line


def test_plot_curves_of_a_run_without_a_log_is_one_line(tmp_path, capsys):
    code, _, err = run_cli(["plot", "--curves", str(tmp_path), "--out", str(tmp_path / "figs")], capsys)
    assert code == 2 and "no metrics.jsonl" in one_error_line(err)
