# Over 400 lines on purpose: one drawing function per figure, all fed by the same table preparation.
"""Figures from result records (``mtbench plot``): seaborn on matplotlib's Agg backend, never torch.

Per dataset:

- ``pareto_<dataset>_<tasks>.png``: Δm against trainable parameters for each multi-task set, the
  Pareto front as a staircase, 95 % confidence intervals over seeds as error bars (published rows
  as hollow grey points with ``--reference``);
- ``metrics_<dataset>.png``: each task's primary metric per method, bars at the mean over seeds
  with 95 % confidence-interval error bars, single-task baselines beside the multi-task runs;
- ``efficiency_<dataset>.png``: trainable parameters, forward GFLOPs, peak memory, training and
  inference images/s and latency at batch 1 (merged and unmerged where a method can merge);
- ``curves_<dataset>.png``: training loss and the validation primary metrics per epoch from the
  runs' ``history`` (mean over seeds, 95 % confidence band).

Every interval is Student t over seeds (:func:`mtpeft_bench.report.stats.ci_bounds`); a row of one
seed gets no error bar (its interval is unavailable, not zero).
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from mtpeft_bench.report.rows import leaderboard, with_published
from mtpeft_bench.report.stats import ci_bounds, mean_ci
from mtpeft_bench.results import history_rows


FORMATS = ("png", "pdf", "svg")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt
    import seaborn as sns

    sns.set_theme(style="whitegrid", context="notebook")
    return plt, sns


def _arrow(higher_is_better: bool) -> str:
    return "↑" if higher_is_better else "↓"


def _unit(unit: str) -> str:
    return f" ({unit})" if unit else ""


def _tasks_label(tasks: Sequence[str]) -> str:
    return ", ".join(tasks) if len(tasks) <= 3 else f"{len(tasks)} tasks"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-")


def row_label(row: Mapping[str, Any], several_sets: bool = False) -> str:
    """A leaderboard row's name in figures: method, variant, tag, and its task set where that is
    needed to tell rows apart (``several_sets``) or the row is a single-task baseline."""
    text = row["method"] + (f" ({row['variant']})" if row.get("variant") else "") \
        + (f" [{row['tag']}]" if row.get("tag") else "")
    if len(row["tasks"]) == 1:
        return f"{text} ({row['tasks'][0]} only)"
    return f"{text} ({_tasks_label(row['tasks'])})" if several_sets else text


def _palette(labels: Iterable[str]) -> dict[str, Any]:
    """A colour per label, the same in every figure of a dataset: single-task runs in greys."""
    _, sns = _pyplot()
    labels = list(dict.fromkeys(labels))
    multi = [label for label in labels if not label.endswith(" only)")]
    single = [label for label in labels if label.endswith(" only)")]
    if len(multi) <= 9:
        tab = [c for i, c in enumerate(sns.color_palette("tab10", 10)) if i != 7]  # tab10 without its grey
    else:  # more rows than tab10 tells apart: tab20 without its greys, then evenly spaced hues
        tab = [c for i, c in enumerate(sns.color_palette("tab20", 20)) if i not in (14, 15)]
        tab = tab if len(multi) <= len(tab) else sns.color_palette("husl", len(multi))
    colors = {label: tab[i % len(tab)] for i, label in enumerate(multi)}
    greys = sns.color_palette("Greys", len(single) + 2)[1:-1] if single else []
    colors.update({label: greys[i] for i, label in enumerate(single)})
    return colors


def _short(value: float) -> str:
    """Three significant digits, never in scientific notation (1180 → 1180, 0.07452 → 0.0745)."""
    if value == 0 or not math.isfinite(value):
        return f"{value:g}"
    digits = max(0, 2 - math.floor(math.log10(abs(value))))
    return f"{value:.{digits}f}"


def _label_bars(ax) -> None:
    """Write each horizontal bar's value just past the end of the bar or of its error bar."""
    import numpy as np

    ends: list[tuple[float, float]] = []
    for line in ax.lines:  # seaborn's error bars: one line per bar, segments separated by NaN
        xs = np.asarray(line.get_xdata(), dtype=float)
        ys = np.asarray(line.get_ydata(), dtype=float)
        if np.isfinite(xs).any() and np.isfinite(ys).any():
            ends.append((float(np.nanmean(ys)), float(np.nanmax(xs))))
    right = 0.0
    for patch in ax.patches:
        width = patch.get_width()
        if not math.isfinite(width) or patch.get_height() == 0:
            continue
        center = patch.get_y() + patch.get_height() / 2
        end = max([width] + [x for y, x in ends if abs(y - center) < patch.get_height() / 4])
        right = max(right, end)
        ax.annotate(_short(width), (end, center), xytext=(3, 0), textcoords="offset points", va="center",
                    fontsize=7, color="0.2")
    if right > 0:
        ax.set_xlim(0, right * 1.18)  # room for the labels


