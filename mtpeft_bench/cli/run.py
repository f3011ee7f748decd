"""``mtbench run``: train and evaluate one method on one dataset, write one result JSON."""

from __future__ import annotations

import click

from mtpeft_bench.cli.options import MODEL_OPTIONS, TRAINING_OPTIONS, resolve_config, run_options


EXAMPLES_RUN = """\b
Examples:
  mtbench run --method full --dataset synth --preset smoke
  mtbench run --method full --dataset synth --tasks depth --preset smoke   # a single-task baseline
  mtbench run --method decoder_only --dataset synth --preset smoke --seed 1
  mtbench run --method full --dataset nyud --data-root ~/data --set epochs=100 --set base_lr=1e-3
  mtbench run --method full --dataset synth --preset smoke --resume        # continue an interrupted run
  torchrun --nproc_per_node 2 -m mtpeft_bench run --method full --preset smoke   # 2 processes (DDP)
  mtbench run --config examples/configs/leaderboard_synth.yaml --epochs 2   # a run file; flags override it
  mtbench run --method lora --preset cpu --print-config > run.yaml          # the resolved configuration
  mtbench run --config examples/configs/paper_pascal_mt.yaml --dry-run      # check and count, train nothing
  mtbench run --method full --set accum_steps=4 --set grad_checkpoint=true  # the paper batch on less memory
"""


@click.command(epilog=EXAMPLES_RUN)
@click.option("--method", "-m", default=None,
              help="Method plugin (see `mtbench ls methods`); required unless the --config file names it.")
@click.option("--dataset", "-d", default=None, help="Dataset plugin (default: the --config file's, else synth).")
@click.option("--config", "config_file", default=None, metavar="FILE",
              help="A run file (YAML: any run option or --set key); command-line options and --set override it. "
                   "A result JSON or --print-config output reruns that run.")
@run_options(*MODEL_OPTIONS)
@click.option("--seed", type=int, default=None, help="Random seed (default 0).")
@run_options(*TRAINING_OPTIONS)
@click.option("--resume", is_flag=False, flag_value="latest", default=None, metavar="[RUN_ID]",
              help="Continue the newest interrupted run of this configuration (or RUN_ID); starts one if there is "
                   "none; does nothing if it already completed. Checkpoints live in runs/ beside --out.")
@click.option("--print-config", is_flag=True,
              help="Print the resolved configuration (as the result record stores it, with its config_hash) as "
                   "YAML and exit; the output is a run file.")
@click.option("--dry-run", is_flag=True,
              help="Resolve and validate, check data, folders and weights, build the model and print its parameter "
                   "counts; train and write nothing.")
def run(method, dataset, config_file, seed, resume, print_config, dry_run, **options):
    """Train and evaluate one method on one dataset; write one result JSON.

    Settings resolve in this order: defaults, the preset, the --config file, the command-line
    options, then --set. Under torchrun every process runs this command with the same options
    (--batch-size is per process; the LR follows the global batch); rank 0 writes the result and
    the checkpoints. The run folder's metrics.jsonl logs every step and evaluation as it happens
    (`mtbench plot --curves RUN_FOLDER` draws it).
    """
    if method is None:
        from mtpeft_bench.running.config_file import load_run_file

        if config_file is None or "method" not in load_run_file(config_file).settings:
            raise click.UsageError("Missing option '--method' (or name the method in the --config file).",
                                   click.get_current_context())
    cfg = resolve_config(dataset, options, config_file=config_file, method=method, seed=seed)
    if print_config and dry_run:
        raise click.UsageError("--print-config and --dry-run exclude each other", click.get_current_context())
    if print_config:
        from mtpeft_bench.running.dry_run import printed_config

        click.echo(printed_config(cfg), nl=False)
        return
    if dry_run:
        from mtpeft_bench.running.dry_run import dry_run as check_run, format_dry_run

        click.echo(format_dry_run(check_run(cfg)))
        return
    from mtpeft_bench.running.pipeline import run as run_one
    from mtpeft_bench.running.summary import print_summary
    from mtpeft_bench.train.failures import RunFailed

    try:
        print_summary(run_one(cfg, resume=True if resume == "latest" else resume))
    except RunFailed as exc:
        raise click.ClickException(str(exc)) from None
