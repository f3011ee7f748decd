"""The ``mtbench`` command line (click).

Commands import torch only when they need it: ``ls`` and ``compare`` never do. Bad input is
answered with one line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from mtpeft_bench.errors import UserError


EXAMPLES_RUN = """\b
Examples:
  mtbench run --method full --dataset synth --preset smoke
  mtbench run --method full --dataset synth --tasks depth --preset smoke   # a single-task baseline
  mtbench run --method decoder_only --dataset synth --preset smoke --seed 1
  mtbench run --method full --dataset nyud --data-root ~/data --set epochs=100 --set base_lr=1e-3
  mtbench run --method full --dataset synth --preset smoke --resume        # continue an interrupted run
  torchrun --nproc_per_node 2 -m mtpeft_bench run --method full --preset smoke   # 2 processes (DDP)
"""


def _split_tasks(value: str | None) -> tuple[str, ...] | None:
    if not value:
        return None
    return tuple(t.strip() for t in value.split(",") if t.strip())


def _resolve_cfg(dataset: str, preset: str | None, options: dict[str, Any], sets: tuple[str, ...]):
    from mtpeft_bench.config import parse_sets
    from mtpeft_bench.runs.setup import resolve_config

    return resolve_config(preset, {"dataset": dataset, **options}, parse_sets(sets))


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(package_name="mtpeft-bench", prog_name="mtbench")
def cli() -> None:
    """mtbench: multi-task parameter-efficient fine-tuning of Swin transformers on dense prediction.

    One training loop, one set of heads, one protocol for every method; results as JSON,
    leaderboards with Δm, parameters, memory and speed.
    """


run_options = [
    click.option("--method", "-m", required=True, help="Method plugin (see `mtbench ls methods`)."),
    click.option("--dataset", "-d", default="synth", show_default=True, help="Dataset plugin."),
    click.option("--tasks", "-t", default=None, help="Comma-separated tasks (default: the dataset's task set)."),
    click.option("--preset", "-p", default=None, help="smoke | cpu | paper (default: the dataset's default preset)."),
    click.option("--backbone", default=None, help="timm Swin name or swin_micro (overrides the preset)."),
    click.option("--weights", default=None, help="none | timm | builtin | PATH to a checkpoint."),
    click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
                 help="Override a setting: epochs=10, base_lr=1e-3, method.<key>=..., data.<key>=..., "
                      "loss_weights.<task>=... (repeatable)."),
]


def _apply(options):
    def decorate(fn):
        for option in reversed(options):
            fn = option(fn)
        return fn

    return decorate


@cli.command(epilog=EXAMPLES_RUN)
@_apply(run_options)
@click.option("--seed", type=int, default=None, help="Random seed (default 0).")
@click.option("--epochs", type=int, default=None, help="Training epochs (overrides the preset).")
@click.option("--batch-size", type=int, default=None, help="Batch size per process (overrides the preset).")
@click.option("--data-root", default=None, help="Where the dataset lives (default: $MTBENCH_DATA).")
@click.option("--out", default=None, help="Results folder (default: results/ under the current folder).")
@click.option("--device", default=None, help="auto | cpu | cuda | cuda:N (default auto).")
@click.option("--tag", default=None, help="A label stored with the result and shown by compare.")
@click.option("--no-progress", is_flag=True, help="No progress bars (for log files).")
@click.option("--resume", is_flag=False, flag_value="latest", default=None, metavar="[RUN_ID]",
              help="Continue the newest interrupted run of this configuration (or RUN_ID); starts one if there is "
                   "none; does nothing if it already completed. Checkpoints live in runs/ beside --out.")
def run(method, dataset, tasks, preset, backbone, weights, sets, seed, epochs, batch_size, data_root, out, device,
        tag, no_progress, resume):
    """Train and evaluate one method on one dataset; write one result JSON.

    Under torchrun every process runs this command with the same options (--batch-size is per
    process; the LR follows the global batch); rank 0 writes the result and the checkpoints.
    """
    options = dict(method=method, tasks=_split_tasks(tasks), backbone=backbone, weights=weights, seed=seed,
                   epochs=epochs, batch_size=batch_size, data_root=data_root, out=out, device=device, tag=tag,
                   progress=False if no_progress else None)
    cfg = _resolve_cfg(dataset, preset, options, sets)
    from mtpeft_bench.runs.pipeline import run as run_one
    from mtpeft_bench.runs.summary import log_to_stderr, print_summary
    from mtpeft_bench.train.failures import RunFailed

    log_to_stderr()
    try:
        print_summary(run_one(cfg, resume=True if resume == "latest" else resume))
    except RunFailed as exc:
        raise click.ClickException(str(exc)) from None


@cli.command()
@_apply(run_options)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def params(method, dataset, tasks, preset, backbone, weights, sets, as_json):
    """Print the grouped parameter counts of a method's model (no data, no training).

    The model is built at the dataset's image size for its task set, with random weights.
    """
    from tabulate import tabulate

    cfg = _resolve_cfg(dataset, preset, dict(method=method, tasks=_split_tasks(tasks), backbone=backbone), sets)
    from mtpeft_bench.backbone import create_backbone
    from mtpeft_bench.measure import parameter_groups, parameter_summary
    from mtpeft_bench.model import build_model, task_outputs_of
    from mtpeft_bench.runs.setup import prepare

    resolved = prepare(cfg)
    backbone_model, _ = create_backbone(cfg.backbone, resolved.image_size, "none", cfg.drop_path)
    model, ids = build_model(resolved.method_cls(), resolved.method_cfg, backbone_model,
                             task_outputs_of(resolved.task_specs))
    groups = parameter_groups(model, ids)
    summary = parameter_summary(groups)
    info = {
        "method": cfg.method, "dataset": cfg.dataset, "tasks": [s.name for s in resolved.task_specs],
        "backbone": cfg.backbone, "image_size": list(resolved.image_size),
        "method_config": {k: v for k, v in vars(resolved.method_cfg).items()}, "groups": groups, "summary": summary,
    }
    if as_json:
        click.echo(json.dumps(info, indent=2, default=str))
        return
    click.echo(f"{cfg.method} on {cfg.dataset} [{', '.join(info['tasks'])}], {cfg.backbone} at "
               f"{resolved.image_size[0]}x{resolved.image_size[1]}")
    rows = [[g, f"{c['trainable']:,}", f"{c['total']:,}"] for g, c in groups.items()]
    click.echo(tabulate(rows, headers=["group", "trainable", "total"], tablefmt="simple", disable_numparse=True))
    click.echo("")
    click.echo(tabulate([[k, f"{v:,}"] for k, v in summary.items()], headers=["summary", "parameters"],
                        tablefmt="simple", disable_numparse=True))


EXAMPLES_COMPARE = """\b
Examples:
  mtbench compare                                   # every run under results/, one table per dataset
  mtbench compare --results /tmp/runs --method full,decoder_only --sort params
  mtbench compare --dataset pascal_mt --reference   # with the published rows beside the suite's runs
  mtbench compare --format latex --output table.tex
