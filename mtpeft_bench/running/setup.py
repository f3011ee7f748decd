"""Before anything is built: the configuration, resolved one way for every entry point; the
plugins and their options; the data root; the run's identity (its configuration hash); the device;
and the output folders, checked writable (not created). Nothing here reads data or builds a model.

Bad input is found cheapest first, so no mistake waits behind a slow step: names (method, dataset,
tasks) and values (settings, plugin options, loss weights) in :func:`resolve_config` and
:func:`prepare`; then paths and weights in :func:`check_before_work` (the data folder, the output
folders, the backbone and its weights, the hub looked at for one second at most); only then do the
model and the data get built.
"""

from __future__ import annotations

import dataclasses
import logging
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from mtpeft_bench.config import RunConfig, config_hash, resolve
from mtpeft_bench.errors import UserError
from mtpeft_bench.registry import did_you_mean, get_dataset, get_method
from mtpeft_bench.tasks.base import config_from_mapping
from mtpeft_bench.tasks.roots import default_data_root


def resolve_config(preset: str | None, options: Mapping[str, Any], sets: Mapping[str, Any] | None = None,
                   config_file: Any = None) -> RunConfig:
    """The configuration of one run, resolved the same way for ``mtbench run``, ``mtbench sweep``
    and the Python ``run(...)``: defaults → the preset (``preset``, else the run file's, else the
    dataset's default preset, e.g. ``cpu`` for ``synth``) → the run file ``config_file``
    (running/config_file.py; a path, or a ``RunFile`` already read) → ``options`` (None values
    ignored) → ``sets``.

    The dataset is the one ``sets``, ``options`` or the file name, else :class:`RunConfig`'s default.

    Raises:
        UserError: an unknown dataset or preset, an unknown setting (in the file too) or a bad value.
    """
    from mtpeft_bench.running.config_file import RunFile, load_run_file

    sets = dict(sets or {})
    if isinstance(config_file, RunFile):
        run_file = config_file
    else:
        run_file = load_run_file(config_file) if config_file is not None else RunFile(Path())
    named = {**run_file.settings, **{k: v for k, v in options.items() if v is not None}, **sets}
    dataset = named.get("dataset") or RunConfig.dataset
    default_preset = getattr(get_dataset(str(dataset)), "default_preset", "paper")
    return resolve(preset or run_file.preset, options, sets, default_preset=default_preset,
                   file=run_file.settings, file_name=str(run_file.path))


def data_root_for(dataset: Any, explicit: str | Path | None) -> Path | None:
    """Where a dataset plugin's data lives: ``explicit`` (``--data-root``), else ``$MTBENCH_DATA``
    for a dataset that needs files on disk; a generated one only honours an explicit root."""
    if explicit:
        return Path(explicit).expanduser()
    return default_data_root() if dataset.requires_root else None


@dataclass
class ResolvedRun:
    """The plugins and their configurations for one run (no torch objects yet)."""

    cfg: RunConfig
    dataset: Any
    task_specs: list
    method_cls: type
    method_cfg: Any
    image_size: tuple[int, int]
    data_root: Path | None

    @property
    def tasks(self) -> list[str]:
        return [s.name for s in self.task_specs]

    def stored_config(self) -> dict[str, Any]:
        """The configuration as the run folder and the result record store it (sizes and tasks resolved)."""
        return {**self.cfg.to_dict(), "image_size": list(self.image_size), "tasks": self.tasks}


