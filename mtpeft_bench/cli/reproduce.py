"""``mtbench reproduce RESULT.json``: rerun a run from the configuration in its result record, into
another results folder, and compare the rerun's metrics with the record's.

Exit status 0 when every metric agrees within ``--tolerance``, 1 when some differ (the table says
which), 2 for bad input (one line). The library side is :mod:`mtpeft_bench.running.reproduce`.
"""

from __future__ import annotations

import os
from pathlib import Path

import click

from mtpeft_bench.errors import UserError


EXAMPLES = """\b
Examples:
  mtbench reproduce results/synth/full/20261201-101500-1a2b3c4d-s0-0001.json
  mtbench reproduce RESULT.json --out /tmp/rerun --tolerance 1e-3
  mtbench reproduce RESULT.json --data-root ~/data   # a dataset read from disk, kept elsewhere here
"""


def _same_folder(a: Path, b: Path) -> bool:
    return os.path.abspath(a.expanduser()) == os.path.abspath(b.expanduser())


@click.command(epilog=EXAMPLES)
@click.argument("result", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--out", default=None, type=click.Path(file_okay=False, path_type=Path),
              help="Results folder of the rerun (default: a new temporary folder); never the record's own.")
@click.option("--tolerance", default=1e-4, show_default=True, type=click.FloatRange(min=0),
              help="Largest absolute difference of a metric that still counts as the same.")
@click.option("--data-root", default=None, help="Where the data lives (default: the record's, else $MTBENCH_DATA).")
@click.option("--device", default=None, help="Run on this device instead of the record's (auto, cpu, cuda:N).")
def reproduce(result, out, tolerance, data_root, device):
    """Rerun the run of a result record from the configuration stored in it, into a new results folder,
    and compare every final metric with the record's (exit status 1 if any differs by more than
    --tolerance). On the same machine and software a run reproduces to 1e-4."""
    from mtpeft_bench.results import results_root
    from mtpeft_bench.running.reproduce import compare_metrics, config_from_record, read_record

    original = read_record(result)
    world_size = int((original.get("execution") or {}).get("world_size") or 1)
    if world_size != int(os.environ.get("WORLD_SIZE", "1")):
        raise UserError(f"{result} was run with {world_size} processes; rerun it the same way "
                        f"(torchrun --nproc_per_node {world_size} -m mtpeft_bench reproduce ...)")
    if out is None:
        import tempfile

        out = Path(tempfile.mkdtemp(prefix="mtbench-reproduce-")) / "results"
    elif _same_folder(out, results_root(original)):
        raise UserError(f"--out {out} is the results folder of the record itself; choose another folder, so the "
                        "rerun does not join the original runs")
    cfg = config_from_record(original, out, data_root=data_root, device=device)

    from mtpeft_bench.running.pipeline import run as run_one
    from mtpeft_bench.train.failures import RunFailed

    try:
        rerun = run_one(cfg)
    except RunFailed as exc:
        raise click.ClickException(str(exc)) from None
    if rerun.outcome != "completed":
        return  # another process of a torchrun writes and compares
    rows = compare_metrics(original.get("metrics") or {}, rerun.record.get("metrics") or {}, tolerance)
    _print_comparison(rows, tolerance)
    if rerun.record.get("config_hash") != original.get("config_hash"):
        click.echo("mtbench: warning: the rerun's configuration hash differs from the record's: this mtbench resolves "
                   "the configuration differently (compare method_config and data_config of the two records)",
                   err=True)
    click.echo(f"original: {result}\nrerun:    {rerun.path}")
    differing = [r for r in rows if not r.agrees]
    if differing:
        raise click.ClickException(f"{len(differing)} of {len(rows)} metrics differ by more than {tolerance:g}: "
                                   + ", ".join(f"{r.task}.{r.metric}" for r in differing))
    click.echo(f"reproduced: all {len(rows)} metrics agree within {tolerance:g}")


def _print_comparison(rows, tolerance: float) -> None:
    from tabulate import tabulate

    def show(value):
        return "—" if value is None else f"{value:.6g}"

    table = [[r.task, r.metric, show(r.original), show(r.reproduced), show(r.difference),
              "ok" if r.agrees else "DIFFERS"] for r in rows]
    click.echo(tabulate(table, headers=["task", "metric", "original", "rerun", "|difference|",
                                        f"within {tolerance:g}"], tablefmt="simple", disable_numparse=True))
