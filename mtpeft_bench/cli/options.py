"""Options and parsing shared by the commands: the run options (declared once, here), comma lists, seeds,
and the old spellings of renamed options.

``mtbench run`` declares what a run is with :data:`RUN_OPTIONS`; ``params`` takes the part that
builds the model and ``sweep`` takes all of them, so every command spells an option the same way.
A command receives the run options it declares as keyword arguments (collect them with
``**options``); :func:`resolve_config` and :func:`config_fields` turn them into a run configuration,
and :func:`command_line` writes them back as flags (for ``sweep --print-commands``).

One flag means one thing in every command: ``--out`` is a folder, ``--output/-o`` a file,
``--format`` the output's form, and a list option takes the singular name with comma-separated
values. Options renamed to keep it so accept their old spelling for one release
(:func:`old_spelling`, :func:`new_or_old`), each use printing one deprecation line on stderr.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Callable, Mapping

import click
from click.core import ParameterSource

from mtpeft_bench.errors import UserError

if TYPE_CHECKING:
    from mtpeft_bench.config import RunConfig


# The plugins of one run (run, params).
method_option = click.option("--method", "-m", required=True, help="Method plugin (see `mtbench ls methods`).")
dataset_option = click.option("--dataset", "-d", default="synth", show_default=True, help="Dataset plugin.")

# The run options: name (the keyword the command receives) -> (click declarations, click settings).
# The first declaration is the flag a generated command line writes; the order here is the order of
# a generated command line and of `mtbench sweep --help`.
RUN_OPTIONS: dict[str, tuple[tuple[str, ...], dict[str, Any]]] = {
    "tasks": (("--tasks", "-t"), dict(default=None, help="Comma-separated tasks (default: the dataset's task set).")),
    "preset": (("--preset", "-p"),
               dict(default=None, help="smoke | cpu | bench | paper (default: the dataset's default preset).")),
    "backbone": (("--backbone",), dict(default=None, help="timm Swin name or swin_micro (overrides the preset).")),
    "weights": (("--weights",), dict(default=None, help="none | timm | builtin | PATH to a checkpoint.")),
    "epochs": (("--epochs",), dict(type=int, default=None, help="Training epochs (overrides the preset).")),
    "batch_size": (("--batch-size",),
                   dict(type=int, default=None, help="Batch size per process (overrides the preset).")),
    "data_root": (("--data-root",), dict(default=None, help="Where the datasets live (default: $MTBENCH_DATA).")),
    "out": (("--out",), dict(default=None, help="Results folder (default: results/ under the current folder).")),
    "device": (("--device",), dict(default=None, help="auto | cpu | cuda | cuda:N (default auto).")),
    "tag": (("--tag",), dict(default=None, help="A label stored with the result and shown by compare.")),
    "sets": (("--set", "sets"), dict(multiple=True, metavar="KEY=VALUE",
                                     help="Override a setting: epochs=10, base_lr=1e-3, method.<key>=..., "
                                          "data.<key>=..., loss_weights.<task>=... (repeatable).")),
    "no_progress": (("--no-progress",), dict(is_flag=True, help="No progress bars (for log files).")),
    "logger": (("--logger",), dict(default=None, metavar="NAME[,NAME]",
                                   help="Also log to tensorboard and/or wandb (optional extras; wandb offline unless "
                                        "WANDB_MODE says otherwise). metrics.jsonl in the run folder is always "
                                        "written.")),
}

# What the model is (all `params` needs), and how a run trains and where it writes.
MODEL_OPTIONS = ("tasks", "preset", "backbone", "weights", "sets")
TRAINING_OPTIONS = ("epochs", "batch_size", "data_root", "out", "device", "tag", "no_progress", "logger")

# Not fields of the run configuration: config.resolve takes the preset and the --set items apart.
_NOT_FIELDS = ("preset", "sets")


def run_options(*names: str) -> Callable[[Callable], Callable]:
    """Decorator adding the named run options (all of them, in table order, when none is named)."""
    chosen = names or tuple(RUN_OPTIONS)

    def decorate(fn: Callable) -> Callable:
        for name in reversed(chosen):  # click lists options in the order their decorators are written
            declarations, settings = RUN_OPTIONS[name]
            fn = click.option(*declarations, **settings)(fn)
        return fn

    return decorate


def split_list(text: str | None) -> tuple[str, ...] | None:
    """``"a, b,,c"`` -> ``("a", "b", "c")``; None or ``""`` -> None (the option was not given)."""
    if not text:
        return None
    return tuple(item.strip() for item in str(text).split(",") if item.strip())


def parse_list(text: str | None, what: str) -> list[str]:
    """A comma list that must name something (each name once), e.g. a sweep's ``--method``."""
    items = split_list(text)
    if not items:
        raise UserError(f"--{what} needs at least one name (comma-separated)")
    return list(dict.fromkeys(items))


