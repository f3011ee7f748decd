"""``mtbench compare`` and ``mtbench plot``: leaderboards and figures from result JSONs.

Both read result files only and never import torch.
"""

from __future__ import annotations

from pathlib import Path

import click

from mtpeft_bench.cli.options import split_list
from mtpeft_bench.cli.published import proxy_text, published_datasets_wanted, published_table_text
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
split_option = click.option("--eval-split", "split", type=click.Choice(["val", "holdout"]), default="val",
                            show_default=True,
                            help="Show the runs scored on this split: val (the validation split, the leaderboard) "
                            "or holdout (learning-rate selection runs scored on images held out from training). "
                            "Records without the field count as val; how many were left out is said on stderr.")
strict_option = click.option("--strict", is_flag=True, help="A JSON file under --results that is not a valid "
                             "result record is an error (by default it is skipped with a warning naming it).")


def read_results(path: Path, strict: bool, split: str = "val") -> list[dict]:
    """The records under ``path`` scored on ``split``; each file that is not a valid record is named on
    stderr (or, strict, an error), and so is the number of records of other splits left out."""
    from mtpeft_bench.results import read_records, select_split

    records = read_records(path, strict=strict, warn=lambda line: click.echo(line, err=True))
    kept, left_out = select_split(records, split)
    for other, count in sorted(left_out.items()):
        click.echo(f"mtbench: left out {count} record{'s' if count > 1 else ''} scored on the {other} split "
                   f"(this shows the {split} split; --eval-split {other} shows them)", err=True)
    return kept


EXAMPLES_COMPARE = """\b
Examples:
  mtbench compare                                   # every run under results/, one table per dataset
  mtbench compare --results /tmp/runs --method full,decoder_only --sort params
  mtbench compare --published pascal_mt             # the published rows beside the suite's runs, Δm checked
  mtbench compare --published pascal_mt --only-published   # the whole published table and its checks
  mtbench compare --results results/synth --dataset synth --proxy pascal_mt   # Kendall's τ vs published
  mtbench compare --format latex --output table.tex
  mtbench compare --reference-method decoder_only   # paired tests of Δm against decoder_only
  mtbench compare --eval-split holdout              # the learning-rate selection runs instead
  mtbench compare --results results/synth           # the committed leaderboard (the README's table)
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
@click.option("--published", "published", default=None, metavar="DATASET",
              help="Add the published rows of DATASET (e.g. pascal_mt, nyud), each with its Δm recomputed from its "
              "own metrics; a printed Δm more than 0.05 away is marked ⚠ and explained under the table.")
@click.option("--only-published", is_flag=True, help="With --published: print the whole published table "
              "(copied rows and ablations too, provenance, parameter conventions, every check) and no runs.")
@click.option("--proxy", default=None, metavar="DATASET", help="Proxy validity: pair the measured rows of "
              "--dataset with the published rows of DATASET and print Kendall's τ-b of the two Δm rankings.")
@click.option("--reference", is_flag=True, help="Deprecated: the same as --published with the --dataset name "
              "(or each dataset of the results).")
@click.option("--param-groups", is_flag=True, help="Add trainable parameters by group (method, extras, "
              "linears, decoder).")
@baseline_option
@click.option("--reference-method", default="full", show_default=True,
              help="Method each row's Δm is compared with by a paired t-test over the seeds both rows share.")
@split_option
@strict_option
@click.option("--output", "-o", default=None, help="Write to this file instead of standard output.")
def compare(results_dir, dataset, methods, tags, fmt, sort, published, only_published, proxy, reference,
            param_groups, baseline_method, reference_method, split, strict, output):
    """Leaderboard of all runs: per-task metrics and Δm as mean ± 95 % confidence interval over seeds,
    paired tests of Δm against a reference method and the best row, Pareto front, parameters, FLOPs,
    memory, speed. A seed one row has and another lacks is named under the table (CSV: on stderr)."""
    from mtpeft_bench.report.rows import leaderboard, render_document, seed_warnings, with_published

    if only_published:
        return _emit(published_table_text(published or dataset, fmt), output)
    path = Path(results_dir)
    records = read_results(path, strict, split) if path.exists() else []
    if proxy:
        return _emit(proxy_text(records, path, dataset, proxy, fmt, baseline_method, methods, tags), output)
    published_sets = published_datasets_wanted(published, reference, dataset, records)
    if not records and not published_sets:
        raise UserError(f"no result files under {path}; run `mtbench run ...` first or pass --results DIR"
                        if path.exists() else
                        f"no results folder {path}; run `mtbench run ...` first or pass --results DIR")
    rows = leaderboard(records, dataset=dataset, baseline_method=baseline_method, methods=split_list(methods),
                       tags=split_list(tags), sort=sort, reference_method=reference_method)
    if fmt == "csv":  # the other formats name them in the notes under the table
        for line in seed_warnings(rows):
            click.echo(f"mtbench: warning: {line}", err=True)
    if published_sets:
        rows = with_published(rows, published_sets, sort)
    if not rows:
        wanted = ", ".join(f"{k} {v}" for k, v in (("dataset", dataset), ("methods", methods), ("tags", tags)) if v)
        raise UserError(f"no completed runs under {path}" + (f" for {wanted}" if wanted else "")
                        + (f" scored on the {split} split" if split != "val" else ""))
    _emit(render_document(rows, fmt, baseline_method=baseline_method, param_groups=param_groups,
                          reference_method=reference_method), output)


def _emit(text: str, output: str | None) -> None:
    """Print ``text``, or write it atomically to ``output``."""
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
@split_option
@strict_option
@click.option("--format", "fmt", type=click.Choice(["png", "pdf", "svg"]), default="png", show_default=True)
@click.option("--curves", "curves_of", default=None, metavar="RUN_FOLDER",
              help="Instead: the training curves of one run from its metrics.jsonl (a run folder under runs/, also "
                   "one still training).")
def plot(results_dir, out, dataset, methods, tags, reference, baseline_method, split, strict, fmt, curves_of):
    """Figures: Δm vs trainable parameters with the Pareto front, per-task metrics, cost, training curves;
    error bars are 95 % confidence intervals of the mean over seeds."""
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
    records = read_results(path, strict, split)
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
