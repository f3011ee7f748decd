"""Result records: one immutable JSON per run, written atomically, loaded into pandas.

Layout: ``<out>/<dataset>/<method>/<run_id>.json``. The record is self-describing (task metric
directions and the primary metric travel with it), so reading and comparing results never needs
torch or the plugins. This module must not import torch.

Schema (``schema_version`` 1), top-level keys:

- ``run_id``, ``status`` (``completed``), ``created`` (UTC ISO time), ``wall_time_s``;
- ``method``, ``dataset``, ``dataset_version``, ``tasks``, ``seed``, ``preset``, ``tag``;
- ``config``: the resolved run configuration; ``method_config``, ``data_config``: the plugins'
  resolved options; ``config_hash``: hash of all of these except output paths;
  ``recipe_key``: hash of what a single-task baseline must share with the run (dataset, backbone,
  weights, image size, schedule) for Δm;
- ``task_specs``: ``{task: {"primary": name, "metrics": {name: {"higher_is_better", "unit"}}}}``;
- ``metrics``: ``{task: {metric: value}}`` of the final evaluation;
- ``delta_m``: ``{"value": float | null, "baseline": {"source": "suite" | "reference" | null, ...}}``;
- ``params``: ``{"groups": {group: {"trainable", "total"}}, "summary": {...}, "optimizer": n}``;
- ``efficiency``: peak memory (MB, and how measured), train and inference images/s;
- ``weights``: where the backbone weights came from; ``method_info``: the method's own facts;
- ``history``: per-epoch training loss, LR and (when evaluated) validation metrics;
- ``environment``: git commit and dirty flag, package versions, device, platform.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Iterable, Mapping

from mtpeft_bench.atomic import write_json_atomic

SCHEMA_VERSION = 1


def sanitize(value: Any) -> Any:
    """Replace NaN/inf by None recursively (JSON has no NaN)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {k: sanitize(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [sanitize(v) for v in value]
    return value


def result_path(out: Path, record: Mapping[str, Any]) -> Path:
    return Path(out) / record["dataset"] / record["method"] / f"{record['run_id']}.json"


def write_record(out: Path, record: Mapping[str, Any]) -> Path:
    """Write a run record under ``out``; refuses to overwrite an existing record (records are immutable)."""
    path = result_path(out, record)
    if path.exists():
        raise FileExistsError(f"result {path} exists already; run ids are unique, so this is a bug")
    return write_json_atomic(path, sanitize(dict(record)))


def iter_record_files(root: Path) -> Iterable[Path]:
    root = Path(root)
    if root.is_file():
        yield root
        return
    for path in sorted(root.rglob("*.json")):
        if path.name.startswith("."):
            continue
        yield path


def read_records(root: Path) -> list[dict[str, Any]]:
    """Every run record under ``root`` (files that are not run records are skipped)."""
    records = []
    for path in iter_record_files(root):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(data, dict) and "schema_version" in data and "run_id" in data:
            data["_path"] = str(path)
            records.append(data)
    return records


def _flatten_into(row: dict[str, Any], prefix: str, value: Any) -> None:
    """``{"a": {"b": 1}}`` under ``prefix`` → ``row["prefix.a.b"] = 1`` (lists are left out)."""
    if isinstance(value, Mapping):
        for key, sub in value.items():
            _flatten_into(row, f"{prefix}.{key}", sub)
    elif not isinstance(value, (list, tuple)):
        row[prefix] = value


IDENTITY_COLUMNS = ("run_id", "method", "dataset", "tasks", "n_tasks", "seed", "preset", "tag")


def _identity(record: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "run_id": record.get("run_id"),
        "method": record.get("method"),
        "dataset": record.get("dataset"),
        "tasks": ",".join(record.get("tasks", [])),
        "n_tasks": len(record.get("tasks", [])),
        "seed": record.get("seed"),
        "preset": record.get("preset"),
        "tag": record.get("tag", ""),
    }


def flatten_record(record: Mapping[str, Any]) -> dict[str, Any]:
    """One flat row of a run record.

    Columns: the identity (``run_id, method, dataset, tasks, n_tasks, seed, preset, tag``), ``status``,
    ``created``, ``config_hash``, ``recipe_key``, ``wall_time_s``, ``weights``, ``delta_m`` and
    ``delta_m_baseline``; ``metric.<task>.<metric>``; ``params.<summary key>`` (e.g.
    ``params.total_trainable``), ``params.group.<group>.trainable|total`` and ``params.optimizer``;
    ``efficiency.<key>`` with nested keys joined by dots (e.g. ``efficiency.latency_ms``,
    ``efficiency.inference.merged.latency_ms``); ``method_info.<key>``; ``path``.
    """
    row: dict[str, Any] = {
        **_identity(record),
        "status": record.get("status"),
        "created": record.get("created"),
        "config_hash": record.get("config_hash"),
        "recipe_key": record.get("recipe_key"),
        "wall_time_s": record.get("wall_time_s"),
        "weights": (record.get("weights") or {}).get("source"),
        "delta_m": (record.get("delta_m") or {}).get("value"),
        "delta_m_baseline": ((record.get("delta_m") or {}).get("baseline") or {}).get("source"),
        "path": record.get("_path"),
    }
    for task, values in (record.get("metrics") or {}).items():
        for name, value in values.items():
            row[f"metric.{task}.{name}"] = value
    params = record.get("params") or {}
    for key, value in (params.get("summary") or {}).items():
        row[f"params.{key}"] = value
    _flatten_into(row, "params.group", params.get("groups") or {})
    if "optimizer" in params:
        row["params.optimizer"] = params["optimizer"]
    _flatten_into(row, "efficiency", record.get("efficiency") or {})
    _flatten_into(row, "method_info", record.get("method_info") or {})
    return row


def load_results(path: str | os.PathLike = "results"):
    """Load every run record under ``path`` into a ``pandas.DataFrame`` (one row per run, flat columns).

    See :func:`flatten_record` for the columns. Torch is not imported. Example::

        df = load_results("results")
        df.groupby("method")["delta_m"].agg(["mean", "std"])
    """
    import pandas as pd

    rows = [flatten_record(r) for r in read_records(Path(path))]
    return pd.DataFrame(rows)


def history_rows(record: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per epoch of a run's ``history``: identity columns, ``status``, ``epoch``, ``loss``, ``lr``,
    ``steps``, ``seconds``, ``task_loss.<task>`` and, at evaluated epochs, ``val.<task>.<metric>``."""
    rows = []
    for entry in record.get("history") or []:
        row: dict[str, Any] = {**_identity(record), "status": record.get("status")}
        for key in ("epoch", "loss", "lr", "steps", "seconds"):
            row[key] = entry.get(key)
        for task, value in (entry.get("task_losses") or {}).items():
            row[f"task_loss.{task}"] = value
        for task, values in (entry.get("val") or {}).items():
            for name, value in values.items():
                row[f"val.{task}.{name}"] = value
        rows.append(row)
    return rows


def load_history(path: str | os.PathLike = "results"):
    """Training curves of every run under ``path`` as a long ``pandas.DataFrame`` (one row per run and
    epoch; columns of :func:`history_rows`). Torch is not imported."""
    import pandas as pd

    rows = [row for record in read_records(Path(path)) for row in history_rows(record)]
    return pd.DataFrame(rows)
