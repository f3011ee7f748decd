"""Training curves of one run from its live log (``metrics.jsonl``, train/logging_sinks.py), also
while the run is still training: ``mtbench plot --curves RUN_FOLDER``.

The figure has the training loss per step (the weighted total and each task's unweighted loss,
with a running mean over a window of steps), the learning rate, and one panel per task with its
primary validation metric at every evaluation. The log is read as it stands; a last line still
being written is skipped.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pandas as pd

from mtpeft_bench.atomic import write_text_atomic
from mtpeft_bench.errors import UserError

METRICS_NAME = "metrics.jsonl"  # as train/logging_sinks.py writes it (read here without importing torch)


def metrics_path(run: str | Path) -> Path:
    """The live log of ``run``: a run folder or the ``metrics.jsonl`` file itself.

    Raises:
        UserError: neither exists.
    """
    path = Path(run).expanduser()
    found = path / METRICS_NAME if path.is_dir() else path
    if not found.is_file():
        raise UserError(f"no {METRICS_NAME} in {path}; give a run folder (runs/<run_id>, beside the results folder) "
                        "of a run started with this version of mtbench" if path.is_dir() else
                        f"{path} does not exist; give a run folder (runs/<run_id>) or its {METRICS_NAME}")
    return found


def read_metrics(path: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(steps, evaluations)``: one row per training step (``step``, ``epoch``, ``lr``, ``loss`` and
    ``loss/<task>``), one row per evaluation and task (``step``, ``epoch``, ``task``, ``metric``,
    ``value``, ``final``)."""
    steps: list[dict[str, Any]] = []
    evals: list[dict[str, Any]] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:  # being written right now
            continue
        if not isinstance(entry, dict):
            continue
        if entry.get("kind") == "train":
            row = {"step": entry["step"], "epoch": entry.get("epoch"), "lr": entry.get("lr"), "loss": entry.get("loss")}
            row.update({f"loss/{t}": v for t, v in (entry.get("task_losses") or {}).items()})
            steps.append(row)
        elif entry.get("kind") == "eval":
            primary = entry.get("primary") or {}
            for task, metrics in (entry.get("metrics") or {}).items():
                metric = primary.get(task) or next(iter(metrics), None)
                if metric is not None and metrics.get(metric) is not None:
                    evals.append({"step": entry["step"], "epoch": entry.get("epoch"), "task": task, "metric": metric,
                                  "value": metrics[metric], "final": bool(entry.get("final"))})
    return pd.DataFrame(steps), pd.DataFrame(evals)


def plot_curves(run: str | Path, out: Path, fmt: str = "png", window: int | None = None) -> Path:
    """Draw the curves of ``run`` (a run folder or its ``metrics.jsonl``) into ``out/curves_<run id>.<fmt>``.

    Args:
        window: steps in the running mean of the losses (default: about a fiftieth of the steps so far).

    Raises:
        UserError: no log, or no step logged yet.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    path = metrics_path(run)
    steps, evals = read_metrics(path)
    if steps.empty:
        raise UserError(f"{path} has no training step yet; try again once the run has taken a step")
    run_id = path.parent.name
    window = window or max(1, len(steps) // 50)
    tasks = sorted(evals["task"].unique()) if not evals.empty else []
    layout = [["loss", "loss", "lr"]]
    if tasks:
        columns = max(3, len(tasks))
        layout = [["loss"] * (columns - 1) + ["lr"], [f"task:{t}" for t in tasks] + ["."] * (columns - len(tasks))]
    sns.set_theme(style="whitegrid")
    fig, axes = plt.subplot_mosaic(layout, figsize=(4 * len(layout[0]), 3.4 * len(layout)), constrained_layout=True)

    losses = [c for c in steps.columns if c == "loss" or c.startswith("loss/")]
    long = steps.melt(id_vars="step", value_vars=losses, var_name="series", value_name="value").dropna()
    long["series"] = long["series"].replace({"loss": "total (weighted)"}).str.replace("loss/", "", regex=False)
    long["value"] = long.groupby("series")["value"].transform(lambda v: v.rolling(window, min_periods=1).mean())
    sns.lineplot(data=long, x="step", y="value", hue="series", ax=axes["loss"], linewidth=1.2)
    axes["loss"].set(title=f"training loss (running mean of {window} steps)", ylabel="loss", yscale="log")
    sns.lineplot(data=steps, x="step", y="lr", ax=axes["lr"], color="tab:gray")
    axes["lr"].set(title="learning rate", yscale="log")
    for task in tasks:
        part = evals[evals["task"] == task]
        ax = axes[f"task:{task}"]
        sns.lineplot(data=part, x="step", y="value", marker="o", ax=ax)
        final = part[part["final"]]
        if not final.empty:
            ax.scatter(final["step"], final["value"], s=60, color="tab:red", zorder=3, label="final")
            ax.legend()
        ax.set(title=f"{task}: {part['metric'].iloc[0]} (val)", ylabel=part["metric"].iloc[0])
    last = steps.iloc[-1]
    fig.suptitle(f"run {run_id}: step {int(last['step'])}, epoch {last['epoch']}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    target = out / f"curves_{run_id}.{fmt}"
    buffer = io.BytesIO()
    fig.savefig(buffer, format=fmt, dpi=120)
    plt.close(fig)
    write_text_atomic(target, buffer.getvalue())
    return target
