"""Checkpoints and resuming: exact round trips, atomic writes, no unpickling, finding the run to
resume, and (slow) a run killed with SIGKILL that resumes to the metrics of an uninterrupted run."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from mtpeft_bench.errors import UserError
from mtpeft_bench.running.folders import RunDir, find_run_to_resume, new_run_state
from mtpeft_bench.train.checkpoint import (
    capture_rng,
    load_checkpoint,
    restore_model,
    restore_optimization,
    restore_rng,
    save_checkpoint,
)
from helpers import PicklePayload


def small_training_state(seed: int):
    from mtpeft_bench.train import Schedule, make_optimizer

    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.BatchNorm2d(4), torch.nn.Conv2d(4, 2, 1))
    model[2].weight = torch.nn.Parameter(model[2].weight.detach().clone())
    optimizer, scheduler = make_optimizer(model, Schedule(1e-2, 1e-4, 1e-5, 10, 2), 0.05)
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    return model, optimizer, scheduler, scaler


def train(model, optimizer, scheduler, steps, start):
    for step in range(start, start + steps):
        x = torch.rand(2, 3, 5, 5)  # global RNG: checks that its state is restored too
        loss = model(x).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step_update(step + 1)


def test_checkpoint_round_trip_continues_exactly(tmp_path):
    model, optimizer, scheduler, scaler = small_training_state(0)
    train(model, optimizer, scheduler, 3, 0)
    path = save_checkpoint(tmp_path / "last.safetensors", model=model, optimizer=optimizer, scheduler=scheduler,
                           scaler=scaler, rng_states=[capture_rng()], meta={"epoch": 2, "step_in_epoch": 1})
    train(model, optimizer, scheduler, 3, 3)  # the uninterrupted continuation
    expected = {k: v.clone() for k, v in model.state_dict().items()}

    np.random.seed(123)  # disturb every generator
    torch.manual_seed(123)
    other, other_opt, other_sched, other_scaler = small_training_state(7)
    checkpoint = load_checkpoint(path)
    assert (checkpoint.epoch, checkpoint.step_in_epoch) == (2, 1)
    restore_model(checkpoint, other)
    restore_optimization(checkpoint, optimizer=other_opt, scheduler=other_sched, scaler=other_scaler)
    restore_rng(checkpoint.rng(0))
    train(other, other_opt, other_sched, 3, 3)
    for key, value in other.state_dict().items():
        assert torch.equal(value, expected[key]), key
    assert other_opt.param_groups[0]["lr"] == optimizer.param_groups[0]["lr"]
    assert checkpoint.rng(1) is None


def test_rng_states_of_every_library_round_trip(tmp_path):
    import random

    model, optimizer, scheduler, scaler = small_training_state(0)
    random.seed(5)
    np.random.seed(5)
    torch.manual_seed(5)
    path = save_checkpoint(tmp_path / "c.safetensors", model=model, optimizer=optimizer, scheduler=scheduler,
                           scaler=scaler, rng_states=[capture_rng(), capture_rng()], meta={"epoch": 1})
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    random.seed(9)
    np.random.seed(9)
    torch.manual_seed(9)
    restore_rng(load_checkpoint(path).rng(1))
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    model, optimizer, scheduler, scaler = small_training_state(0)
    path = tmp_path / "last.safetensors"
    save_checkpoint(path, model=model, optimizer=optimizer, scheduler=scheduler, scaler=scaler,
                    rng_states=[capture_rng()], meta={"epoch": 1})
    before = path.read_bytes()

    def torn(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr("safetensors.torch.save_file", torn)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, model=model, optimizer=optimizer, scheduler=scheduler, scaler=scaler,
                        rng_states=[capture_rng()], meta={"epoch": 2})
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.safetensors"]
    assert load_checkpoint(path).epoch == 1


def test_malicious_pickle_checkpoint_is_refused(tmp_path, capsys):
    path = tmp_path / "runs" / "evil" / "last.safetensors"
    path.parent.mkdir(parents=True)
    with open(path, "wb") as handle:
        pickle.dump({"model": PicklePayload()}, handle)
    with pytest.raises(UserError, match="never unpickles"):
        load_checkpoint(path)
    assert not PicklePayload.executed
    torch.save({"model": PicklePayload()}, path)  # a torch zip file is refused the same way
    with pytest.raises(UserError, match="not a safetensors file"):
        load_checkpoint(path)
    assert not PicklePayload.executed

    # Through the command line: a run folder whose checkpoint is a pickle.
    from mtpeft_bench.cli import main

    args = ["run", "--method", "full", "--preset", "smoke", "--tasks", "semseg", "--set", "data.num_train=8",
            "--set", "data.num_val=4", "--batch-size", "4", "--epochs", "1", "--no-progress",
            "--out", str(tmp_path / "results")]
    from mtpeft_bench.config import parse_sets, resolve
    from mtpeft_bench.running.setup import prepare, run_hash

    cfg = resolve("smoke", {"method": "full", "tasks": ("semseg",), "batch_size": 4, "epochs": 1, "progress": False,
                            "out": str(tmp_path / "results")}, parse_sets(["data.num_train=8", "data.num_val=4"]))
    state = new_run_state("evil", cfg.to_dict(), run_hash(cfg, prepare(cfg)), 1)
    RunDir(path.parent, {**state, "status": "cancelled"}).update()
    with pytest.raises(SystemExit) as info:
        main([*args, "--resume", "evil"])
    assert info.value.code == 2
    assert "not a safetensors file" in capsys.readouterr().err
    assert not PicklePayload.executed


class _FakeWorld:
    """The collectives of rank ``rank`` in a world of 2, with rank 1's contribution given."""

    def __init__(self, rank, other=None):
        self.rank, self.world_size, self.other = rank, 2, other

    is_main = property(lambda self: self.rank == 0)
    distributed = True

    def gather(self, obj):
        return [obj, self.other] if self.rank == 0 else None

    def barrier(self):
        pass

    def broadcast(self, obj):
        return obj