def prepare(cfg: RunConfig) -> ResolvedRun:
    """Look up plugins, validate their options and the task list; touch no data yet.

    Raises:
        UserError: unknown method/dataset/task, or invalid plugin options.
    """
    dataset_cls = get_dataset(cfg.dataset)
    method_cls = get_method(cfg.method)
    data_cfg = config_from_mapping(dataset_cls.Config, cfg.data_options, f"{cfg.dataset} dataset")
    method_cfg = config_from_mapping(method_cls.Config, cfg.method_options, f"{cfg.method} method")
    dataset = dataset_cls(data_cfg)
    specs = dataset.task_specs(cfg.tasks)
    trained = [s.name for s in specs]
    unknown = [t for t in cfg.loss_weights if t not in trained]
    if unknown:
        hint = did_you_mean(unknown[0], trained)
        raise UserError(f"loss_weights names task {', '.join(unknown)}, which this run does not train"
                        f"{'; ' + hint if hint else ''} (its tasks: {', '.join(trained)})")
    image_size = tuple(cfg.image_size) if cfg.image_size else tuple(dataset.image_size)
    return ResolvedRun(cfg, dataset, specs, method_cls, method_cfg, image_size, data_root_for(dataset, cfg.data_root))


def plain_fields(obj: Any) -> dict[str, Any]:
    """A plugin configuration (a dataclass) as a dict of its fields; ``{}`` for anything else."""
    return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)} if dataclasses.is_dataclass(obj) else {}


def run_hash(cfg: RunConfig, resolved: ResolvedRun, world_size: int = 1) -> str:
    """The ``config_hash`` of a run: its configuration, plugin options and (above 1) the number of
    processes, which sets the global batch."""
    extra: dict[str, Any] = {"method": plain_fields(resolved.method_cfg), "data": plain_fields(resolved.dataset.config)}
    if world_size > 1:
        extra["world_size"] = world_size
    return config_hash(cfg, extra=extra)


def pick_device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device '{name}'; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("device cuda was asked for, but no CUDA GPU is available; use --set device=cpu")
    return device


def check_writable(out: Path, what: str = "results", fix: str = "choose another folder with --out") -> None:
    """Fail before training, not after, when results (or checkpoints) cannot be written.

    Creates nothing: the check writes and removes a probe file in ``out`` or, while ``out`` does not
    exist yet, in its nearest existing parent (where it will be created). The folder itself is made
    when the first file goes into it, so a run that fails leaves no empty folder behind.
    """
    base = Path(out).absolute()
    while not base.exists() and base.parent != base:
        base = base.parent
    if not base.is_dir():
        raise UserError(f"cannot write {what} to {out}: {base} is not a folder; {fix}")
    try:
        probe = base / f".write-test-{secrets.token_hex(4)}"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise UserError(f"cannot write {what} to {out}: {exc.strerror or exc}; {fix}") from None


def check_before_work(resolved: ResolvedRun, out: Path, runs: Path, is_main: bool = True) -> None:
    """The checks of the loggers' libraries (``--logger``), then of paths and weights, in this order:
    the data folder of a dataset read from disk
    (a generated one gets a one-line warning about ``--data-root``), the results and checkpoint
    folders (on the process that writes), then the backbone and its weights (``--weights timm``:
    the local hub cache, ``HF_HUB_OFFLINE``, a one-second look at the hub).

    Raises:
        UserError: the first problem found, in one line.
    """
    from mtpeft_bench.config import logger_names
    from mtpeft_bench.model.backbone import check_weights
    from mtpeft_bench.train.logging_sinks import check_available

    dataset, cfg = resolved.dataset, resolved.cfg
    if is_main:
        check_available(logger_names(cfg.logger))  # a missing optional library: said before any slow step
    if not dataset.requires_root and cfg.data_root and is_main:
        logging.getLogger("mtpeft_bench").warning(
            f"mtbench: warning: {cfg.dataset} is generated, not read: --data-root only sets the folder its generated "
            f"files are kept in ({resolved.data_root})")
    check_root = getattr(dataset, "check_root", None)  # a plugin that does not subclass DatasetPlugin may lack it
    if check_root is not None:
        check_root(resolved.data_root)  # cheap: looks for marker files, reads no sample, generates nothing
    elif dataset.requires_root:
        dataset.resolve_root(resolved.data_root)
    if is_main:
        check_writable(out)
        check_writable(runs, "checkpoints", "choose another folder with --set runs_dir=...")
    check_weights(cfg.backbone, cfg.weights)
