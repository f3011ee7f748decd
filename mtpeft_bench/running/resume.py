"""Done, resume or new: the one decision about a configuration, made the same way for a single run
(``mtbench run --resume``, ``run(cfg, resume=...)``) and for every point of a sweep.

A configuration is known by its ``config_hash`` (running/setup.py ``run_hash``; the settings of
``config.NOT_IDENTITY`` are not part of it). With ``resume=True``:

- **done**: a completed result record with that hash is in the results folder (the newest one);
- **resume**: else the newest unfinished run folder with that hash under the runs folder that can
  be resumed (a checkpoint, and no live process owning it);
- **new**: else.

``resume="<run_id>"`` asks for exactly that run folder (it must exist, be resumable and have the
same hash); ``resume=None`` always means new. The decision writes no file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from mtpeft_bench.config import NOT_IDENTITY
from mtpeft_bench.errors import UserError
from mtpeft_bench.running.folders import RunDir, config_difference, find_run_to_resume, read_run, resumable


@dataclass
class Decision:
    """What to do with one configuration.

    Attributes:
        kind: ``done``, ``resume`` or ``new``.
        record: the completed result record (``done``).
        run: the run folder to continue (``resume``).
    """

    kind: str
    record: dict[str, Any] | None = None
    run: RunDir | None = None

    @property
    def detail(self) -> str:
        """The run id of a done configuration; the run id and where it stands of one to resume; else ''."""
        if self.kind == "done" and self.record is not None:
            return self.record.get("run_id", "")
        if self.kind == "resume" and self.run is not None:
            return (f"{self.run.run_id} at epoch {self.run.state.get('epoch')}, "
                    f"step {self.run.state.get('step_in_epoch')}")
        return ""


def read_results(out: Path) -> list[dict[str, Any]]:
    """Every result record under the results folder ``out`` (none if it does not exist yet)."""
    from mtpeft_bench.results import read_records

    out = Path(out)
    return read_records(out) if out.is_dir() else []


def newest_completed(records: Sequence[Mapping[str, Any]], config_hash: str) -> dict[str, Any] | None:
    """The newest completed record with ``config_hash`` among ``records``, or None."""
    found = [r for r in records if r.get("status") == "completed" and r.get("config_hash") == config_hash]
    return dict(max(found, key=lambda r: r.get("created", ""))) if found else None


def decide(config_hash: str, out: Path, runs: Path, resume: bool | str | None = True, *,
           stored_config: Mapping[str, Any] | None = None, world_size: int = 1,
           records: Sequence[Mapping[str, Any]] | None = None) -> Decision:
    """Decide what a configuration needs (see the module docstring).

    Args:
        out, runs: the results folder and the run folders' root.
        stored_config: the configuration as run folders store it (names the differences when a run
            asked for by id has another hash).
        records: the records under ``out`` when the caller has read them already (a sweep reads once).

    Raises:
        UserError: the run asked for by id does not exist, cannot be resumed, or has another configuration.
    """
    if resume is True:
        done = newest_completed(read_results(out) if records is None else records, config_hash)
        if done is not None:
            return Decision("done", record=done)
        found = find_run_to_resume(Path(runs), config_hash)
        return Decision("resume", run=found) if found is not None else Decision("new")
    if isinstance(resume, str) and resume:
        return Decision("resume", run=_run_by_id(resume, config_hash, Path(runs), stored_config or {}, world_size))
    return Decision("new")


def _run_by_id(run_id: str, config_hash: str, runs: Path, stored_config: Mapping[str, Any], world_size: int) -> RunDir:
    found = read_run(runs / run_id)
    if found is None:
        raise UserError(f"no run '{run_id}' under {runs}; list the run folders there, or use --resume "
                        "without an id to continue the newest interrupted run of this configuration")
    why = resumable(found)
    if why:
        raise UserError(f"{why}; cannot resume it")
    if found.state.get("config_hash") != config_hash:
        diff = config_difference(found.state.get("config", {}), stored_config, ignore=NOT_IDENTITY)
        if found.state.get("world_size", 1) != world_size:
            diff.append(f"processes: {found.state.get('world_size', 1)} → {world_size}")
        raise UserError(f"run {run_id} was started with another configuration ({'; '.join(diff) or 'plugin options'}); "
                        "resume it with the same settings")
    return found