def test_each_process_resumes_its_own_partial_epoch_and_rng(tmp_path):
    from types import SimpleNamespace

    from mtpeft_bench.running.session import RunSession

    model, optimizer, scheduler, scaler = small_training_state(0)
    trainer = SimpleNamespace(optimizer=optimizer, scheduler=scheduler, scaler=scaler, step=5)
    torch.manual_seed(1)
    rank1_rng = capture_rng()
    expected_rank1 = torch.rand(3)
    partial = {0: {"sums": {"total": 3.0}, "steps": 3}, 1: {"sums": {"total": 4.5}, "steps": 3}}
    run = RunDir(tmp_path / "r", new_run_state("r", {"seed": 0}, "h", 2))
    run.path.mkdir()
    torch.manual_seed(0)
    RunSession(_FakeWorld(0, (rank1_rng, partial[1])), run, None, torch.device("cpu")).save(
        model=model, trainer=trainer, epoch=2, step_in_epoch=3, partial=partial[0], history=[], elapsed_s=1.0)
    expected_rank0 = torch.rand(3)

    checkpoint = load_checkpoint(run.checkpoint_path)
    for rank, expected in ((0, expected_rank0), (1, expected_rank1)):
        session = RunSession(_FakeWorld(rank), run, checkpoint, torch.device("cpu"))
        assert session.partial == partial[rank] and (session.start_epoch, session.step_in_epoch) == (2, 3)
        torch.manual_seed(99)
        session.restore_training(trainer)
        assert torch.equal(torch.rand(3), expected), rank
        assert trainer.step == 5


def fake_run(root, run_id, config_hash, status, checkpoint=True, started="2026-01-01T00:00:00", pid=None):
    folder = root / run_id
    folder.mkdir(parents=True)
    state = {**new_run_state(run_id, {}, config_hash, 1), "status": status, "started": started}
    if pid is not None:
        state["pid"] = pid
    else:
        state["host"] = "elsewhere"
    (folder / "run.json").write_text(json.dumps(state))
    if checkpoint:
        (folder / "last.safetensors").write_bytes(b"x")
    return folder


