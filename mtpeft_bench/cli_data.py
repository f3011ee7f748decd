"""``mtbench data prepare`` and ``mtbench data verify``: get the real datasets in place and check them.

Registered in the ``data`` group of :mod:`mtpeft_bench.cli` by :func:`register`.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from mtpeft_bench.errors import UserError


EXAMPLES = """\b
Examples:
  mtbench data prepare pascal_mt --from ~/Downloads/PASCAL_MT.tgz --data-root ~/data
  mtbench data prepare nyud --from ~/Downloads/NYUD_MT --data-root ~/data --symlink
  mtbench data verify pascal_mt --data-root ~/data
"""


def _plugin(dataset: str, sets: tuple[str, ...] = ()):
    from mtpeft_bench.config import parse_sets
    from mtpeft_bench.registry import get_dataset
    from mtpeft_bench.tasks.base import config_from_mapping

    cls = get_dataset(dataset)
    if not cls.requires_root or not hasattr(cls, "layout"):
        raise UserError(f"dataset '{dataset}' is generated, not downloaded; there is nothing to prepare or verify")
    overrides = parse_sets(sets)
    bad = [k for k in overrides if not k.startswith("data.")]
    if bad:
        raise UserError(f"only data.<key>=<value> settings apply here, not {', '.join(bad)}")
    return cls(config_from_mapping(cls.Config, {k[5:]: v for k, v in overrides.items()}, f"{dataset} dataset"))


def _data_root(value: str | None) -> Path | None:
    return Path(value).expanduser() if value else None


@click.command("prepare", epilog=EXAMPLES)
@click.argument("dataset")
@click.option("--from", "source", required=True, help="The downloaded archive (.tgz), its extracted folder, or a parent.")
@click.option("--data-root", default=None, help="Where datasets live (default: $MTBENCH_DATA).")
@click.option("--symlink", is_flag=True, help="Link to an extracted folder instead of copying it.")
def prepare_cmd(dataset, source, data_root, symlink):
    """Put a downloaded dataset under the data root (archive, extracted folder or parent folder)."""
    from mtpeft_bench.tasks.prepare import prepare

    plugin = _plugin(dataset)
    dest = prepare(plugin, Path(source), _data_root(data_root), symlink=symlink,
                   progress=lambda msg: click.echo(msg, err=True))
    click.echo(f"{dataset}: ready in {dest}; use --data-root {dest.parent} (or MTBENCH_DATA={dest.parent}); "
               f"`mtbench data verify {dataset} --data-root {dest.parent}` checks every file")


@click.command("verify", epilog=EXAMPLES)
@click.argument("dataset")
@click.option("--data-root", default=None, help="Where datasets live (default: $MTBENCH_DATA).")
@click.option("--split", "splits", multiple=True, help="Only this split (repeatable; default: all).")
@click.option("--strict", is_flag=True, help="Also fail when a split's size differs from the official one.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@click.option("--set", "sets", multiple=True, metavar="data.KEY=VALUE", help="Dataset options.")
def verify_cmd(dataset, data_root, splits, strict, no_progress, sets):
    """Check layout, split sizes, that every file opens, shapes agree and values are in range.

    Prints one line per problem (starting with the file's path); exit status 1 if any.
    """
    from mtpeft_bench.tasks.verify import verify

    plugin = _plugin(dataset, sets)

    def bar(split: str, total: int):
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=f"verify {split}", unit="img", disable=no_progress, leave=False, file=sys.stderr)

    report = verify(plugin, _data_root(data_root), splits or None, progress=bar)
    for note in report.notes:
        click.echo(f"note: {note}")
    for problem in report.problems:
        click.echo(f"problem: {problem}")
    sizes = ", ".join(f"{s} {n}" for s, n in report.samples.items())
    if report.ok(strict):
        click.echo(f"{dataset}: OK — {report.folder} ({sizes}; {report.files_checked} files checked)")
        return
    failures = len(report.problems) + (len(report.notes) if strict else 0)
    click.echo(f"{dataset}: {failures} problem(s) in {report.folder} ({sizes}; {report.files_checked} files read)")
    sys.exit(1)


def register(group: click.Group) -> None:
    """Add ``prepare`` and ``verify`` to the ``mtbench data`` group."""
    group.add_command(prepare_cmd)
    group.add_command(verify_cmd)
