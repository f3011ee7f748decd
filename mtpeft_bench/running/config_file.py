"""Run and sweep files: a run's settings, or a sweep's grid and shared settings, in YAML.

A **run file** (``mtbench run --config run.yaml``, ``run(config="run.yaml")``) is a mapping of
settings. Its keys are those of ``--set`` (every :class:`~mtpeft_bench.config.RunConfig` field,
``method.<key>``, ``data.<key>``, ``loss_weights.<task>``) and of the run options (``method``,
``dataset``, ``seed``, ``preset``, ``tasks``, ``epochs``, ``batch_size`` ...; a dash may stand for
the underscore). Plugin options and loss weights may also be nested::

    method: lora
    dataset: synth
    preset: cpu
    epochs: 10
    method_options: {r: 8}      # or: method.r: 8
    loss_weights: {depth: 2.0}  # or: loss_weights.depth: 2.0

The file sits between the preset and the command line: defaults → preset (the file's ``preset``
unless ``--preset`` is given) → the file → command-line options → ``--set``.

A result record, or what ``mtbench run --print-config`` prints (both hold the resolved configuration
under ``config``), is a run file too: it reruns that run, with the same configuration hash.

A **sweep file** (``mtbench sweep --config sweep.yaml``) has a ``grid`` (``method``, ``dataset``,
``seeds``: lists, or comma strings such as ``0-2`` for seeds) and ``settings`` shared by every run
(a run file's keys, bar the grid's)::

    grid:
      method: [full, lora, mtlora]
      dataset: [synth]
      seeds: 0-2
    settings:
      preset: cpu
      epochs: 10

``--method``, ``--dataset`` and ``--seeds`` on the command line replace the grid's lists.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from mtpeft_bench.errors import UserError
from mtpeft_bench.registry import did_you_mean

# Nested mappings of a run file and the --set prefix each of their keys takes.
NESTED = {"method_options": "method", "data_options": "data", "loss_weights": "loss_weights"}
# What a sweep file's grid may span, and the top-level sections of a sweep file.
GRID_KEYS = ("method", "dataset", "seeds")
SWEEP_SECTIONS = ("grid", "settings")
# What --print-config prints: the parts of the result record that say what the run is.
RECORD_PARTS = ("config", "method_config", "data_config", "config_hash")


@dataclass
class RunFile:
    """A run file's settings, flat (``method.r``, not nested), with its preset apart.

    Attributes:
        path: the file (named in error messages).
        preset: the file's preset, or None.
        settings: the other settings, as ``--set`` keys.
    """

    path: Path
    preset: str | None = None
    settings: dict[str, Any] = field(default_factory=dict)


@dataclass
class SweepFile:
    """A sweep file: the grid's lists (None where the file leaves the command line's default) and the
    shared settings."""

    path: Path
    method: str | None = None  # comma lists, as the command-line options take them
    dataset: str | None = None
    seeds: str | None = None
    run: RunFile | None = None


def read_mapping(path: str | Path, what: str) -> dict[str, Any]:
    """The YAML (or JSON) mapping in ``path``.

    Raises:
        UserError: the file is missing, unreadable, not YAML, or not a mapping.
    """
    import yaml

    path = Path(path).expanduser()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{what} {path} does not exist") from None
    except OSError as exc:
        raise UserError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise UserError(f"{what} {path} is not valid YAML{where}: {getattr(exc, 'problem', None) or exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{what} {path} must hold a mapping of settings (key: value), not a {type(data).__name__}")
    return data


def flatten_settings(data: Mapping[str, Any], path: Path) -> RunFile:
    """A run file's mapping as a :class:`RunFile`: dashes to underscores, nested plugin options and
    loss weights to dotted keys, the preset apart. Unknown keys are found when the settings are
    applied (config.apply_overrides, with a did-you-mean)."""
    run = RunFile(path)
    for raw_key, value in data.items():
        key = str(raw_key).strip().replace("-", "_") if "." not in str(raw_key) else str(raw_key).strip()
        if key in NESTED:
            if value is None:
                continue
            if not isinstance(value, dict):
                raise UserError(f"{path}: {key} must be a mapping (e.g. {key}: {{name: value}}), got {value!r}")
            for sub, sub_value in value.items():
                run.settings[f"{NESTED[key]}.{sub}"] = sub_value
        elif key == "preset":
            run.preset = None if value is None else str(value)
        else:
            run.settings[key] = value
    return run


def load_run_file(path: str | Path) -> RunFile:
    """Read a run file (or a result record / ``--print-config`` output: its ``config``).

    Raises:
        UserError: the file cannot be read or is not a mapping of settings.
    """
    path = Path(path).expanduser()
    data = read_mapping(path, "run file")
    if isinstance(data.get("config"), dict):  # a record: the rest of it (metrics, costs ...) is not settings
        return _from_record(flatten_settings(_paths_on_this_machine(data, path), path))
    return flatten_settings(data, path)


def _paths_on_this_machine(data: Mapping[str, Any], path: Path) -> dict[str, Any]:
    """The configuration of a result record with its path settings (stored relative to the record's
    results folder, running/record.py) as paths here; ``--print-config`` output is returned as is."""
    from mtpeft_bench.results import stored_path
    from mtpeft_bench.running.record import PATH_SETTINGS

    config = dict(data["config"])
    if "schema_version" not in data:
        return config
    located = {**data, "_path": str(path)}
    for key in PATH_SETTINGS:
        if config.get(key):
            config[key] = str(stored_path(located, config[key]))
    return config


def _from_record(run: RunFile) -> RunFile:
    """A recorded configuration, with the dataset's own image size and task set put back as "the
    dataset's" (the record stores them resolved; the configuration hash was taken before)."""
    from mtpeft_bench.registry import get_dataset
    from mtpeft_bench.tasks.base import config_from_mapping

    name = run.settings.get("dataset")
    if not name:
        return run
    cls = get_dataset(str(name))
    data_options = {k.split(".", 1)[1]: v for k, v in run.settings.items() if k.startswith("data.")}
    dataset = cls(config_from_mapping(cls.Config, data_options, f"{name} dataset"))
    if run.settings.get("image_size") is not None and list(run.settings["image_size"]) == list(dataset.image_size):
        run.settings["image_size"] = None
    tasks = run.settings.get("tasks")
    if tasks is not None and list(tasks) == [s.name for s in dataset.task_specs(None)]:
        run.settings["tasks"] = None
    return run