def test_find_run_to_resume_takes_the_newest_resumable_run_of_the_configuration(tmp_path):
    root = tmp_path / "runs"
    assert find_run_to_resume(root, "h") is None
    fake_run(root, "old", "h", "cancelled", started="2026-01-01T00:00:00")
    fake_run(root, "newer", "h", "failed", started="2026-01-02T00:00:00")
    fake_run(root, "other-config", "g", "cancelled", started="2026-01-03T00:00:00")
    fake_run(root, "done", "h", "completed", started="2026-01-04T00:00:00")
    fake_run(root, "no-checkpoint", "h", "cancelled", checkpoint=False, started="2026-01-05T00:00:00")
    assert find_run_to_resume(root, "h").run_id == "newer"
    # A 'running' run whose process is alive on this host is left alone; a dead one (SIGKILL) is resumed.
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        fake_run(root, "live", "h", "running", started="2026-01-06T00:00:00", pid=live.pid)
        assert find_run_to_resume(root, "h").run_id == "newer"
    finally:
        live.kill()
        live.wait()
    assert find_run_to_resume(root, "h").run_id == "live"


def resolved_dict(**options):
    """The configuration as the runner stores it in run.json."""
    from mtpeft_bench.config import resolve
    from mtpeft_bench.running.setup import prepare

    cfg = resolve("smoke", options, {})
    resolved = prepare(cfg)
    return {**cfg.to_dict(), "image_size": list(resolved.image_size), "tasks": [t.name for t in resolved.task_specs]}


def test_resume_by_id_refuses_another_configuration(tmp_path, capsys):
    from mtpeft_bench.cli import main

    out = tmp_path / "results"
    fake_run(tmp_path / "runs", "r1", "not-this-hash", "cancelled")
    state = json.loads((tmp_path / "runs" / "r1" / "run.json").read_text())
    state["config"] = resolved_dict(method="full", epochs=3, out="elsewhere", tag="t")
    (tmp_path / "runs" / "r1" / "run.json").write_text(json.dumps(state))
    base = ["run", "--method", "full", "--preset", "smoke", "--epochs", "2", "--out", str(out)]
    for resume, message in (("r1", "another configuration (epochs: 3 → 2)"), ("nope", "no run 'nope'")):
        with pytest.raises(SystemExit) as info:
            main([*base, "--resume", resume])
        err = capsys.readouterr().err
        assert info.value.code == 2 and message in err, err


def _run_command(out: Path, runs: Path) -> list[str]:
    return [sys.executable, "-m", "mtpeft_bench", "run", "--method", "full", "--preset", "smoke", "--tasks",
            "semseg,depth", "--set", "data.num_train=16", "--set", "data.num_val=4", "--batch-size", "4",
            "--epochs", "3", "--no-progress", "--set", "deterministic=true", "--out", str(out),
            "--set", f"runs_dir={runs}"]


@pytest.mark.slow
def test_sigkill_mid_run_then_resume_equals_uninterrupted(tmp_path):
    """Kill -9 after the first checkpoint, resume: the final metrics (and the per-epoch losses) equal
    those of an uninterrupted run with the same seed (CPU, deterministic, no data-loader workers)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    subprocess.run(_run_command(tmp_path / "ref", tmp_path / "ref-runs"), env=env, check=True,
                   capture_output=True, timeout=600)
    reference = json.loads(next((tmp_path / "ref").rglob("*.json")).read_text())

    out, runs = tmp_path / "results", tmp_path / "runs"
    proc = subprocess.Popen(_run_command(out, runs), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while not list(runs.glob("*/last.safetensors")):
        assert proc.poll() is None and time.time() < deadline, "the run ended before writing a checkpoint"
        time.sleep(0.05)
    proc.kill()  # SIGKILL: no handler runs, nothing is cleaned up
    proc.wait()
    assert proc.returncode == -9
    assert not list(out.rglob("*.json")), "the run finished before it was killed; the test proves nothing"
    folder = next(runs.iterdir())
    state = json.loads((folder / "run.json").read_text())
    assert state["status"] == "running" and state["epoch"] in (2, 3)

    done = subprocess.run([*_run_command(out, runs), "--resume"], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert f"resuming run {folder.name}" in done.stderr
    resumed = json.loads(next(out.rglob("*.json")).read_text())
    assert resumed["run_id"] == folder.name and resumed["execution"]["sessions"] == 2
    assert resumed["metrics"] == reference["metrics"]
    assert [h["loss"] for h in resumed["history"]] == [h["loss"] for h in reference["history"]]
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]
