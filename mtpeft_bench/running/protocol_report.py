"""What a protocol sweep tells the user: the plan (runs, what exists, each row's grid and choice,
an estimate of the time left) and the realised protocol file ``<out>/protocol.yaml``.

The realised file holds the protocol as read, the code version that last changed the file, the
shared base rate, the reference run, and per row: its grid (multiplier, absolute ``base_lr``, the
holdout score, the run id or ``diverged``), the chosen multiplier and ``base_lr``, and whether the
choice is still on a grid edge. It is rewritten atomically, and only when something in it changed.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from mtpeft_bench.atomic import write_text_atomic

if TYPE_CHECKING:
    from mtpeft_bench.running.protocol_sweep import ProtocolSweep, State


def _score(value: float | None) -> float | str | None:
    if value is None:
        return None
    return round(value, 4) if math.isfinite(value) else "diverged"


def realised(sweep: ProtocolSweep, state: State) -> dict[str, Any]:
    """The content of the realised protocol file (without the code version, which the writer adds)."""
    p = sweep.protocol
    base = sweep.shared_base_lr()
    rows: dict[str, Any] = {}
    for row in p.rows:
        choice = state.choices[row.name]
        cells = []
        for m in choice.grid:
            found, score = state.grid[row.name].get(m, (None, None))
            status = found.status if found is not None else "to run"
            cells.append({"multiplier": m, "base_lr": base * m, "status": status, "score": _score(score),
                          "run_id": (found.record or {}).get("run_id") if found is not None else None})
        rows[row.name] = {
            "method": row.method, "options": dict(row.options), "status": choice.status,
            "chosen_multiplier": choice.chosen, "base_lr": None if choice.chosen is None else base * choice.chosen,
            "at_edge": choice.at_edge, "grid": cells,
        }
    rate_of = state.choices[p.baseline_rate_of]
    return {
        "protocol": p.to_dict(), "source": p.source,
        "complete": all(c.status != "pending" for c in state.choices.values()),
        "shared_base_lr": base,
        "score": f"Δm (%) on the last {p.selection.holdout} training images (split holdout) against row "
                 f"{p.selection.reference} at multiplier 1, seed {p.selection.seed}",
        "reference_run": (state.reference.record or {}).get("run_id"),
        "baselines": {"method": p.baseline_method, "tasks": sweep.tasks(), "rate_of": p.baseline_rate_of,
                      "multiplier": rate_of.chosen, "base_lr": None if rate_of.chosen is None else base * rate_of.chosen},
        "rows": rows,
        **({"close_rows": close_rows_content(p.close_seeds, state.close)} if state.close is not None else {}),
    }


def close_rows_content(seeds: Any, close: Any) -> dict[str, Any]:
    """The realised file's account of the extra-seeds rule: decided or not, the rows and pairs, and
    the Δm (mean, 95 % half-width over the protocol's seeds) the decision was taken on."""
    content: dict[str, Any] = {"seeds": list(seeds), "decided": close.decided}
    if not close.decided:
        return {**content, "waiting_for": close.waiting_for}
    return {**content, "rows": list(close.rows), "pairs": [list(pair) for pair in close.pairs],
            "delta_m": {name: {"mean": round(mean, 4), "ci95": None if half is None else round(half, 4)}
                        for name, (mean, half) in close.delta_m.items()}}


def code_version() -> dict[str, Any]:
    """The package version and git state of the code that wrote the file."""
    import importlib.metadata as md

    from mtpeft_bench.running.record import git_state

    try:
        version = md.version("mtpeft-bench")
    except md.PackageNotFoundError:
        version = None
    return {"mtpeft-bench": version, "git": git_state()}


def write_realised(path: Path, content: Mapping[str, Any]) -> bool:
    """Write the realised protocol file when its content changed (the code version that made the
    change goes with it); whether it was written."""
    import yaml

    path = Path(path)
    try:
        old = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        old = {}
    if isinstance(old, Mapping) and {k: v for k, v in old.items() if k != "code"} == dict(content):
        return False
    header = "# The realised leaderboard protocol, written by `mtbench sweep --protocol` (docs/leaderboard.md).\n"
    text = yaml.safe_dump({**content, "code": code_version()}, sort_keys=False, allow_unicode=True, width=110)
    write_text_atomic(path, header + text)
    return True


def plan_counts(sweep: ProtocolSweep, state: State | None = None) -> dict[str, Any]:
    """How many runs each phase has, how many are done, and the wall times of the completed ones."""
    from mtpeft_bench.running.sweep import classify

    p = sweep.protocol
    state = state or sweep.state()
    cells = [found.status for row in state.grid.values() for found, _ in row.values()]
    pending = [name for name, c in state.choices.items() if c.status == "pending"]
    room = sum(p.selection.max_extensions - (len(state.choices[n].grid) - len(p.selection.multipliers))
               for n in pending)
    points = sweep.phase2_points(state)
    classify(points)
    # the phase-2 runs of rows whose rate is still to choose (their configurations are not known yet)
    waiting = len(pending) * len(p.seeds)
    waiting += len(sweep.tasks()) * len(p.seeds) if p.baseline_rate_of in pending else 0
    waiting += sum(len(p.seeds) for e in p.extras if e.rate == "chosen" and e.row in pending)
    close = state.close
    close_room = (len([c for c in state.choices.values() if c.status != "failed"]) * len(p.close_seeds)
                  if close is not None and not close.decided else 0)
    times = [float(r["wall_time_s"]) for r in sweep.records() if r.get("wall_time_s")]
    selection_to_run = cells.count("to run")
    phase2_done = sum(pt.state == "done" for pt in points)
    return {
        "selection": len(cells), "selection_done": cells.count("completed"), "diverged": cells.count("diverged"),
        "selection_to_run": selection_to_run, "extension_room": room, "close_room": close_room,
        "phase2": len(points) + waiting, "phase2_done": phase2_done, "waiting": waiting,
        "rows": sum(s.kind == "row" for s in state.phase2), "baselines": sum(s.kind == "baseline" for s in state.phase2),
        "extras": sum(s.kind == "extra" for s in state.phase2),
        "to_run": selection_to_run + len(points) - phase2_done + waiting, "wall_times": times,
    }


def _cell(multiplier: float, found: Any, score: float | None) -> str:
    if found is None or found.status == "to run":
        return f"×{multiplier:g} to run"
    if found.status == "diverged":
        return f"×{multiplier:g} diverged"
    return f"×{multiplier:g} {score:+.2f}" if score is not None else f"×{multiplier:g} done"


def plan_lines(sweep: ProtocolSweep) -> list[str]:
    """The plan ``mtbench sweep --protocol`` prints before it runs anything (and alone with ``--plan``)."""
    from mtpeft_bench.running.protocol import selection_folder

    p, sel = sweep.protocol, sweep.protocol.selection
    state = sweep.state()
    counts = plan_counts(sweep, state)
    base = sweep.shared_base_lr()
    lines = [
        f"protocol {p.name} ({p.source}): dataset {p.dataset}, preset {p.preset}, {len(p.rows)} rows, "
        f"seeds {','.join(map(str, p.seeds))} → {sweep.out}",
        f"rate selection → {selection_folder(sweep.out)}: seed {sel.seed}, the last {sel.holdout} training images "
        f"held out, multipliers {','.join(f'{m:g}' for m in sel.multipliers)} of base_lr {base:.4g}; score: Δm (%) "
        f"on the held-out images against {sel.reference} ×1",
    ]
    width = max(len(r.name) for r in p.rows)
    for row in p.rows:
        choice = state.choices[row.name]
        cells = " | ".join(_cell(m, *state.grid[row.name].get(m, (None, None))) for m in choice.grid)
        verdict = {"pending": "pending", "failed": "every rate diverged"}.get(choice.status)
        if verdict is None:
            verdict = f"×{choice.chosen:g} (base_lr {base * choice.chosen:.4g})" + (" at edge" if choice.at_edge else "")
        lines.append(f"  {row.name:<{width}}  {cells}  → {verdict}")
    c = counts
    lines.append(f"phase 1 (rate selection): {c['selection']} runs: {c['selection_done']} completed, "
                 f"{c['diverged']} diverged, {c['selection_to_run']} to run"
                 + (f"; up to {c['extension_room']} more where a best rate lies on a grid edge" if c["extension_room"]
                    else ""))
    lines.append(f"phase 2 (leaderboard): {c['phase2']} runs: {c['rows']} row, {c['baselines']} baseline and "
                 f"{c['extras']} extra runs ready, {c['waiting']} waiting for their row's rate; "
                 f"{c['phase2_done']} completed, {c['phase2'] - c['phase2_done']} to run")
    if state.close is not None:
        seeds = ",".join(map(str, p.close_seeds))
        if state.close.decided:
            lines.append(f"seeds {seeds} for rows within one 95 % interval of another: "
                         f"{', '.join(state.close.rows) or 'none'}")
        else:
            lines.append(f"seeds {seeds} for rows within one 95 % interval of another: up to {c['close_room']} runs, "
                         f"decided once the protocol's seeds are complete (waiting for {state.close.waiting_for})")
    if c["wall_times"]:
        each = sum(c["wall_times"]) / len(c["wall_times"])
        lines.append(f"estimate: {c['to_run']} runs × {each / 60:.1f} min (mean of {len(c['wall_times'])} completed "
                     f"runs here) ≈ {each * c['to_run'] / 3600:.1f} h, not counting grid extensions"
                     + (" or extra seeds" if c["close_room"] else ""))
    else:
        lines.append(f"estimate: {c['to_run']} runs; their time is estimated once a first run has completed")
    return lines