"""


@cli.command(epilog=EXAMPLES_COMPARE)
@click.option("--results", "results_dir", default="results", show_default=True, help="Folder of result JSONs.")
@click.option("--dataset", "-d", default=None, help="Only this dataset.")
@click.option("--method", "-m", "methods", default=None, help="Only these methods (comma-separated).")
@click.option("--tag", "tags", default=None, help="Only runs with these tags (comma-separated).")
@click.option("--format", "fmt", type=click.Choice(["md", "csv", "latex", "html"]), default="md", show_default=True)
@click.option("--sort", default="delta_m", show_default=True,
              type=click.Choice(["delta_m", "params", "flops", "memory", "train", "infer", "latency", "method"]),
              help="Order of the rows inside each dataset and task set.")
@click.option("--reference", is_flag=True, help="Add the published rows of tasks/reference/<dataset>.yaml.")
@click.option("--param-groups", is_flag=True, help="Add trainable parameters by group (method, extras, "
              "linears, decoder).")
@click.option("--baseline-method", default="full", show_default=True,
              help="Method whose single-task runs are the Δm baselines.")
@click.option("--output", "-o", default=None, help="Write to this file instead of standard output.")
def compare(results_dir, dataset, methods, tags, fmt, sort, reference, param_groups, baseline_method, output):
    """Leaderboard of all runs: per-task metrics, Δm, Pareto front, parameters, FLOPs, memory, speed."""
    from mtpeft_bench.report import leaderboard, render_document, with_published
    from mtpeft_bench.results import read_records

    path = Path(results_dir)
    records = read_records(path) if path.exists() else []
    if not records and not (reference and dataset):
        raise UserError(f"no result files under {path}; run `mtbench run ...` first or pass --results DIR"
                        if path.exists() else
                        f"no results folder {path}; run `mtbench run ...` first or pass --results DIR")
    rows = leaderboard(records, dataset=dataset, baseline_method=baseline_method, methods=_split_tasks(methods),
                       tags=_split_tasks(tags), sort=sort)
    if reference:
        rows = with_published(rows, [dataset] if dataset else {r["dataset"] for r in rows}, sort)
    if not rows:
        wanted = ", ".join(f"{k} {v}" for k, v in (("dataset", dataset), ("methods", methods), ("tags", tags)) if v)
        raise UserError(f"no completed runs under {path}" + (f" for {wanted}" if wanted else ""))
    text = render_document(rows, fmt, baseline_method=baseline_method, param_groups=param_groups)
    if output:
        from mtpeft_bench.results import write_text_atomic

        click.echo(f"wrote {write_text_atomic(Path(output), text)}")
    else:
        click.echo(text, nl=False)


@cli.command()
@click.argument("what", type=click.Choice(["methods", "datasets", "presets", "all"]), default="all")
def ls(what):
    """List methods, datasets and presets (without importing torch)."""
    from mtpeft_bench.config import PRESET_HELP
    from mtpeft_bench.registry import dataset_registry, method_registry

    sections = []
    if what in ("methods", "all"):
        sections.append(("methods", method_registry.index()))
    if what in ("datasets", "all"):
        sections.append(("datasets", dataset_registry.index()))
    for title, index in sections:
        click.echo(f"{title}:")
        width = max((len(n) for n in index), default=0)
        for name in sorted(index):
            entry = index[name]
            origin = "" if entry.source == "builtin" else f"  [{entry.source}]"
            click.echo(f"  {name.ljust(width)}  {entry.description}{origin}")
    if what in ("presets", "all"):
        click.echo("presets:")
        for name, text in PRESET_HELP.items():
            click.echo(f"  {name.ljust(6)}  {text}")


@cli.group()
def data():
    """Get, check and inspect datasets."""


@data.command("show")
@click.argument("dataset")
@click.option("--out", required=True, help="PNG file to write.")
@click.option("--n", "count", default=4, show_default=True, help="Number of samples.")
@click.option("--split", default="val", show_default=True)
@click.option("--tasks", "-t", default=None, help="Comma-separated tasks (default: all of the dataset's tasks).")
@click.option("--data-root", default=None, help="Where the dataset lives (default: $MTBENCH_DATA).")
@click.option("--set", "sets", multiple=True, metavar="data.KEY=VALUE", help="Dataset options.")
def data_show(dataset, out, count, split, tasks, data_root, sets):
    """Draw a few samples with every task map into a PNG."""
    import os

    from mtpeft_bench.config import parse_sets
    from mtpeft_bench.registry import get_dataset
    from mtpeft_bench.tasks.base import config_from_mapping
    from mtpeft_bench.viz import draw_samples

    overrides = parse_sets(sets)
    bad = [k for k in overrides if not k.startswith("data.")]
    if bad:
        raise UserError(f"data show takes only data.<key>=<value> settings, not {', '.join(bad)}")
    cls = get_dataset(dataset)
    plugin = cls(config_from_mapping(cls.Config, {k[5:]: v for k, v in overrides.items()}, f"{dataset} dataset"))
    if split not in plugin.splits:
        raise UserError(f"dataset '{dataset}' has no split '{split}'; splits: {', '.join(plugin.splits)}")
    if count <= 0:
        raise UserError("--n must be positive")
    names = _split_tasks(tasks) or tuple(plugin.tasks)
    specs = plugin.task_specs(names)
    root_value = data_root or (os.environ.get("MTBENCH_DATA") if plugin.requires_root else None)
    root = plugin.resolve_root(Path(root_value).expanduser() if root_value else None)
    path = draw_samples(plugin, specs, root, count, Path(out), split=split)
    click.echo(f"wrote {path}")


from mtpeft_bench import cli_data  # noqa: E402  (prepare / verify of the real datasets)
from mtpeft_bench.cli_pretrain import pretrain as _pretrain  # noqa: E402  (a command in its own module)
from mtpeft_bench.cli_report import register as _register_report_commands  # noqa: E402  (plot, bench)
from mtpeft_bench.cli_sweep import sweep  # noqa: E402  (a command in its own module)

cli_data.register(data)
cli.add_command(sweep)
cli.add_command(_pretrain)
_register_report_commands(cli)


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``mtbench`` script: run the CLI, turn bad input into one line and exit 2."""
    try:
        code = cli.main(args=argv, prog_name="mtbench", standalone_mode=False)
    except UserError as exc:
        click.echo(f"mtbench: error: {_one_line(exc)}", err=True)
        sys.exit(UserError.exit_code)
    except click.UsageError as exc:
        where = exc.ctx.command_path if exc.ctx is not None else "mtbench"
        click.echo(f"{where}: error: {_one_line(exc.format_message())} (see '{where} --help')", err=True)
        sys.exit(2)
    except click.ClickException as exc:
        click.echo(f"mtbench: error: {_one_line(exc.format_message())}", err=True)
        sys.exit(exc.exit_code or 1)
    except (KeyboardInterrupt, click.Abort):
        click.echo("mtbench: interrupted", err=True)
        sys.exit(130)
    sys.exit(code or 0)
