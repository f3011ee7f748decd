"""``mtbench compare`` and ``mtbench plot``: leaderboards and figures from result JSONs.

Both read result files only and never import torch.
"""

from __future__ import annotations

from pathlib import Path

import click

from mtpeft_bench.cli.options import split_list
from mtpeft_bench.errors import UserError


# The options that choose which results both commands read.
results_option = click.option("--results", "results_dir", default="results", show_default=True,
                              help="Folder of result JSONs.")
dataset_option = click.option("--dataset", "-d", default=None, help="Only this dataset.")
methods_option = click.option("--method", "-m", "methods", default=None,
                              help="Only these methods (comma-separated).")
tags_option = click.option("--tag", "tags", default=None, help="Only runs with these tags (comma-separated).")
baseline_option = click.option("--baseline-method", default="full", show_default=True,
                               help="Method whose single-task runs are the Δm baselines.")
strict_option = click.option("--strict", is_flag=True, help="A JSON file under --results that is not a valid "
                             "result record is an error (by default it is skipped with a warning naming it).")


def read_results(path: Path, strict: bool) -> list[dict]:
    """The records under ``path``; each file that is not a valid record is named on stderr (or, strict, an error)."""
    from mtpeft_bench.results import read_records

    return read_records(path, strict=strict, warn=lambda line: click.echo(line, err=True))


EXAMPLES_COMPARE = """\b
Examples:
  mtbench compare                                   # every run under results/, one table per dataset
  mtbench compare --results /tmp/runs --method full,decoder_only --sort params
  mtbench compare --dataset pascal_mt --reference   # with the published rows beside the suite's runs
  mtbench compare --format latex --output table.tex
"""


@click.command(epilog=EXAMPLES_COMPARE)
@results_option
@dataset_option
@methods_option
@tags_option
@click.option("--format", "fmt", type=click.Choice(["md", "csv", "latex", "html"]), default="md", show_default=True)
@click.option("--sort", default="delta_m", show_default=True,
              type=click.Choice(["delta_m", "params", "flops", "memory", "train", "infer", "latency", "method"]),
              help="Order of the rows inside each dataset and task set.")
@click.option("--reference", is_flag=True, help="Add the published rows of tasks/reference/<dataset>.yaml.")
@click.option("--param-groups", is_flag=True, help="Add trainable parameters by group (method, extras, "
              "linears, decoder).")
@baseline_option
@strict_option
@click.option("--output", "-o", default=None, help="Write to this file instead of standard output.")
def compare(results_dir, dataset, methods, tags, fmt, sort, reference, param_groups, baseline_method, strict, output):
    """Leaderboard of all runs: per-task metrics, Δm, Pareto front, parameters, FLOPs, memory, speed."""
    from mtpeft_bench.report.rows import leaderboard, render_document, with_published

    path = Path(results_dir)
    records = read_results(path, strict) if path.exists() else []
    if not records and not (reference and dataset):
        raise UserError(f"no result files under {path}; run `mtbench run ...` first or pass --results DIR"
                        if path.exists() else
                        f"no results folder {path}; run `mtbench run ...` first or pass --results DIR")
    rows = leaderboard(records, dataset=dataset, baseline_method=baseline_method, methods=split_list(methods),
                       tags=split_list(tags), sort=sort)
    if reference:
        rows = with_published(rows, [dataset] if dataset else {r["dataset"] for r in rows}, sort)
    if not rows:
        wanted = ", ".join(f"{k} {v}" for k, v in (("dataset", dataset), ("methods", methods), ("tags", tags)) if v)
        raise UserError(f"no completed runs under {path}" + (f" for {wanted}" if wanted else ""))
    text = render_document(rows, fmt, baseline_method=baseline_method, param_groups=param_groups)
    if output:
        from mtpeft_bench.atomic import write_text_atomic

        try:
            written = write_text_atomic(Path(output), text)
        except OSError as exc:
            raise UserError(f"cannot write the table to {output}: {exc.strerror or exc}") from None
        click.echo(f"wrote {written}")
    else:
        click.echo(text, nl=False)


EXAMPLES_PLOT = """\b
Examples:
  mtbench plot --out figures/                       # every dataset under results/
  mtbench plot --results /tmp/runs --dataset synth --out /tmp/figs --format pdf
  mtbench plot --dataset pascal_mt --reference --out figs/   # published rows on the Pareto plot
  mtbench plot --curves runs/<run_id> --out figs/   # loss, LR and validation curves of one run, also while it trains
"""


@click.command(epilog=EXAMPLES_PLOT)
@results_option
@click.option("--out", required=True, help="Folder to write the figures to.")
@dataset_option
@methods_option
@tags_option
@click.option("--reference", is_flag=True, help="Add the published rows to the Pareto plot.")
@baseline_option
@strict_option
@click.option("--format", "fmt", type=click.Choice(["png", "pdf", "svg"]), default="png", show_default=True)
@click.option("--curves", "curves_of", default=None, metavar="RUN_FOLDER",
              help="Instead: the training curves of one run from its metrics.jsonl (a run folder under runs/, also "
                   "one still training).")
def plot(results_dir, out, dataset, methods, tags, reference, baseline_method, strict, fmt, curves_of):
    """Figures: Δm vs trainable parameters with the Pareto front, per-task metrics, cost, training curves."""
    if curves_of:
        from mtpeft_bench.report.curves import plot_curves

        try:
            click.echo(f"wrote {plot_curves(curves_of, Path(out), fmt)}")
        except OSError as exc:
            raise UserError(f"cannot write figures to {out}: {exc.strerror or exc}") from None
        return
    path = Path(results_dir)
    if not path.exists():
        raise UserError(f"no results folder {path}; run `mtbench run ...` first or pass --results DIR")
    records = read_results(path, strict)
    if not records:
        raise UserError(f"no result files under {path}")
    from mtpeft_bench.report.plots import plot_all

    try:
        written = plot_all(records, Path(out), dataset=dataset, methods=split_list(methods), tags=split_list(tags),
                           baseline_method=baseline_method, reference=reference, fmt=fmt)
    except OSError as exc:
        raise UserError(f"cannot write figures to {out}: {exc.strerror or exc}") from None
    if not written:
        raise UserError(f"no completed runs under {path} match the filters")
    for file in written:
        click.echo(f"wrote {file}")
