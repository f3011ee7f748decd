"""Run folders: where an unfinished run lives until it completes.

A run folder ``<runs_dir>/<run_id>/`` (``runs_dir`` defaults to ``runs/`` beside the results
folder, i.e. ``<out>/../runs``; git-ignored) holds:

- ``run.json``: the run's state, rewritten atomically: ``status`` (``running``, ``cancelled``,
  ``failed``, ``completed``), ``message``, ``config_hash``, the resolved ``config``, ``world_size``,
  where training stands (``epoch``, ``step_in_epoch``), the process that owns it (``host``, ``pid``)
  and, once completed, the path of the result record. Cancelled and failed runs live only here,
  never in the results folder (``mtbench compare`` shows completed runs only).
- ``last.safetensors``: the latest checkpoint (train/checkpoint.py).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from mtpeft_bench.atomic import write_json_atomic


CHECKPOINT_NAME = "last.safetensors"
STATE_NAME = "run.json"
UNFINISHED = ("running", "cancelled", "failed")


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


@dataclass
class RunDir:
    """One run's folder: its state file and its checkpoint."""

    path: Path
    state: dict[str, Any] = field(default_factory=dict)

    @property
    def run_id(self) -> str:
        return self.path.name

    @property
    def checkpoint_path(self) -> Path:
        return self.path / CHECKPOINT_NAME

    def has_checkpoint(self) -> bool:
        return self.checkpoint_path.is_file()

    def update(self, **fields: Any) -> None:
        """Merge ``fields`` into ``run.json`` and rewrite it atomically."""
        self.state.update(fields, updated=_now())
        write_json_atomic(self.path / STATE_NAME, self.state)

    def clean_temporaries(self) -> None:
        """Remove temporary files a killed process left (they never carry a final name)."""
        for tmp in self.path.glob(".*.tmp"):
            try:
                tmp.unlink()
            except OSError:
                pass


def runs_root(cfg: Any) -> Path:
    """Where run folders go: ``cfg.runs_dir``, else ``runs/`` beside the results folder."""
    if getattr(cfg, "runs_dir", None):
        return Path(cfg.runs_dir).expanduser()
    out = Path(cfg.out).expanduser()
    return out.absolute().parent / "runs"


def read_run(path: Path) -> RunDir | None:
    try:
        state = json.loads((path / STATE_NAME).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    return RunDir(path, state) if isinstance(state, dict) else None


def list_runs(root: Path) -> list[RunDir]:
    """Every run folder under ``root`` (newest first)."""
    if not root.is_dir():
        return []
    runs = [r for r in (read_run(p) for p in root.iterdir() if p.is_dir()) if r is not None]
    return sorted(runs, key=lambda r: (r.state.get("started", ""), r.run_id), reverse=True)


def _alive_here(state: Mapping[str, Any]) -> bool:
    """Is the process that owns a ``running`` run still alive on this host?"""
    if state.get("host") != socket.gethostname() or not state.get("pid"):
        return False
    if int(state["pid"]) == os.getpid():
        return False
    try:
        os.kill(int(state["pid"]), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def resumable(run: RunDir) -> str | None:
    """Why ``run`` cannot be resumed now, or None if it can."""
    status = run.state.get("status")
    if status == "completed":
        return f"run {run.run_id} already completed (result: {run.state.get('result')})"
    if status == "running" and _alive_here(run.state):
        return f"run {run.run_id} is still running (pid {run.state.get('pid')} on this host)"
    if not run.has_checkpoint():
        return f"run {run.run_id} has no checkpoint to resume from"
    return None


def find_run_to_resume(root: Path, config_hash: str) -> RunDir | None:
    """The newest unfinished run with ``config_hash`` that has a checkpoint and no live owner."""
    for run in list_runs(root):
        if run.state.get("config_hash") == config_hash and run.state.get("status") in UNFINISHED:
            if resumable(run) is None:
                return run
    return None


def config_difference(old: Mapping[str, Any], new: Mapping[str, Any], ignore: Iterable[str] = ()) -> list[str]:
    """Keys whose values differ between two resolved configurations (for error messages)."""
    skip = set(ignore)
    keys = sorted((set(old) | set(new)) - skip)
    return [f"{k}: {old.get(k)!r} → {new.get(k)!r}" for k in keys if old.get(k) != new.get(k)]


def new_run_state(run_id: str, cfg_dict: Mapping[str, Any], config_hash: str, world_size: int) -> dict[str, Any]:
    return {"run_id": run_id, "status": "running", "message": "", "config_hash": config_hash,
            "world_size": world_size, "config": dict(cfg_dict), "started": _now(), "host": socket.gethostname(),
            "pid": os.getpid(), "epoch": 1, "step_in_epoch": 0, "sessions": 1}
