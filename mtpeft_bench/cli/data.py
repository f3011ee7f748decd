"""``mtbench data``: get the real datasets in place (``prepare``), check them (``verify``) and draw
samples of any dataset (``show``)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from mtpeft_bench.cli.options import new_or_old, old_spelling, prefixed_settings, require, run_options, split_list
from mtpeft_bench.errors import UserError


EXAMPLES = """\b
Examples:
  mtbench data prepare pascal_mt --from ~/Downloads/PASCAL_MT.tgz --data-root ~/data
  mtbench data prepare nyud --from NYUD_MT.tgz --data-root ~/data --sha256 <64 hex digits>
  mtbench data prepare nyud --from ~/Downloads/NYUD_MT --data-root ~/data --symlink
  mtbench data verify pascal_mt --data-root ~/data --split train,val
  mtbench data show synth --output grid.png --n 4
"""


@click.group()
def data():
    """Get, check and inspect datasets."""


def _plugin(dataset: str, sets: tuple[str, ...], command: str, downloaded: bool = False):
    """The dataset plugin with its ``data.<key>=<value>`` options; ``downloaded``: refuse generated ones."""
    from mtpeft_bench.registry import get_dataset
    from mtpeft_bench.tasks.base import config_from_mapping

    cls = get_dataset(dataset)
    if downloaded and (not cls.requires_root or not hasattr(cls, "layout")):
        raise UserError(f"dataset '{dataset}' is generated, not downloaded; there is nothing to prepare or verify")
    options = prefixed_settings(sets, "data", command)
    return cls(config_from_mapping(cls.Config, options, f"{dataset} dataset"))


def _data_root(value: str | None) -> Path | None:
    return Path(value).expanduser() if value else None


@click.command("prepare", epilog=EXAMPLES)
@click.argument("dataset")
@click.option("--from", "source", required=True, help="The downloaded archive (.tgz), its extracted folder, or a parent.")
@run_options("data_root")
@click.option("--symlink", is_flag=True, help="Link to an extracted folder instead of copying it.")
@click.option("--sha256", "sha256", default=None, metavar="HEX",
              help="Expected SHA-256 of the archive (default: the official digest where one is known).")
@click.option("--no-checksum", is_flag=True, help="Do not check the archive's SHA-256.")
def prepare(dataset, source, data_root, symlink, sha256, no_checksum):
    """Put a downloaded dataset under the data root (archive, extracted folder or parent folder).

    An archive's SHA-256 is checked first, against --sha256 or the official digest where one is
    known; a mismatch names the file and exits with status 2.
    """
    import re

    from mtpeft_bench.tasks.prepare import prepare as prepare_dataset

    if sha256 is not None and not re.fullmatch(r"[0-9a-fA-F]{64}", sha256.strip()):
        raise UserError(f"--sha256 must be 64 hexadecimal digits, got {sha256!r}")
    if sha256 is not None and no_checksum:
        raise UserError("--sha256 and --no-checksum contradict each other; give one of them")
    if sha256 is not None and Path(source).expanduser().is_dir():
        raise UserError(f"--sha256 checks an archive, but {source} is a folder; drop --sha256 or pass the archive")
    plugin = _plugin(dataset, (), "data prepare", downloaded=True)
    dest = prepare_dataset(plugin, Path(source), _data_root(data_root), symlink=symlink, check=not no_checksum,
                           sha256=sha256)  # progress: logged
    click.echo(f"{dataset}: ready in {dest}; use --data-root {dest.parent} (or MTBENCH_DATA={dest.parent}); "
               f"`mtbench data verify {dataset} --data-root {dest.parent}` checks every file")


@click.command("verify", epilog=EXAMPLES)
@click.argument("dataset")
@run_options("data_root")
@click.option("--split", "splits", multiple=True, help="Only these splits (comma-separated or repeated; default: all).")
@click.option("--strict", is_flag=True, help="Also fail when a split's size differs from the official one.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@click.option("--set", "sets", multiple=True, metavar="data.KEY=VALUE", help="Dataset options.")
def verify(dataset, data_root, splits, strict, no_progress, sets):
    """Check layout, split sizes, that every file opens, shapes agree and values are in range.

    Prints one line per problem (starting with the file's path); exit status 1 if any.
    """
    from mtpeft_bench.tasks.verify import verify as verify_dataset

    plugin = _plugin(dataset, sets, "data verify", downloaded=True)

    def bar(split: str, total: int):
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=f"verify {split}", unit="img", disable=no_progress, leave=False, file=sys.stderr)

    chosen = [name for value in splits for name in split_list(value) or ()]
    report = verify_dataset(plugin, _data_root(data_root), list(dict.fromkeys(chosen)) or None, progress=bar)
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


@click.command("show", epilog=EXAMPLES)
@click.argument("dataset")
@click.option("--output", "-o", default=None, help="PNG file to write (required).")
@old_spelling("--out", "old_out", "--output")
@click.option("--n", "count", default=4, show_default=True, help="Number of samples.")
@click.option("--split", default="val", show_default=True)
@click.option("--tasks", "-t", default=None, help="Comma-separated tasks (default: all of the dataset's tasks).")
@run_options("data_root")
@click.option("--set", "sets", multiple=True, metavar="data.KEY=VALUE", help="Dataset options.")
def show(dataset, output, old_out, count, split, tasks, data_root, sets):
    """Draw a few samples with every task map into a PNG."""
    output = require(new_or_old(output, old_out, "--output", "--out"), "--output")
    from mtpeft_bench.running.setup import data_root_for
    from mtpeft_bench.viz import draw_samples

    plugin = _plugin(dataset, sets, "data show")
    if split not in plugin.splits:
        raise UserError(f"dataset '{dataset}' has no split '{split}'; splits: {', '.join(plugin.splits)}")
    if count <= 0:
        raise UserError("--n must be positive")
    names = split_list(tasks) or tuple(plugin.tasks)
    specs = plugin.task_specs(names)
    root = data_root_for(plugin, data_root)  # --data-root, else $MTBENCH_DATA for a dataset on disk
    path = draw_samples(plugin, specs, plugin.resolve_root(root), count, Path(output), split=split)
    click.echo(f"wrote {path}")