def _save(fig, path: Path) -> Path:
    from mtpeft_bench.atomic import write_text_atomic

    import io

    buffer = io.BytesIO()
    fig.savefig(buffer, format=path.suffix.lstrip("."), dpi=150, bbox_inches="tight")
    _pyplot()[0].close(fig)
    return write_text_atomic(path, buffer.getvalue())


def plot_pareto(rows: Sequence[Mapping[str, Any]], path: Path, title: str,
                colors: Mapping[str, Any] | None = None) -> Path:
    """Δm (↑) against trainable parameters (↓) with the Pareto front; ``rows`` share one task set."""
    plt, _ = _pyplot()
    suite = [r for r in rows if r.get("source") == "suite" and mean_ci(r["delta_m"]).mean is not None
             and mean_ci(r["trainable"]).mean is not None]
    published = [r for r in rows if r.get("source") == "published" and mean_ci(r["delta_m"]).mean is not None
                 and mean_ci(r["trainable"]).mean is not None]
    colors = dict(colors or {}) or _palette(row_label(r, False) for r in suite)
    fig, ax = plt.subplots(figsize=(7.5, 5))
    xs = []
    points = [(mean_ci(r["trainable"]).mean / 1e6, mean_ci(r["delta_m"]).mean) for r in [*suite, *published]]
    many = len(suite) > 8  # every point carries its name; a legend entry per row would cover the points
    for row in suite:
        x = mean_ci(row["trainable"]).mean / 1e6
        delta = mean_ci(row["delta_m"])
        y = delta.mean
        xs.append(x)
        label = row_label(row, False)
        color = colors.get(label, "tab:blue")
        seeds = f"{delta.n} seed{'s' if delta.n > 1 else ''}"
        ax.errorbar(x, y, yerr=delta.half_width, fmt="o", markersize=9, capsize=4, color=color,
                    label=None if many else label + (f" (mean ± 95% CI, {seeds})" if delta.half_width is not None
                                                     else f" ({seeds}, no interval)"),
                    markeredgecolor="black" if row.get("pareto") else color, markeredgewidth=1.5, zorder=3)
        ax.annotate(label, (x, y), textcoords="offset points", xytext=(7, 5), fontsize=8, color="0.15")
    front = sorted((mean_ci(r["trainable"]).mean / 1e6, mean_ci(r["delta_m"]).mean) for r in suite if r.get("pareto"))
    if front:
        fx, fy = zip(*front)
        ax.step(fx, fy, where="post", linestyle="--", color="0.3", linewidth=1.2, zorder=2,
                label="Pareto front (black-edged points)")
    for row in published:
        x = mean_ci(row["trainable"]).mean / 1e6
        y = mean_ci(row["delta_m"]).mean
        xs.append(x)
        ax.scatter([x], [y], s=45, facecolors="none", edgecolors="0.45", zorder=2)
        ax.annotate(row["method"], (x, y), textcoords="offset points", xytext=(7, 0), va="center", fontsize=7,
                    color="0.35", style="italic")
    if published:
        ax.scatter([], [], s=45, facecolors="none", edgecolors="0.45", label="published (not run here)")
    if many:
        counts = sorted({mean_ci(r["delta_m"]).n for r in suite})
        ax.plot([], [], "o", color="0.45", markersize=9,
                label=f"a row: mean ± 95% CI over {' or '.join(map(str, counts))} seeds")
    ax.axhline(0.0, color="0.5", linewidth=0.8, linestyle=":", zorder=1)
    ax.annotate("Δm = 0: as good as the single-task models", (0.01, 0.0), xycoords=("axes fraction", "data"),
                xytext=(0, 3), textcoords="offset points", fontsize=8, color="0.4", gid="fixed")
    if xs and max(xs) / max(min(xs), 1e-12) > 20:
        from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("trainable parameters (M, log scale) ↓")
    else:
        ax.set_xlabel("trainable parameters (M) ↓")
    ax.margins(x=0.12, y=0.08)
    ax.set_ylabel("Δm vs single-task baselines (%) ↑")
    ax.set_title(title)
    if published:  # many labelled points: keep the legend off the data
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2, frameon=False)
    else:
        ax.legend(fontsize=8, loc="best")
    _spread_labels(fig, ax, points)
    return _save(fig, path)


