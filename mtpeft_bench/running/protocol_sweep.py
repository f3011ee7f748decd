"""``mtbench sweep --protocol NAME``: every run of a leaderboard protocol, resumable at any point.

Phase 1 chooses each row's learning rate (running/lr_selection.py) from runs on held-out training
images, written to ``<out>/lr_selection/``; after each round the realised protocol file
``<out>/protocol.yaml`` is rewritten (atomically) with every row's grid, scores and choice. Phase 2
runs, for each seed, the single-task baselines and every row at its chosen rate, then the extras,
into ``<out>``; once every row has its Δm at every seed, rows within one 95 % interval of another
row run at the protocol's extra seeds too (``close_rows``, running/close_rows.py). Each run goes through running/sweep.py: a run whose record exists is skipped, an
interrupted one resumes, and the run locks let several sweeps of the same protocol share the work.
A selection run that diverged counts as diverged without being run again.

Nothing is kept between invocations but the records, the run folders and the protocol file: the
state of the selection is recomputed from the records each time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from mtpeft_bench.running.close_rows import CloseRows, decide
from mtpeft_bench.running.lr_selection import RowChoice, Scorer, choose, holdout_score
from mtpeft_bench.running.protocol import Protocol, RunSpec, build_config, selection_folder

REALISED_NAME = "protocol.yaml"


@dataclass
class Found:
    """What exists of one run: ``completed`` (with its record), ``diverged`` or ``to run``."""

    status: str
    record: Mapping[str, Any] | None = None


@dataclass
class State:
    """The protocol as it stands: every row's choice, the grid's findings, the phase-2 runs."""

    reference: Found
    choices: dict[str, RowChoice]
    grid: dict[str, dict[float, tuple[Found, float | None]]]  # row -> multiplier -> (found, score)
    selection_todo: list[RunSpec] = field(default_factory=list)
    phase2: list[RunSpec] = field(default_factory=list)
    close: CloseRows | None = None  # None: the protocol asks for no extra seeds


class ProtocolSweep:
    """The runs of one protocol into one results folder (see the module docstring).

    Args:
        options, sets: run settings from the command line that are not part of a run's identity
            (device, data root, progress, runs folder...).
        world_size: processes per run (torchrun), part of each run's identity.
        score: the selection's scorer (tests give a stub).
    """

    def __init__(self, protocol: Protocol, out: Path, options: Mapping[str, Any] | None = None,
                 sets: Mapping[str, Any] | None = None, world_size: int = 1, score: Scorer = holdout_score):
        self.protocol, self.out = protocol, Path(out)
        self.options, self.sets = dict(options or {}), dict(sets or {})
        self.world_size, self.score = world_size, score
        self._points: dict[tuple, Any] = {}
        self.failed: set[str] = set()  # labels of runs that failed in this invocation (not retried)
        self._tasks: list[str] | None = None

    # -- configurations -------------------------------------------------------------------------
    def point(self, spec: RunSpec, provenance: Mapping[str, Any] | None = None):
        """The sweep point of ``spec`` (resolved once; ``provenance`` goes into its ``lr_selection``)."""
        from mtpeft_bench.running.setup import prepare, run_hash
        from mtpeft_bench.running.sweep import GridPoint

        key = (spec.kind, spec.row, spec.method, spec.seed, spec.multiplier, spec.tasks, spec.tag)
        if key not in self._points:
            cfg = build_config(self.protocol, spec, self.out, self.options, self.sets, provenance)
            resolved = prepare(cfg)
            self._points[key] = GridPoint(cfg.dataset, cfg.method, cfg.seed, cfg,
                                          run_hash(cfg, resolved, self.world_size), name=spec.label)
        elif provenance is not None:
            self._points[key].cfg.lr_selection.update(provenance)
        return self._points[key]

    def selection_spec(self, row_name: str, multiplier: float) -> RunSpec:
        row = self.protocol.row(row_name)
        return RunSpec("selection", row.name, row.method, self.protocol.selection.seed, multiplier, "selection",
                       row.options)

    def shared_base_lr(self) -> float:
        ref = self.point(self.selection_spec(self.protocol.selection.reference, 1.0))
        return ref.cfg.lr_selection["shared_base_lr"]

    # -- what exists ----------------------------------------------------------------------------
    def _diverged_hashes(self) -> set[str]:
        from mtpeft_bench.running.folders import list_runs, runs_root

        ref = self.point(self.selection_spec(self.protocol.selection.reference, 1.0))
        return {r.state.get("config_hash") for r in list_runs(runs_root(ref.cfg))
                if r.state.get("status") == "failed" and "non-finite" in str(r.state.get("message", ""))}

    def find(self, spec: RunSpec, records, diverged: set[str]) -> Found:
        from mtpeft_bench.running.resume import newest_completed

        point = self.point(spec)
        record = newest_completed(records, point.config_hash)
        if record is not None:
            return Found("completed", record)
        if spec.kind == "selection" and point.config_hash in diverged:
            return Found("diverged")
        return Found("to run")

    def state(self) -> State:
        """Recompute the selection and the phase-2 runs from the records (see lr_selection.py)."""
        from mtpeft_bench.running.resume import read_results

        sel = self.protocol.selection
        records = read_results(selection_folder(self.out))
        diverged = self._diverged_hashes()
        reference = self.find(self.selection_spec(sel.reference, 1.0), records, diverged)
        choices, grid = {}, {}
        for row in self.protocol.rows:
            scores: dict[float, float | None] = {}
            grid[row.name] = {}
            while True:
                choice = choose(sel.multipliers, scores, sel.max_extensions)
                progressed = False
                for m in choice.todo:
                    found = self.find(self.selection_spec(row.name, m), records, diverged)
                    score = None
                    if found.status == "diverged":
                        score = -math.inf
                    elif found.status == "completed" and reference.record is not None:
                        score = self.score(found.record, reference.record)
                    grid[row.name][m] = (found, score)
                    if score is not None:
                        scores[m], progressed = score, True
                if not progressed:
                    break
            choices[row.name] = choice
        state = State(reference, choices, grid)
        todo = [self.selection_spec(r.name, m) for r in self.protocol.rows for m in choices[r.name].todo]
        ref_spec = self.selection_spec(sel.reference, 1.0)
        todo.sort(key=lambda s: (s.row, s.multiplier) != (ref_spec.row, ref_spec.multiplier))  # reference first
        state.selection_todo = [s for s in todo if grid[s.row][s.multiplier][0].status == "to run"]
        state.phase2 = self.phase2_specs(choices)
        if self.protocol.close_seeds:
            state.close = self.close_rows(state)
            state.phase2 += self.close_specs(state)
        return state

    @staticmethod
    def provenance(state: State, spec: RunSpec) -> dict[str, Any]:
        """What a phase-2 record says about its rate: the row's grid and scores, the edge flag, the file."""
        choice = state.choices[spec.row]
        grid = {f"{m:g}": state.grid[spec.row].get(m, (None, None))[1] for m in choice.grid}
        provenance = {"at_edge": choice.at_edge, "file": REALISED_NAME, "chosen_multiplier": choice.chosen,
                      "grid": {k: (None if v is None or not math.isfinite(v) else round(v, 4)) for k, v in grid.items()}}
        if spec.kind == "row" and state.close is not None and spec.row in state.close.rows:
            provenance["close_to"] = sorted({b if a == spec.row else a for a, b in state.close.pairs
                                             if spec.row in (a, b)})
        return provenance

    def phase2_specs(self, choices: Mapping[str, RowChoice]) -> list[RunSpec]:
        """The baselines and rows for each seed, then the extras, of every row whose rate is chosen."""
        p = self.protocol
        chosen = {name: c.chosen for name, c in choices.items() if c.status == "chosen"}
        specs = []
        for seed in p.seeds:
            if p.baseline_rate_of in chosen:
                m = chosen[p.baseline_rate_of]
                for task in self.tasks():
                    specs.append(RunSpec("baseline", p.baseline_rate_of, p.baseline_method, seed, m, "baseline",
                                         tasks=(task,)))
            for row in p.rows:
                if row.name in chosen:
                    specs.append(RunSpec("row", row.name, row.method, seed, chosen[row.name], "chosen", row.options))
        for extra in p.extras:
            row = p.row(extra.row)
            if extra.rate == "chosen" and row.name not in chosen:
                continue
            m = 1.0 if extra.rate == "default" else chosen[row.name]
            for seed in p.seeds:
                specs.append(RunSpec("extra", row.name, row.method, seed, m, extra.rate, row.options,
                                     tag=extra.tag, settings=extra.settings))
        return specs

    def close_rows(self, state: State) -> CloseRows:
        """Which rows get the extra seeds, decided on the protocol's seeds once every row whose rate is
        chosen has a Δm at each of them (running/close_rows.py); rows where every rate diverged are left out."""
        from mtpeft_bench.report.baselines import compute_delta
        from mtpeft_bench.results import select_split

        p = self.protocol
        pending = [r.name for r in p.rows if state.choices[r.name].status == "pending"]
        if pending:
            return CloseRows(False, waiting_for=f"the rates of {', '.join(pending)}")
        first = [s for s in state.phase2 if s.kind in ("row", "baseline") and s.seed in p.seeds]
        records = select_split(self.records(), "val")[0]
        found = [(s, self.find(s, records, set())) for s in first]
        missing = [s for s, f in found if f.status != "completed"]
        if missing:
            return CloseRows(False, waiting_for=f"{len(missing)} run(s) at seeds {','.join(map(str, p.seeds))}")
        deltas: dict[str, list[float]] = {}
        for spec, run in ((s, f) for s, f in found if s.kind == "row"):
            value = compute_delta(run.record, records, p.baseline_method)["value"]
            if value is None:
                return CloseRows(False, waiting_for=f"the Δm of {spec.label}")
            deltas.setdefault(spec.row, []).append(value)
        return decide(deltas)

    def close_specs(self, state: State) -> list[RunSpec]:
        """The extra seeds of the close rows, seed by seed (an interrupted sweep leaves whole seeds)."""
        if state.close is None or not state.close.decided:
            return []
        rows = [self.protocol.row(name) for name in state.close.rows]
        return [RunSpec("row", row.name, row.method, seed, state.choices[row.name].chosen, "chosen", row.options)
                for seed in self.protocol.close_seeds for row in rows]

    def tasks(self) -> list[str]:
        """The tasks of the protocol's runs (one single-task baseline each)."""
        from mtpeft_bench.running.setup import prepare

        if self._tasks is None:
            self._tasks = prepare(self.point(self.selection_spec(self.protocol.selection.reference, 1.0)).cfg).tasks
        return list(self._tasks)

    def phase2_points(self, state: State) -> list[Any]:
        """The phase-2 sweep points, their ``lr_selection`` completed with the row's grid."""
        return [self.point(s, self.provenance(state, s)) for s in state.phase2]

    def records(self) -> list[Mapping[str, Any]]:
        """The records of the leaderboard (and, under ``<out>``, of the selection too)."""
        from mtpeft_bench.running.resume import read_results

        return read_results(self.out)

    # -- running --------------------------------------------------------------------------------
    def run(self, echo: Callable[[str], None], show: Callable[[Any], None] = lambda result: None) -> "Outcome":
        """Run phase 1 until every row's rate is chosen, phase 2 for the rows chosen; again while a
        round completed something (another sweep may have finished what this one waited for)."""
        import os

        from mtpeft_bench.running.protocol_report import realised, write_realised

        def record_state() -> State:
            state = self.state()
            if int(os.environ.get("RANK", "0")) == 0:  # under torchrun, rank 0 writes the file
                write_realised(self.out / REALISED_NAME, realised(self, state))
            return state

        outcome = Outcome()
        while True:
            state = record_state()
            if state.reference.status == "diverged":
                break  # nothing can be scored against it
            selection = self._todo([self.point(s) for s in state.selection_todo])
            if selection and self._run(selection, "rate selection", outcome, echo, show):
                continue  # new scores: extensions or choices may follow before phase 2
            leaderboard = self._todo(self.phase2_points(state))
            if not (leaderboard and self._run(leaderboard, "leaderboard", outcome, echo, show)):
                break
        state = record_state()
        outcome.pending = [name for name, c in state.choices.items() if c.status == "pending"]
        outcome.unchosen = [name for name, c in state.choices.items() if c.status == "failed"]
        outcome.reference_diverged = state.reference.status == "diverged"
        return outcome

    def _todo(self, points: list[Any]) -> list[Any]:
        """The points not done (classified as a sweep does) and not failed in this invocation."""
        from mtpeft_bench.running.sweep import classify

        classify(points)
        return [p for p in points if p.state != "done" and p.name not in self.failed]

    def _run(self, points: list[Any], phase: str, outcome: "Outcome", echo: Callable[[str], None],
             show: Callable[[Any], None]) -> bool:
        """Run ``points`` (running/sweep.py); whether any completed."""
        from mtpeft_bench.running.sweep import run_grid

        outcome.estimate_from(self)
        echo(f"protocol: {phase}: {len(points)} run(s) to do now")

        def after(result: Any) -> None:
            outcome.note(result, echo)
            show(result)

        result = run_grid(points, echo, show=after)
        self.failed.update(name for name, _ in result.failed)
        outcome.failed += result.failed
        outcome.elsewhere = result.elsewhere
        return bool(result.completed)


@dataclass
class Outcome:
    """What one invocation did, and the running estimate it printed."""

    completed: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    elsewhere: list[str] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)  # rows whose rate is not chosen yet
    unchosen: list[str] = field(default_factory=list)  # rows where every rate diverged
    reference_diverged: bool = False
    times: list[float] = field(default_factory=list)
    remaining: int = 0

    def estimate_from(self, sweep: ProtocolSweep) -> None:
        from mtpeft_bench.running.protocol_report import plan_counts

        counts = plan_counts(sweep)
        self.remaining = counts["to_run"]
        if not self.times:
            self.times = counts["wall_times"]

    def note(self, result: Any, echo: Callable[[str], None]) -> None:
        if result.outcome != "completed":
            return
        self.completed += 1
        self.remaining = max(self.remaining - 1, 0)
        wall = (result.record or {}).get("wall_time_s")
        if wall:
            self.times.append(float(wall))
        echo(f"protocol: {self.completed} run(s) completed by this sweep; {self.remaining} known to remain"
             + (f", about {format_hours(self.remaining * mean(self.times))} at {mean(self.times) / 60:.1f} min a run"
                if self.times else ""))


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


def format_hours(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.0f} min"

