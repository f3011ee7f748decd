"""How runs end when they do not complete: a non-finite loss, CUDA out-of-memory, an unwritable
folder, Ctrl-C (graceful, then a resume that equals an uninterrupted run) and a second Ctrl-C.
Nothing half-written may be left behind."""

from __future__ import annotations

import json
import os
import signal

import pytest
import torch

from helpers import run_cli
from mtpeft_bench.train import Trainer


TINY = ["run", "--method", "full", "--preset", "smoke", "--tasks", "semseg,depth", "--set", "data.num_train=8",
        "--set", "data.num_val=4", "--batch-size", "4", "--epochs", "3", "--no-progress", "--set", "deterministic=true"]


pytestmark = pytest.mark.usefixtures("one_thread")



def only_run(runs_dir):
    folders = [p for p in runs_dir.iterdir() if p.is_dir()]
    assert len(folders) == 1, folders
    return folders[0], json.loads((folders[0] / "run.json").read_text())


def leftovers(*folders):
    """Temporary files (atomic writes in progress) anywhere below ``folders``."""
    return [p for folder in folders if folder.exists() for p in folder.rglob("*") if p.name.endswith(".tmp")]


def call_at_step(monkeypatch, step, action):
    """Run ``action(trainer)`` once, just before the optimisation step number ``step`` (0-based)."""
    original = Trainer.train_step

    def patched(self, images, targets):
        if self.step == step and not getattr(self, "_fired", False):
            self._fired = True
            action(self)
        return original(self, images, targets)

    monkeypatch.setattr(Trainer, "train_step", patched)


def test_nan_loss_stops_naming_the_task_and_keeps_the_last_checkpoint(capsys, tmp_path, monkeypatch):
    import mtpeft_bench.train.trainer as engine

    original = engine.compute_losses
    state = {"calls": 0}

    def poisoned(outputs, targets, specs):
        total, per_task = original(outputs, targets, specs)
        state["calls"] += 1
        if state["calls"] == 3:  # step 2 = first step of epoch 2 (2 steps per epoch)
            per_task["depth"] = per_task["depth"] * float("nan")
            total = sum(per_task.values())
        return total, per_task

    monkeypatch.setattr(engine, "compute_losses", poisoned)
    out_dir, runs_dir = tmp_path / "results", tmp_path / "runs"
    code, out, err = run_cli([*TINY, "--out", str(out_dir)], capsys)
    assert code == 1
    lines = [line for line in err.splitlines() if line.startswith("mtbench: error:")]
    assert len(lines) == 1 and "Traceback" not in err
    assert "task depth" in lines[0] and "non-finite" in lines[0] and "semseg" not in lines[0]
    assert "last checkpoint is kept" in lines[0]
    folder, run_state = only_run(runs_dir)
    assert run_state["status"] == "failed" and "depth" in run_state["message"]
    # The checkpoint is the last good one: written at the end of epoch 1, before the bad step.
    from mtpeft_bench.train.checkpoint import load_checkpoint

    checkpoint = load_checkpoint(folder / "last.safetensors")
    assert (checkpoint.epoch, checkpoint.step_in_epoch) == (2, 0)
    assert all(torch.isfinite(t).all() for k, t in checkpoint.tensors.items() if k.startswith("model/")
               and t.is_floating_point())
    assert not list(out_dir.rglob("*.json")), "a failed run must not write a result"
    assert not leftovers(out_dir, runs_dir)


def test_cuda_out_of_memory_gets_concrete_advice(capsys, tmp_path, monkeypatch):
    def explode(trainer):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    call_at_step(monkeypatch, 1, explode)
    code, _, err = run_cli([*TINY, "--out", str(tmp_path / "results")], capsys)
    assert code == 1
    line = next(line for line in err.splitlines() if line.startswith("mtbench: error:"))
    assert "ran out of memory during training" in line
    assert "--batch-size 2" in line and "amp=true" in line and "image_size=48,48" in line
    _, run_state = only_run(tmp_path / "runs")
    assert run_state["status"] == "failed" and "--batch-size 2" in run_state["message"]
    assert not list((tmp_path / "results").rglob("*.json"))