def _spread_labels(fig, ax, points: Sequence[tuple[float, float]] = (), tries: int = 12) -> None:
    """Move point labels down, a line at a time, until none overlaps another label or a point
    (greedy, in screen space)."""
    from matplotlib.transforms import Bbox

    fig.canvas.draw()
    radius = 7  # pixels around a marker
    markers = [(tuple(p), Bbox.from_extents(px - radius, py - radius, px + radius, py + radius))
               for p, (px, py) in ((p, ax.transData.transform(p)) for p in points)]
    placed = []
    for text in sorted(ax.texts, key=lambda t: -t.get_window_extent().y0):
        if not hasattr(text, "xyann") or text.get_gid() == "fixed":
            continue
        obstacles = placed + [box for point, box in markers if point != tuple(text.xy)]  # not its own point
        for _ in range(tries):
            box = text.get_window_extent().expanded(1.02, 1.1)
            if not any(box.overlaps(other) for other in obstacles):
                break
            x, y = text.xyann
            text.xyann = (x, y - text.get_fontsize())
        placed.append(text.get_window_extent())


def _long_metrics(rows: Sequence[Mapping[str, Any]], several_sets: bool):
    import pandas as pd

    entries = []
    for row in rows:
        for task, m in row["metrics"].items():
            for value in m["values"]:
                if value is not None:
                    entries.append({"label": row_label(row, several_sets), "task": task, "metric": m["name"],
                                    "higher_is_better": m["higher_is_better"], "unit": m["unit"], "value": value})
    return pd.DataFrame(entries)


def _grid(plt, panels: int, height: float):
    cols = 2 if panels == 4 else min(3, panels)
    rows = -(-panels // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.4 * cols, height * rows), squeeze=False)
    for ax in list(axes.flat)[panels:]:
        ax.set_visible(False)
    return fig, list(axes.flat)[:panels]


def plot_task_metrics(rows: Sequence[Mapping[str, Any]], path: Path, title: str,
                      colors: Mapping[str, Any] | None = None) -> Path | None:
    """One panel per task: the primary metric of each row (bar = mean, error bar = 95 % confidence
    interval over seeds)."""
    plt, sns = _pyplot()
    several_sets = len({tuple(r["tasks"]) for r in rows if len(r["tasks"]) > 1}) > 1
    data = _long_metrics(rows, several_sets)
    if data.empty:
        return None
    tasks = list(dict.fromkeys(data["task"]))
    colors = dict(colors or {}) or _palette(data["label"])
    longest = max(data.groupby("task")["label"].nunique())
    fig, axes = _grid(plt, len(tasks), 0.42 * longest + 1.4)
    for ax, task in zip(axes, tasks):
        sub = data[data["task"] == task]
        first = sub.iloc[0]
        order = list(dict.fromkeys(sub["label"]))
        sns.barplot(data=sub, y="label", x="value", hue="label", order=order, hue_order=order, palette=colors,
                    errorbar=ci_bounds, capsize=0.2, ax=ax, legend=False)
        _label_bars(ax)
        ax.set_title(f"{task}: {first['metric']} {_arrow(first['higher_is_better'])}")
        ax.set_xlabel(f"{first['metric']}{_unit(first['unit'])}")
        ax.set_ylabel("")
    fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)


