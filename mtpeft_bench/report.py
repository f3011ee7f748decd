"""Leaderboards from result records (``mtbench compare``). Reads JSON only; never imports torch.

One row per (dataset, method, task set, preset, tag): the per-task primary metrics with ↑/↓, Δm,
trainable parameters, peak memory and training/inference images per second. Several seeds of the
same row are averaged and shown as mean ± std.
"""

from __future__ import annotations

import math
import statistics
from typing import Any, Iterable, Mapping, Sequence

from mtpeft_bench.baselines import compute_delta


FORMATS = ("md", "csv", "latex")


def _mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not values:
        return None, None
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else None
    return mean, std


def _fmt(mean: float | None, std: float | None, digits: int = 2) -> str:
    if mean is None:
        return "—"
    text = f"{mean:.{digits}f}"
    return f"{text} ± {std:.{digits}f}" if std is not None else text


def _row_key(rec: Mapping[str, Any]) -> tuple:
    return (rec["dataset"], rec["method"], tuple(rec.get("tasks", [])), rec.get("preset"), rec.get("tag", ""),
            rec.get("recipe_key"))


def leaderboard(records: Iterable[Mapping[str, Any]], dataset: str | None = None,
                baseline_method: str = "full") -> list[dict[str, Any]]:
    """Aggregate records into leaderboard rows (dicts of raw numbers, sorted by Δm then method)."""
    records = [r for r in records if r.get("status") == "completed"]
    if dataset:
        records = [r for r in records if r.get("dataset") == dataset]
    groups: dict[tuple, list[Mapping[str, Any]]] = {}
    for rec in records:
        groups.setdefault(_row_key(rec), []).append(rec)
    rows = []
    for key, recs in groups.items():
        first = recs[0]
        row: dict[str, Any] = {
            "dataset": key[0], "method": key[1], "tasks": list(key[2]), "preset": key[3], "tag": key[4],
            "seeds": sorted(r.get("seed") for r in recs), "n": len(recs), "metrics": {},
        }
        for task in first.get("tasks", []):
            spec = first["task_specs"][task]
            name = spec["primary"]
            meta = spec["metrics"][name]
            vals = [(r.get("metrics") or {}).get(task, {}).get(name) for r in recs]
            row["metrics"][task] = {"name": name, "higher_is_better": meta["higher_is_better"],
                                    "unit": meta.get("unit", ""), "values": vals}
        deltas = [compute_delta(r, records, baseline_method) for r in recs]
        row["delta_m"] = [d["value"] for d in deltas]
        sources = {d["baseline"].get("source") for d in deltas if d["value"] is not None}
        row["delta_m_baseline"] = ",".join(sorted(s for s in sources if s)) or None
        row["trainable"] = [((r.get("params") or {}).get("summary") or {}).get("total_trainable") for r in recs]
        eff = [r.get("efficiency") or {} for r in recs]
        row["peak_memory_mb"] = [e.get("peak_memory_mb") for e in eff]
        row["memory_kind"] = eff[0].get("memory_kind")
        row["train_images_per_s"] = [e.get("train_images_per_s") for e in eff]
        row["inference_images_per_s"] = [e.get("inference_images_per_s") for e in eff]
        rows.append(row)

    def sort_key(row: Mapping[str, Any]) -> tuple:
        mean, _ = _mean_std(row["delta_m"])
        return (row["dataset"], -len(row["tasks"]), 0 if mean is not None else 1, -(mean or 0.0), row["method"])

    return sorted(rows, key=sort_key)


def table(rows: Sequence[Mapping[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """Header and string cells of the leaderboard."""
    task_cols: list[tuple[str, str, bool, str]] = []
    for row in rows:
        for task, m in row["metrics"].items():
            col = (task, m["name"], m["higher_is_better"], m["unit"])
            if col not in task_cols:
                task_cols.append(col)
    multi_dataset = len({r["dataset"] for r in rows}) > 1
    header = (["dataset"] if multi_dataset else []) + ["method", "tasks", "preset", "seeds"]
    header += [f"{t} {n} {'↑' if hib else '↓'}" + (f" ({u})" if u and u != "%" else "") for t, n, hib, u in task_cols]
    header += ["Δm % ↑", "trainable (M) ↓", "peak mem (MB) ↓", "train img/s ↑", "infer img/s ↑"]
    cells = []
    for row in rows:
        line = ([row["dataset"]] if multi_dataset else []) + [
            row["method"] + (f" [{row['tag']}]" if row["tag"] else ""),
            ",".join(row["tasks"]) if len(row["tasks"]) < 4 else f"{len(row['tasks'])} tasks",
            row["preset"] or "", ",".join(str(s) for s in row["seeds"]),
        ]
        for task, name, _, unit in task_cols:
            m = row["metrics"].get(task)
            if m is None or m["name"] != name:
                line.append("")
                continue
            digits = 4 if unit == "m" else 2
            line.append(_fmt(*_mean_std(m["values"]), digits=digits))
        delta = _fmt(*_mean_std(row["delta_m"]))
        if delta != "—" and row.get("delta_m_baseline") == "reference":
            delta += " (ref)"
        line.append(delta)
        mean, _ = _mean_std(row["trainable"])
        line.append(f"{mean / 1e6:.3f}" if mean is not None else "—")
        line.append(_fmt(*_mean_std(row["peak_memory_mb"]), digits=0))
        line.append(_fmt(*_mean_std(row["train_images_per_s"]), digits=1))
        line.append(_fmt(*_mean_std(row["inference_images_per_s"]), digits=1))
        cells.append(line)
    return header, cells


def render(rows: Sequence[Mapping[str, Any]], fmt: str = "md") -> str:
    """The leaderboard as Markdown, CSV or LaTeX."""
    header, cells = table(rows)
    if fmt == "csv":
        import csv
        import io

        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(header)
        writer.writerows(cells)
        return buffer.getvalue()
    from tabulate import tabulate

    if fmt == "latex":
        return tabulate(cells, headers=header, tablefmt="latex_booktabs")
    return tabulate(cells, headers=header, tablefmt="github", disable_numparse=True)