def parse_seeds(text: str) -> list[int]:
    """``"0,1,2"`` or ``"0-2"`` (or a mix) → ``[0, 1, 2]``."""
    seeds: list[int] = []
    for part in split_list(str(text)) or ():
        lo, sep, hi = part.partition("-")
        try:
            seeds.extend(range(int(lo), int(hi) + 1) if sep else [int(part)])
        except ValueError:
            raise UserError(f"--seeds takes integers and ranges like 0,1,2 or 0-4, got '{part}'") from None
    if not seeds:
        raise UserError("--seeds needs at least one seed")
    return list(dict.fromkeys(seeds))


def config_fields(options: Mapping[str, Any]) -> dict[str, Any]:
    """The given run options as run-configuration fields (None: not given, the preset decides)."""
    fields: dict[str, Any] = {}
    for name, value in options.items():
        if name in _NOT_FIELDS:
            continue
        if name == "tasks":
            fields["tasks"] = split_list(value) or (None if value is None else ())  # () given empty: an error
        elif name == "no_progress":
            fields["progress"] = False if value else None
        else:
            fields[name] = value
    return fields


def resolve_config(dataset: str | None, options: Mapping[str, Any], config_file: str | None = None,
                   **fields: Any) -> RunConfig:
    """The run configuration of ``dataset`` from the run options (and ``fields`` such as method, seed),
    over the run file ``config_file`` when one is given (None values: not given).

    Raises:
        UserError: an unknown dataset, preset or setting, or a value no run can use.
    """
    from mtpeft_bench.config import parse_sets
    from mtpeft_bench.running.setup import resolve_config as resolve_run_config  # the one resolution of every entry point

    cfg = resolve_run_config(options.get("preset"), {"dataset": dataset, **fields, **config_fields(options)},
                             parse_sets(options.get("sets", ())), config_file=config_file)
    logging.getLogger("mtpeft_bench").debug(f"mtbench: resolved configuration: {cfg}")  # shown by mtbench -v
    return cfg


def command_line(options: Mapping[str, Any]) -> list[str]:
    """The flags that give ``options`` again (those not given are left out), in table order."""
    argv: list[str] = []
    for name, (declarations, settings) in RUN_OPTIONS.items():
        value, flag = options.get(name), declarations[0]
        if settings.get("is_flag"):
            argv += [flag] if value else []
        elif settings.get("multiple"):
            for item in value or ():
                argv += [flag, str(item)]
        elif value is not None:
            argv += [flag, str(value)]
    return argv


def prefixed_settings(sets: tuple[str, ...], prefix: str, command: str) -> dict[str, Any]:
    """The ``--set`` items of a command that takes only ``<prefix>.<key>=<value>`` (plugin options),
    without the prefix.

    Raises:
        UserError: an item without ``=`` or with another key.
    """
    from mtpeft_bench.config import parse_sets

    overrides = parse_sets(sets)
    bad = [k for k in overrides if not k.startswith(f"{prefix}.")]
    if bad:
        raise UserError(f"{command} takes only {prefix}.<key>=<value> settings, not {', '.join(bad)}")
    return {k[len(prefix) + 1:]: v for k, v in overrides.items()}


def deprecation_line(old: str, new: str) -> str:
    """The one line on stderr that a use of the old spelling ``old`` of ``new`` prints."""
    return f"mtbench: {old} is deprecated; use {new} (the old spelling will be removed in the next release)"


def old_spelling(old: str, name: str, new: str, **settings: Any) -> Callable[[Callable], Callable]:
    """Decorator adding ``old``, the previous spelling of ``new``, as a hidden option (kept one release).

    Its value arrives as the keyword ``name`` (None when not given; merge it with
    :func:`new_or_old`); given on the command line, it prints :func:`deprecation_line` once.
    """
    def warn(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
        if ctx.get_parameter_source(param.name) is ParameterSource.COMMANDLINE:
            click.echo(deprecation_line(old, new), err=True)
        return value

    return click.option(old, name, hidden=True, default=None, callback=warn, **settings)


def new_or_old(new_value: Any, old_value: Any, new: str, old: str, default: Any = None) -> Any:
    """The value of an option given in its new spelling ``new`` or its old one ``old`` (else ``default``).

    Raises:
        click.UsageError: both spellings given.
    """
    if old_value is None:
        return default if new_value is None else new_value
    if new_value is not None:
        raise click.UsageError(f"{old} is the old spelling of {new}; give only {new}",
                              click.get_current_context(silent=True))
    return old_value


def require(value: Any, flag: str) -> Any:
    """``value``, which a required option (or its old spelling) gave.

    Raises:
        click.UsageError: neither spelling was given (as click words a missing required option).
    """
    if value is None:
        raise click.UsageError(f"Missing option '{flag}'.", click.get_current_context(silent=True))
    return value
