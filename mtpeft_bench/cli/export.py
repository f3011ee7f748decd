"""``mtbench export`` (a trained model out of its run folder) and ``mtbench eval --checkpoint``
(evaluate a saved or exported model and write a result record)."""

from __future__ import annotations

from pathlib import Path

import click

from mtpeft_bench.cli.options import prefixed_settings


EXAMPLES_EXPORT = """\b
Examples:
  mtbench export 20260101-120000-3f2a9c1e-s0-8b0b --output models/lora-synth   # a run id under runs/
  mtbench export runs/20260101-120000-3f2a9c1e-s0-8b0b                          # a run folder; writes <run>/export
  mtbench export results/synth/lora/20260101-120000-3f2a9c1e-s0-8b0b.json       # the run of a result record
"""

EXAMPLES_EVAL = """\b
Examples:
  mtbench eval --checkpoint models/lora-synth --dataset synth                 # an export folder
  mtbench eval --checkpoint models/lora-synth --form merged                   # its merged weights, stock Swin
  mtbench eval --checkpoint runs/20260101-120000-3f2a9c1e-s0-8b0b/last.safetensors  # a run's own checkpoint
"""


def _runs_dir(runs_dir: str | None, out: str) -> Path:
    from mtpeft_bench.running.folders import runs_root
    from types import SimpleNamespace

    return runs_root(SimpleNamespace(runs_dir=runs_dir, out=out))


@click.command("export", epilog=EXAMPLES_EXPORT)
@click.argument("run")
@click.option("--output", "-o", default=None,
              help="Folder to create (default: export/ inside the run folder).")
@click.option("--out", default="results", show_default=True, help="Results folder (finds the runs folder beside it).")
@click.option("--runs-dir", default=None, help="Runs folder to look the run id up in (default: runs/ beside --out).")
def export(run, output, out, runs_dir):
    """Write a trained model as safetensors with a JSON card, without the optimizer state.

    RUN is a run id, a run folder, its checkpoint or its result record. The folder gets
    model.safetensors (every tensor of the trained model), merged.safetensors where the method
    allows (LoRA and mergeable peft tuners folded into a stock Swin; BitFit; DiTASK's rebuilt W′
    per layer and task stream), adapter/ in peft's save_pretrained layout for peft tuners, and
    card.json (configuration, final metrics, SHA-256 of each file).
    """
    from mtpeft_bench.running.export import export as export_model
    from mtpeft_bench.running.saved import find_saved

    saved = find_saved(run, _runs_dir(runs_dir, out))
    if saved.card is not None:
        raise click.UsageError(f"{run} is an export already; export a run (its id, folder, checkpoint or record)")
    dest = Path(output).expanduser() if output else saved.folder / "export"
    dest = export_model(saved, dest)
    click.echo(f"exported run {saved.run_id} to {dest}; `mtbench eval --checkpoint {dest}` evaluates it")


@click.command("eval", epilog=EXAMPLES_EVAL)
@click.option("--checkpoint", "checkpoint", required=True,
              help="An export folder, a run folder, a run's last.safetensors, a result record or a run id.")
@click.option("--dataset", "-d", default=None, help="Dataset to evaluate on (default: the run's, with its options).")
@click.option("--split", default="val", show_default=True, help="Split to evaluate.")
@click.option("--form", type=click.Choice(["model", "merged"]), default="model", show_default=True,
              help="model: the trained model; merged: an export's merged weights in a stock Swin.")
@click.option("--data-root", default=None, help="Where the datasets live (default: the run's, or $MTBENCH_DATA).")
@click.option("--out", default="results", show_default=True, help="Results folder the evaluation record goes to.")
@click.option("--runs-dir", default=None, help="Runs folder to look a run id up in (default: runs/ beside --out).")
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda | cuda:N.")
@click.option("--num-workers", type=int, default=None, help="Data loader workers (default: the run's).")
@click.option("--set", "sets", multiple=True, metavar="data.KEY=VALUE", help="Dataset options (repeatable).")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def evaluate(checkpoint, dataset, split, form, data_root, out, runs_dir, device, num_workers, sets, no_progress):
    """Evaluate a saved or exported model with the run's meters and write a result record.

    The record (status "evaluated") goes to the results folder beside run records; compare and
    the sweeps read completed runs only, so it never stands in for a run.
    """
    from mtpeft_bench.running.saved import find_saved
    from mtpeft_bench.running.saved_eval import evaluate_saved

    saved = find_saved(checkpoint, _runs_dir(runs_dir, out))
    record, path = evaluate_saved(saved, Path(out).expanduser(), dataset=dataset, split=split,
                                  data_options=prefixed_settings(sets, "data", "mtbench eval"), data_root=data_root,
                                  form=form, device=device, num_workers=num_workers, progress=not no_progress)
    for task, values in record["metrics"].items():
        click.echo(f"{task}: " + ", ".join(f"{k} {v:.4g}" for k, v in values.items() if v is not None))
    click.echo(f"wrote {path}")
