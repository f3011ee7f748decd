"""``mtbench run``: train and evaluate one method on one dataset, write one result JSON."""

from __future__ import annotations

import click

from mtpeft_bench.cli.options import (MODEL_OPTIONS, TRAINING_OPTIONS, dataset_option, method_option, resolve_config,
                                      run_options)


EXAMPLES_RUN = """\b
Examples:
  mtbench run --method full --dataset synth --preset smoke
  mtbench run --method full --dataset synth --tasks depth --preset smoke   # a single-task baseline
  mtbench run --method decoder_only --dataset synth --preset smoke --seed 1
  mtbench run --method full --dataset nyud --data-root ~/data --set epochs=100 --set base_lr=1e-3
  mtbench run --method full --dataset synth --preset smoke --resume        # continue an interrupted run
  torchrun --nproc_per_node 2 -m mtpeft_bench run --method full --preset smoke   # 2 processes (DDP)
"""


@click.command(epilog=EXAMPLES_RUN)
@method_option
@dataset_option
@run_options(*MODEL_OPTIONS)
@click.option("--seed", type=int, default=None, help="Random seed (default 0).")
@run_options(*TRAINING_OPTIONS)
@click.option("--resume", is_flag=False, flag_value="latest", default=None, metavar="[RUN_ID]",
              help="Continue the newest interrupted run of this configuration (or RUN_ID); starts one if there is "
                   "none; does nothing if it already completed. Checkpoints live in runs/ beside --out.")
def run(method, dataset, seed, resume, **options):
    """Train and evaluate one method on one dataset; write one result JSON.

    Under torchrun every process runs this command with the same options (--batch-size is per
    process; the LR follows the global batch); rank 0 writes the result and the checkpoints.
    """
    cfg = resolve_config(dataset, options, method=method, seed=seed)
    from mtpeft_bench.running.pipeline import run as run_one
    from mtpeft_bench.running.summary import print_summary
    from mtpeft_bench.train.failures import RunFailed

    try:
        print_summary(run_one(cfg, resume=True if resume == "latest" else resume))
    except RunFailed as exc:
        raise click.ClickException(str(exc)) from None