def test_unwritable_runs_folder_is_reported_before_training(capsys, tmp_path, monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("the model must not be built when checkpoints cannot be written")

    monkeypatch.setattr("mtpeft_bench.model.backbone.create_backbone", never)
    blocker = tmp_path / "file"
    blocker.write_text("")
    code, _, err = run_cli([*TINY, "--out", str(tmp_path / "results"), "--set", f"runs_dir={blocker / 'runs'}"], capsys)
    assert code == 2
    assert "cannot write checkpoints" in err and "runs_dir" in err


def record_of(out_dir):
    files = list(out_dir.rglob("*.json"))
    assert len(files) == 1, files
    return json.loads(files[0].read_text())


def test_ctrl_c_saves_a_checkpoint_marks_cancelled_and_resume_equals_uninterrupted(capsys, tmp_path, monkeypatch):
    args = [*TINY[:TINY.index("--batch-size")], "--batch-size", "2", *TINY[TINY.index("--batch-size") + 2:]]
    # Uninterrupted reference (3 epochs of 4 steps).
    code, _, err = run_cli([*args, "--out", str(tmp_path / "ref" / "results")], capsys)
    assert code == 0, err
    reference = record_of(tmp_path / "ref" / "results")

    # Ctrl-C in the middle of epoch 2 (just before step 6 of 12, its third): the run stops after that step.
    call_at_step(monkeypatch, 6, lambda trainer: os.kill(os.getpid(), signal.SIGINT))
    out_dir = tmp_path / "results"
    code, _, err = run_cli([*args, "--out", str(out_dir)], capsys)
    assert code == 130
    assert "SIGINT received" in err and "--resume" in err
    folder, run_state = only_run(tmp_path / "runs")
    assert run_state["status"] == "cancelled"
    assert (run_state["epoch"], run_state["step_in_epoch"]) == (2, 3)
    assert not list(out_dir.rglob("*.json")), "a cancelled run is not a result"
    assert not leftovers(out_dir, tmp_path / "runs")
    monkeypatch.undo()
    torch.set_num_threads(1)

    code, out, err = run_cli([*args, "--out", str(out_dir), "--resume"], capsys)
    assert code == 0, err
    assert f"resuming run {folder.name} at epoch 2, step 3" in err
    resumed = record_of(out_dir)
    assert resumed["run_id"] == folder.name
    assert resumed["execution"]["sessions"] == 2 and resumed["execution"]["resumed_from"] == [2, 3]
    # Bit-for-bit the uninterrupted run: same metrics and the same per-epoch losses.
    assert resumed["metrics"] == reference["metrics"]
    assert [h["loss"] for h in resumed["history"]] == [h["loss"] for h in reference["history"]]
    assert [h["steps"] for h in resumed["history"]] == [4, 4, 4]
    assert json.loads((folder / "run.json").read_text())["status"] == "completed"

    # Continuing a configuration that completed does nothing.
    code, out, err = run_cli([*args, "--out", str(out_dir), "--resume"], capsys)
    assert code == 0 and "already completed" in err
    assert len(list(out_dir.rglob("*.json"))) == 1


def test_signal_handler_grace_then_hard_interrupt(monkeypatch):
    from mtpeft_bench.train.failures import StopOnSignal

    clock = {"now": 100.0}
    monkeypatch.setattr("mtpeft_bench.train.failures.time.monotonic", lambda: clock["now"])
    stop = StopOnSignal(grace_s=3.0, announce=False)
    with stop:
        assert signal.getsignal(signal.SIGINT) == stop._handle
        assert signal.getsignal(signal.SIGTERM) == stop._handle
        stop._handle(signal.SIGTERM, None)
        assert stop.requested and stop.signal_name == "SIGTERM"
        clock["now"] += 1.0
        stop._handle(signal.SIGINT, None)  # e.g. torchrun forwarding the terminal's signal: ignored
        clock["now"] += 3.0
        with pytest.raises(KeyboardInterrupt):
            stop._handle(signal.SIGINT, None)
    assert signal.getsignal(signal.SIGINT) is not stop._handle


def test_second_ctrl_c_interrupts_at_once_keeping_the_periodic_checkpoint(capsys, tmp_path, monkeypatch):
    def hard(trainer):
        raise KeyboardInterrupt

    call_at_step(monkeypatch, 3, hard)
    code, _, err = run_cli([*TINY, "--out", str(tmp_path / "results")], capsys)
    assert code == 130 and "interrupted" in err
    folder, run_state = only_run(tmp_path / "runs")
    assert run_state["status"] == "cancelled"
    from mtpeft_bench.train.checkpoint import load_checkpoint

    assert load_checkpoint(folder / "last.safetensors").epoch == 2  # the end of epoch 1
    assert not leftovers(tmp_path)
