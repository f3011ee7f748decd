"""``mtbench plot`` and ``mtbench bench`` (registered on the main group by :func:`register`).

``plot`` reads result JSONs only and never imports torch; ``bench`` builds models and does.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from mtpeft_bench.errors import UserError


def _split(value: str | None) -> tuple[str, ...] | None:
    if not value:
        return None
    return tuple(v.strip() for v in value.split(",") if v.strip())


EXAMPLES_PLOT = """\b
Examples:
  mtbench plot --out figures/                       # every dataset under results/
  mtbench plot --results /tmp/runs --dataset synth --out /tmp/figs --format pdf
  mtbench plot --dataset pascal_mt --reference --out figs/   # published rows on the Pareto plot
"""


@click.command(epilog=EXAMPLES_PLOT)
@click.option("--results", "results_dir", default="results", show_default=True, help="Folder of result JSONs.")
@click.option("--out", required=True, help="Folder to write the figures to.")
@click.option("--dataset", "-d", default=None, help="Only this dataset.")
@click.option("--method", "-m", "methods", default=None, help="Only these methods (comma-separated).")
@click.option("--tag", "tags", default=None, help="Only runs with these tags (comma-separated).")
@click.option("--reference", is_flag=True, help="Add the published rows to the Pareto plot.")
@click.option("--baseline-method", default="full", show_default=True,
              help="Method whose single-task runs are the Δm baselines.")
@click.option("--format", "fmt", type=click.Choice(["png", "pdf", "svg"]), default="png", show_default=True)
def plot(results_dir, out, dataset, methods, tags, reference, baseline_method, fmt):
    """Figures: Δm vs trainable parameters with the Pareto front, per-task metrics, cost, training curves."""
    from mtpeft_bench.results import read_records

    path = Path(results_dir)
    if not path.exists():
        raise UserError(f"no results folder {path}; run `mtbench run ...` first or pass --results DIR")
    records = read_records(path)
    if not records:
        raise UserError(f"no result files under {path}")
    from mtpeft_bench.plots import plot_all

    try:
        written = plot_all(records, Path(out), dataset=dataset, methods=_split(methods), tags=_split(tags),
                           baseline_method=baseline_method, reference=reference, fmt=fmt)
    except OSError as exc:
        raise UserError(f"cannot write figures to {out}: {exc.strerror or exc}") from None
    if not written:
        raise UserError(f"no completed runs under {path} match the filters")
    for file in written:
        click.echo(f"wrote {file}")


EXAMPLES_BENCH = """\b
Examples:
  mtbench bench --method decoder_only                      # micro Swin at 64 px, batch 8, vs full
  mtbench bench --method decoder_only --backbone swin_tiny_patch4_window7_224 --image-size 224 --batch-size 16
  mtbench bench --method <plugin> --set method.<key>=<value> --device cuda --amp
"""


@click.command(epilog=EXAMPLES_BENCH)
@click.option("--method", "-m", required=True, help="Method to time.")
@click.option("--baseline", default="full", show_default=True, help="Method to time it against.")
@click.option("--dataset", "-d", default="synth", show_default=True, help="Dataset whose tasks set the heads.")
@click.option("--tasks", "-t", default=None, help="Comma-separated tasks (default: the dataset's task set).")
@click.option("--backbone", default="swin_micro", show_default=True, help="timm Swin name or swin_micro.")
@click.option("--image-size", default="64", show_default=True, help="N or H,W.")
@click.option("--batch-size", type=int, default=8, show_default=True)
@click.option("--steps", type=int, default=20, show_default=True, help="Timed rounds (each model once per round).")
@click.option("--warmup", type=int, default=5, show_default=True, help="Untimed rounds first.")
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda | cuda:N.")
@click.option("--amp", is_flag=True, help="Autocast (CUDA only), as runs with amp=true.")
@click.option("--set", "sets", multiple=True, metavar="method.KEY=VALUE", help="Options of --method.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def bench(method, baseline, dataset, tasks, backbone, image_size, batch_size, steps, warmup, device, amp, sets,
          as_json):
    """Time one method's training step and inference beside `full`, printed as ratios."""
    from mtpeft_bench.config import coerce_value, parse_sets, parse_value

    overrides = parse_sets(sets)
    bad = [k for k in overrides if not k.startswith("method.")]
    if bad:
        raise UserError(f"bench takes only method.<key>=<value> settings, not {', '.join(bad)}")
    size = coerce_value("image_size", parse_value(image_size), "")
    if min(size) < 32:
        raise UserError(f"--image-size must be at least 32 px per side, got {image_size}")
    for name, value, low in (("--batch-size", batch_size, 1), ("--steps", steps, 1), ("--warmup", warmup, 0)):
        if value < low:
            raise UserError(f"{name} must be at least {low}, got {value}")
    from mtpeft_bench.bench import BenchSetup, format_bench, run_bench
    from mtpeft_bench.registry import get_method

    get_method(method), get_method(baseline)  # unknown names fail here, in one line
    setup = BenchSetup(method=method, baseline=baseline, dataset=dataset, tasks=_split(tasks), backbone=backbone,
                       image_size=size, batch_size=batch_size, steps=steps, warmup=warmup, device=device, amp=amp,
                       method_options={k[len("method."):]: v for k, v in overrides.items()})
    result = run_bench(setup)
    click.echo(json.dumps(result, indent=2, default=str) if as_json else format_bench(result), nl=not as_json)


def register(group: click.Group) -> None:
    """Add ``plot`` and ``bench`` to the ``mtbench`` group."""
    group.add_command(plot)
    group.add_command(bench)