#: (row field, scale, panel title, x-axis label) of the efficiency figure.
EFFICIENCY_PANELS = (
    ("trainable", 1e-6, "trainable parameters ↓", "millions of parameters"),
    ("flops", 1e-9, "forward FLOPs per image (batch 1) ↓", "GFLOPs (matmuls + convolutions)"),
    ("peak_memory_mb", 1.0, "peak memory ↓", "MB"),
    ("train_images_per_s", 1.0, "training throughput ↑", "images/s (forward + backward + step)"),
    ("inference_images_per_s", 1.0, "inference throughput ↑", "images/s (evaluation loop)"),
    ("latency_ms", 1.0, "latency at batch 1 ↓", "ms (median forward)"),
)


def plot_efficiency(rows: Sequence[Mapping[str, Any]], path: Path, title: str,
                    colors: Mapping[str, Any] | None = None) -> Path | None:
    """Bars of parameters, FLOPs, memory, throughput and latency per row (95 % confidence interval over seeds)."""
    import pandas as pd

    plt, sns = _pyplot()
    rows = [r for r in rows if r.get("source") == "suite"]
    several_sets = len({tuple(r["tasks"]) for r in rows if len(r["tasks"]) > 1}) > 1
    kinds = {r.get("memory_kind") for r in rows if r.get("memory_kind")}
    memory = {"cpu_peak_rss": ("peak RSS of the process ↓", "MB (CPU: includes Python and libraries)"),
              "cuda_max_allocated": ("peak CUDA memory allocated ↓", "MB")}.get(
        next(iter(kinds)) if len(kinds) == 1 else "", ("peak memory ↓", "MB (mixed CPU RSS and CUDA)"))
    panels = []
    for field, scale, name, xlabel in EFFICIENCY_PANELS:
        if field == "peak_memory_mb":
            name, xlabel = memory
        entries = []
        for row in rows:
            label = row_label(row, several_sets)
            entries += [{"label": label, "value": v * scale, "form": "as trained"} for v in row[field] if v is not None]
            if field == "latency_ms":
                entries += [{"label": label, "value": v, "form": "merged for inference"}
                            for v in row.get("merged_latency_ms") or [] if v is not None]
        if entries:
            panels.append((name, xlabel, pd.DataFrame(entries)))
    if not panels:
        return None
    labels = list(dict.fromkeys(row_label(r, several_sets) for r in rows))
    colors = dict(colors or {}) or _palette(labels)
    fig, axes = _grid(plt, len(panels), 0.42 * len(labels) + 1.6)
    for ax, (name, xlabel, data) in zip(axes, panels):
        order = [label for label in labels if label in set(data["label"])]
        if data["form"].nunique() > 1:
            sns.barplot(data=data, y="label", x="value", hue="form", order=order, errorbar=ci_bounds, capsize=0.2,
                        ax=ax, palette=["0.6", "tab:orange"])
            ax.legend(fontsize=7, title=None, loc="upper center", bbox_to_anchor=(0.5, -0.28), ncol=2, frameon=False)
        else:
            sns.barplot(data=data, y="label", x="value", hue="label", order=order, hue_order=order, palette=colors,
                        errorbar=ci_bounds, capsize=0.2, ax=ax, legend=False)
        _label_bars(ax)
        ax.set_title(name)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("")
    fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)


