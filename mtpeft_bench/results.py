"""Result records: one immutable JSON per run, written atomically, loaded into pandas.

Layout: ``<out>/<dataset>/<method>/<run_id>.json``. The record is self-describing (task metric
directions and the primary metric travel with it), so reading and comparing results never needs
torch or the plugins. This module must not import torch.

Schema (``schema_version`` 1), top-level keys:

- ``run_id``, ``status`` (``completed``), ``created`` (UTC ISO time), ``wall_time_s``;
- ``eval_split`` (optional): which images the metrics were scored on, ``val`` (the validation
  split the leaderboard reports; the meaning of a record without the key) or ``holdout`` (images
  held out from the training split, for learning-rate selection); see :func:`select_split`;
- ``method``, ``dataset``, ``dataset_version``, ``tasks``, ``seed``, ``preset``, ``tag``;
- ``config``: the resolved run configuration; ``method_config``, ``data_config``: the plugins'
  resolved options; ``config_hash``: hash of all of these except output paths;
  ``recipe_key``: hash of what a single-task baseline must share with the run (dataset, backbone,
  weights, image size, schedule) for Δm;
- ``task_specs``: ``{task: {"primary": name, "metrics": {name: {"higher_is_better", "unit"}}}}``;
- ``metrics``: ``{task: {metric: value}}`` of the final evaluation;
- ``delta_m``: ``{"value": float | null, "baseline": {"source": "suite" | "reference" | null, ...}}``;
- ``params``: ``{"groups": {group: {"trainable", "total"}}, "summary": {...}, "optimizer": n}``;
- ``efficiency``: peak memory (MB, and how measured), train and inference images/s, FLOPs, latency,
  machine load and (``utilization``, absent from records written before it) achieved FLOP/s and MFU;
- ``weights``: where the backbone weights came from; ``method_info``: the method's own facts;
- ``history``: per-epoch training loss, LR and (when evaluated) validation metrics;
- ``environment``: git commit and dirty flag, package versions, device, platform.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from mtpeft_bench.atomic import write_json_atomic
from mtpeft_bench.errors import UserError

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


def _is_number(value: Any) -> bool:
    return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool))


def _mapping_of_mappings(value: Any) -> bool:
    return isinstance(value, Mapping) and all(isinstance(v, Mapping) for v in value.values())


# Optional top-level keys and the JSON type each must have when present (None is always accepted).
_OPTIONAL_TYPES: dict[str, tuple[type, str]] = {
    **{key: (Mapping, "mapping") for key in ("config", "method_config", "data_config", "weights", "params",
                                             "efficiency", "delta_m", "method_info", "environment")},
    "history": (list, "list"), "tag": (str, "string"), "preset": (str, "string"), "eval_split": (str, "string"),
}


def record_problem(data: Any) -> str | None:
    """Why ``data`` (a parsed JSON file) is not a result record this version can read, or None if it is.

    Checks the schema version and the types of every key that reading and comparing rely on, so a
    damaged record is reported by name instead of failing deep inside a table.
    """
    if not isinstance(data, Mapping):
        return f"not a result record (a JSON {type(data).__name__}, not an object)"
    missing = [key for key in ("schema_version", "run_id") if key not in data]
    if missing:
        return f"not a result record (no {' and no '.join(missing)})"
    if data["schema_version"] != SCHEMA_VERSION:
        return f"schema_version {data['schema_version']!r}, but this mtbench reads version {SCHEMA_VERSION}"
    for key in ("run_id", "method", "dataset", "status"):
        if not isinstance(data.get(key), str):
            return f"'{key}' is {type(data.get(key)).__name__}, not a string"
    tasks = data.get("tasks")
    if not isinstance(tasks, list) or not all(isinstance(t, str) for t in tasks):
        return "'tasks' is not a list of task names"
    specs = data.get("task_specs")
    if not _mapping_of_mappings(specs):
        return "'task_specs' is not a mapping of task to its metrics"
    for task in tasks:
        spec = specs.get(task)
        if not isinstance(spec, Mapping) or not isinstance(spec.get("primary"), str) \
                or not _mapping_of_mappings(spec.get("metrics")):
            return f"'task_specs' has no primary metric and metrics for task {task}"
    metrics = data.get("metrics")
    if metrics is not None:
        if not _mapping_of_mappings(metrics):
            return f"'metrics' is {type(metrics).__name__}, not a mapping of task to {{metric: value}}"
        for task, values in metrics.items():
            bad = [name for name, value in values.items() if not _is_number(value)]
            if bad:
                return f"'metrics.{task}.{bad[0]}' is not a number"
    for key, (kind, kind_name) in _OPTIONAL_TYPES.items():
        value = data.get(key)
        if value is not None and not isinstance(value, kind):
            return f"'{key}' is {type(value).__name__}, not a {kind_name}"
    return None


def scan_records(root: Path) -> tuple[list[dict[str, Any]], list[tuple[Path, str]]]:
    """Every valid run record under ``root`` and, for every other JSON file, ``(path, why it was skipped)``."""
    records, skipped = [], []
    for path in iter_record_files(root):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            skipped.append((path, f"cannot be read ({exc.strerror or exc})"))
            continue
        except UnicodeDecodeError:
            skipped.append((path, "not UTF-8 text"))
            continue
        except json.JSONDecodeError as exc:
            skipped.append((path, f"not valid JSON, truncated or damaged ({exc.msg} at line {exc.lineno} "
                                  f"column {exc.colno})"))
            continue
        problem = record_problem(data)
        if problem is not None:
            skipped.append((path, problem))
            continue
        data["_path"] = str(path)
        records.append(data)
    return records, skipped


def read_records(root: Path, *, strict: bool = False,
                 warn: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """Every run record under ``root``.

    Every other JSON file there (unreadable, truncated, another schema version, keys of the wrong
    type, not a record at all) is named with the reason in one warning line each (``warn``, by
    default the ``mtpeft_bench`` logger), or, when ``strict``, is an error.

    Raises:
        UserError: ``strict`` and some file is not a valid record (one line naming the first).
    """
    records, skipped = scan_records(Path(root))
    if skipped and strict:
        (path, reason), more = skipped[0], len(skipped) - 1
        others = f" (and {more} more invalid file{'s' if more > 1 else ''})" if more else ""
        raise UserError(f"invalid result file {path}: {reason}{others}; fix or remove it, or leave out --strict "
                        "to skip it with a warning")
    say = warn or logging.getLogger("mtpeft_bench").warning
    for path, reason in skipped:
        say(f"mtbench: warning: skipped {path}: {reason}")
    return records


#: The values of a record's ``eval_split``; the first is what a record without the key means.
EVAL_SPLITS = ("val", "holdout")


def eval_split(record: Mapping[str, Any]) -> str:
    """Which images a record's metrics were scored on: its ``eval_split``, ``val`` when absent."""
    return record.get("eval_split") or EVAL_SPLITS[0]


