"""Rerunning a run from its result record (``mtbench reproduce``), and checking that it agrees.

A record stores the whole resolved configuration (``config``, with the plugin options as given)
and the plugins' resolved options (``method_config``, ``data_config``), so the run can be rebuilt
without the command line that made it. :func:`config_from_record` turns them back into a :class:`~mtpeft_bench.config.RunConfig`
that writes into another results folder; :func:`compare_metrics` compares the final metrics of the
original and the rerun, metric by metric, against an absolute tolerance.

Only where the run writes changes (``out``, ``runs_dir``; ``data_root`` and ``device`` where asked):
none of them is part of the run's identity, so the rerun has the original's ``config_hash`` unless
this version of mtbench resolves the configuration differently (e.g. a plugin gained an option).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from mtpeft_bench.config import RunConfig, apply_overrides, validate
from mtpeft_bench.errors import UserError

#: Settings taken from the record's plugin blocks or set here, not copied from ``config``.
_SPECIAL = ("method_options", "data_options", "loss_weights", "out", "runs_dir", "data_root")


def read_record(path: Path) -> dict[str, Any]:
    """The result record in ``path``, checked as :func:`mtpeft_bench.results.record_problem` checks it.

    Raises:
        UserError: the file cannot be read, is not JSON, not a completed run record, or of another schema.
    """
    from mtpeft_bench.results import record_problem

    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"no file {path}; give the path of a result JSON (results/<dataset>/<method>/<run-id>.json)") \
            from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None
    except json.JSONDecodeError as exc:
        raise UserError(f"{path} is not valid JSON ({exc.msg} at line {exc.lineno}); give a result record") from None
    problem = record_problem(data)
    if problem is not None:
        raise UserError(f"{path} cannot be reproduced: {problem}")
    if data.get("status") != "completed":
        raise UserError(f"{path} is a {data.get('status')} run, not a completed one: there are no metrics to compare")
    if not isinstance(data.get("config"), Mapping) or not data["config"]:
        raise UserError(f"{path} stores no configuration ('config'), so it cannot be rerun")
    data["_path"] = str(path)
    return data


def config_from_record(record: Mapping[str, Any], out: Path, data_root: str | None = None,
                       device: str | None = None) -> RunConfig:
    """The configuration of the run ``record`` describes, writing into ``out``.

    Args:
        out: the results folder of the rerun (its run folders go beside it, as for any run).
        data_root: where the data lives; default: the record's own ``data_root`` (relative ones are
            relative to the record's results folder) or, without one, ``$MTBENCH_DATA``.
        device: another device (default: the record's, usually ``auto``).

    Raises:
        UserError: the record names a setting this mtbench does not know (another version), or a
            value no run can use.
    """
    from mtpeft_bench.results import stored_path

    stored = dict(record["config"])
    known = {f.name for f in dataclasses.fields(RunConfig)}
    unknown = sorted(set(stored) - known)
    if unknown:
        raise UserError(f"the record's configuration has setting{'s' if len(unknown) > 1 else ''} "
                        f"{', '.join(unknown)}, which this mtbench does not know (a record of another version?); "
                        "rerun it with the version named in its environment.versions")
    cfg = RunConfig()
    apply_overrides(cfg, {k: v for k, v in stored.items() if k not in _SPECIAL})
    # The options as given, not the plugins' resolved ones: the configuration hash covers both (the
    # resolved ones through run_hash), so an equal hash shows the plugins resolved them the same way.
    cfg.method_options = dict(stored.get("method_options") or {})
    cfg.data_options = dict(stored.get("data_options") or {})
    cfg.loss_weights = {str(k): float(v) for k, v in (stored.get("loss_weights") or {}).items()}
    cfg.out = str(out)
    cfg.runs_dir = None  # beside the new results folder: never the original's run folders
    root = data_root if data_root else stored_path(record, stored.get("data_root"))
    cfg.data_root = str(root) if root else None
    if device:
        cfg.device = device
    validate(cfg)
    return cfg


@dataclass(frozen=True)
class MetricComparison:
    """One metric of the original run against the rerun."""

    task: str
    metric: str
    original: float | None
    reproduced: float | None
    difference: float | None  # |reproduced − original|; None when either is missing
    agrees: bool


def compare_metrics(original: Mapping[str, Mapping[str, Any]], reproduced: Mapping[str, Mapping[str, Any]],
                    tolerance: float) -> list[MetricComparison]:
    """Every metric of ``original`` (``{task: {metric: value}}``) against ``reproduced``.

    A metric agrees when both values are numbers within ``tolerance`` of each other, or both are
    missing (None or NaN); a metric the rerun lacks does not agree.
    """
    out = []
    for task, values in original.items():
        for name, value in values.items():
            other = (reproduced.get(task) or {}).get(name)
            a, b = _number(value), _number(other)
            if a is None or b is None:
                out.append(MetricComparison(task, name, a, b, None, a is None and b is None))
            else:
                difference = abs(b - a)
                out.append(MetricComparison(task, name, a, b, difference, difference <= tolerance))
    return out


def _number(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    value = float(value)
    return None if math.isnan(value) else value