def plot_curves(records: Sequence[Mapping[str, Any]], path: Path, title: str,
                colors: Mapping[str, Any] | None = None) -> Path | None:
    """Training loss and validation primary metrics per epoch (mean over seeds, 95 % confidence band)."""
    import pandas as pd

    plt, sns = _pyplot()
    multi = [r for r in records if len(r.get("tasks", [])) > 1] or list(records)
    several_sets = len({tuple(r["tasks"]) for r in multi if len(r["tasks"]) > 1}) > 1
    frames = []
    primaries: dict[str, tuple[str, bool, str]] = {}
    for rec in multi:
        label = row_label({"method": rec["method"], "tag": rec.get("tag", ""), "tasks": rec["tasks"]}, several_sets)
        frames += [{**row, "label": label} for row in history_rows(rec)]
        for task in rec["tasks"]:
            spec = rec["task_specs"][task]
            meta = spec["metrics"][spec["primary"]]
            primaries.setdefault(task, (spec["primary"], meta["higher_is_better"], meta.get("unit", "")))
    data = pd.DataFrame(frames)
    if data.empty or "epoch" not in data:
        return None
    panels = [("loss", "training loss ↓", "weighted sum of task losses")]
    for task, (name, hib, unit) in primaries.items():
        column = f"val.{task}.{name}"
        if column in data and data[column].notna().any():
            panels.append((column, f"validation {task}: {name} {_arrow(hib)}", f"{name}{_unit(unit)}"))
    present = set(data["label"])
    labels = [label for label in (colors or {}) if label in present] + \
        [label for label in dict.fromkeys(data["label"]) if label not in (colors or {})]
    colors = {label: (colors or {}).get(label) for label in labels}
    if any(c is None for c in colors.values()):
        colors = _palette(labels)
    fig, axes = _grid(plt, len(panels), 3.6)
    for ax, (column, name, ylabel) in zip(axes, panels):
        sub = data[["label", "epoch", column]].dropna()
        sns.lineplot(data=sub, x="epoch", y=column, hue="label", hue_order=labels, palette=colors, marker="o",
                     errorbar=ci_bounds, ax=ax, legend=False)
        ax.set_title(name)
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.xaxis.get_major_locator().set_params(integer=True)
    handles = [plt.Line2D([], [], color=colors[label], marker="o", label=label) for label in labels]
    fig.suptitle(title)
    fig.tight_layout()
    fig.legend(handles=handles, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8, frameon=False,
               title="runs (mean, 95% CI over seeds)", title_fontsize=8)
    return _save(fig, path)


def plot_all(records: Sequence[Mapping[str, Any]], out: Path, dataset: str | None = None,
             methods: Sequence[str] | None = None, tags: Sequence[str] | None = None, baseline_method: str = "full",
             reference: bool = False, fmt: str = "png") -> list[Path]:
    """Write every figure of every dataset under ``out``; returns the files written."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown figure format {fmt!r}; use one of {FORMATS}")
    out = Path(out)
    rows = leaderboard(records, dataset=dataset, baseline_method=baseline_method, methods=methods, tags=tags)
    if reference:
        rows = with_published(rows, {r["dataset"] for r in rows})
    written: list[Path] = []
    for name in dict.fromkeys(r["dataset"] for r in rows):
        sub = [r for r in rows if r["dataset"] == name]
        suite = [r for r in sub if r.get("source") == "suite"]
        several_sets = len({tuple(r["tasks"]) for r in suite if len(r["tasks"]) > 1}) > 1
        colors = _palette(row_label(r, several_sets) for r in suite)  # one colour per run in every figure
        for tasks in dict.fromkeys(tuple(r["tasks"]) for r in suite if len(r["tasks"]) > 1):
            members = [r for r in sub if tuple(r["tasks"]) == tasks or
                       (r.get("source") == "published" and set(r["tasks"]) == set(tasks))]
            if any(mean_ci(r["delta_m"]).mean is not None for r in members):
                slug = "-".join(tasks) if len(tasks) <= 3 else f"{len(tasks)}tasks"
                written.append(plot_pareto(members, out / f"pareto_{_slug(name)}_{_slug(slug)}.{fmt}",
                                           f"{name}: Δm vs trainable parameters ({_tasks_label(tasks)})",
                                           {row_label(r, False): colors[row_label(r, several_sets)] for r in suite
                                            if tuple(r["tasks"]) == tasks}))
        figures = (
            (plot_task_metrics, f"metrics_{_slug(name)}.{fmt}",
             f"{name}: primary metric per task (mean, 95% CI over seeds)"),
            (plot_efficiency, f"efficiency_{_slug(name)}.{fmt}",
             f"{name}: cost of each method (mean, 95% CI over seeds)"),
        )
        for function, filename, title in figures:
            path = function(suite, out / filename, title, colors)
            if path is not None:
                written.append(path)
        keep = {(r["method"], tuple(r["tasks"]), r["tag"]) for r in suite}
        runs = [rec for rec in records if rec.get("status") == "completed" and rec.get("dataset") == name
                and (rec["method"], tuple(rec.get("tasks", [])), rec.get("tag", "")) in keep]
        path = plot_curves(runs, out / f"curves_{_slug(name)}.{fmt}",
                           f"{name}: training curves (mean, 95% CI over seeds)", colors)
        if path is not None:
            written.append(path)
    return written