def select_split(records: Iterable[Mapping[str, Any]], split: str = "val") -> tuple[list, dict[str, int]]:
    """The records scored on ``split`` and, for every other split, how many were left out.

    Leaderboards show one split at a time: a learning-rate selection scored on held-out training
    images (``holdout``) must never be mixed with, or mistaken for, the validation results.
    """
    kept, left_out = [], {}
    for record in records:
        other = eval_split(record)
        if other == split:
            kept.append(record)
        else:
            left_out[other] = left_out.get(other, 0) + 1
    return kept, left_out


def results_root(record: Mapping[str, Any]) -> Path | None:
    """The results folder a loaded record was read from (``<root>/<dataset>/<method>/<run_id>.json``),
    or None for a record that was not read from a file."""
    path = record.get("_path")
    return Path(path).parent.parent.parent if path else None


def stored_path(record: Mapping[str, Any], value: str | None) -> Path | None:
    """A path stored in a record (``config.out``, ``config.runs_dir``, ``config.data_root``,
    ``execution.run_dir``) as a path on this machine: relative ones (records of this version) are
    relative to the record's results folder; absolute ones (records written before) are kept."""
    if value is None or value == "":
        return None
    path = Path(value).expanduser()
    if path.is_absolute():
        return path
    root = results_root(record)
    return Path(os.path.normpath(root / path)) if root is not None else path


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
    ``created``, ``eval_split``, ``config_hash``, ``recipe_key``, ``wall_time_s``, ``weights``, ``delta_m`` and
    ``delta_m_baseline``; ``metric.<task>.<metric>``; ``params.<summary key>`` (e.g.
    ``params.total_trainable``), ``params.group.<group>.trainable|total`` and ``params.optimizer``;
    ``efficiency.<key>`` with nested keys joined by dots (e.g. ``efficiency.latency_ms``,
    ``efficiency.inference.merged.latency_ms``); ``method_info.<key>``; ``path``.
    """
    row: dict[str, Any] = {
        **_identity(record),
        "status": record.get("status"),
        "created": record.get("created"),
        "eval_split": eval_split(record),
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


def load_results(path: str | os.PathLike = "results", *, strict: bool = False):
    """Load every run record under ``path`` into a ``pandas.DataFrame`` (one row per run, flat columns).

    See :func:`flatten_record` for the columns. Torch is not imported. A JSON file that is not a valid
    record is skipped with one warning line naming it and why (``strict=True``: a ``UserError``). Example::

        df = load_results("results")
        df.groupby("method")["delta_m"].agg(["mean", "std"])
    """
    import pandas as pd

    rows = [flatten_record(r) for r in read_records(Path(path), strict=strict)]
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


def load_history(path: str | os.PathLike = "results", *, strict: bool = False):
    """Training curves of every run under ``path`` as a long ``pandas.DataFrame`` (one row per run and
    epoch; columns of :func:`history_rows`). Torch is not imported; invalid files as in :func:`load_results`."""
    import pandas as pd

    rows = [row for record in read_records(Path(path), strict=strict) for row in history_rows(record)]
    return pd.DataFrame(rows)