def load_sweep_file(path: str | Path) -> SweepFile:
    """Read a sweep file.

    Raises:
        UserError: a missing or malformed file, an unknown section or grid key (with a did-you-mean).
    """
    path = Path(path).expanduser()
    data = read_mapping(path, "sweep file")
    for key in data:
        if key not in SWEEP_SECTIONS:
            hint = did_you_mean(str(key), SWEEP_SECTIONS)
            raise UserError(f"{path}: unknown section '{key}'{'; ' + hint if hint else ''} (a sweep file has "
                            "grid: {method, dataset, seeds} and settings: {...})")
    grid = data.get("grid") or {}
    if not isinstance(grid, dict):
        raise UserError(f"{path}: grid must be a mapping (method: [...], dataset: [...], seeds: [...])")
    sweep = SweepFile(path)
    for key, value in grid.items():
        name = "seeds" if key == "seed" else str(key)
        if name not in GRID_KEYS:
            hint = did_you_mean(name, GRID_KEYS)
            raise UserError(f"{path}: the grid cannot span '{key}'{'; ' + hint if hint else ''} (it spans "
                            f"{', '.join(GRID_KEYS)}; put other settings under settings:)")
        setattr(sweep, name, _comma_list(value))
    settings = data.get("settings") or {}
    if not isinstance(settings, dict):
        raise UserError(f"{path}: settings must be a mapping of settings (key: value)")
    run = flatten_settings(settings, path)
    clash = [k for k in ("method", "dataset", "seed", "seeds") if k in run.settings]
    if clash:
        raise UserError(f"{path}: {clash[0]} belongs under grid:, not settings:")
    sweep.run = run
    return sweep


def _comma_list(value: Any) -> str:
    """A grid entry (a list or a scalar) as the comma list the command-line option takes."""
    items = value if isinstance(value, (list, tuple)) else [value]
    return ",".join(str(v) for v in items)


def settings_as_flags(run: RunFile | None, given: Mapping[str, Any]) -> list[str]:
    """``--set key=value`` flags for a file's settings that the command line does not give itself
    (``given``: the configuration fields set by command-line options), so a printed command runs
    what the file says (the command line's ``--set`` items follow and win)."""
    if run is None:
        return []
    flags = []
    for key, value in run.settings.items():
        if given.get(key) is None:
            flags += ["--set", f"{key}={json.dumps(value) if not isinstance(value, str) else value}"]
    return flags
