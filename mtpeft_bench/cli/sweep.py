"""``mtbench sweep``: run a grid of methods × datasets × seeds, or print it as torchrun commands.

A sweep takes every option of ``mtbench run`` (:data:`~mtpeft_bench.cli.options.RUN_OPTIONS`) for
all its runs; ``--method``, ``--dataset`` (comma lists) and ``--seeds`` span the grid. A sweep file
(``--config``, running/config_file.py) gives the grid and the shared settings; the command line
overrides both.
"""

from __future__ import annotations

import click

from mtpeft_bench.cli.options import (command_line, config_fields, new_or_old, old_spelling, parse_list, parse_seeds,
                                      require, run_options)
from mtpeft_bench.errors import UserError


EXAMPLES_SWEEP = """\b
Examples:
  mtbench sweep --method full,decoder_only --dataset synth --seeds 0,1 --preset smoke
  mtbench sweep --method ditask,lora,mtlora --dataset pascal_mt --seeds 0-2 --data-root ~/data
  mtbench sweep --method full,lora --dataset synth --seeds 0-3 --preset smoke --jobs 2   # two runs at a time
  mtbench sweep --method ditask,mtlora --dataset nyud --seeds 0,1,2 --print-commands --nproc-per-node 8 > jobs.txt
  mtbench sweep --protocol synth --out results/synth --plan   # the leaderboard: what it runs, what exists
  mtbench sweep --config examples/configs/leaderboard_sweep.yaml --seeds 0   # a sweep file; flags override it
"""


@click.command(epilog=EXAMPLES_SWEEP)
@click.option("--method", "-m", default=None, help="Comma-separated method plugins (required).")
@click.option("--dataset", "-d", default=None, help="Comma-separated dataset plugins (default: synth).")
@old_spelling("--methods", "old_methods", "--method")
@old_spelling("--datasets", "old_datasets", "--dataset")
@click.option("--seeds", default=None, help="Seeds: 0,1,2 or 0-4 (default: the --config file's, else 0).")
@click.option("--config", "config_file", default=None, metavar="FILE",
              help="A sweep file (YAML): grid: {method, dataset, seeds} and settings: {any run option or --set key}; "
                   "the command line overrides it.")
@run_options()
@click.option("--print-commands", is_flag=True,
              help="Do not run: print one torchrun command per run still to do (stdout), for a scheduler.")
@click.option("--nproc-per-node", type=int, default=1, show_default=True,
              help="With --print-commands: processes (GPUs) per node of each run.")
@click.option("--nnodes", type=int, default=1, show_default=True, help="With --print-commands: nodes per run.")
@click.option("--jobs", "-j", type=int, default=1, show_default=True,
              help="Runs at a time on this machine: N-1 more sweep processes share the grid (a lock per run "
                   "keeps them apart), each with CPUs/N torch threads.")
@click.option("--protocol", default=None, metavar="NAME|FILE",
              help="Run a leaderboard protocol instead of a grid (e.g. synth, or a protocol .yaml): each row's "
                   "learning rate chosen on held-out training images, then every row × seed at it, the "
                   "baselines and extras; skips what exists (docs/leaderboard.md). Default --out: results/NAME.")
@click.option("--plan", "plan_only", is_flag=True,
              help="With --protocol: print the plan (runs, how many exist, the rates chosen so far, an estimate) "
                   "and run nothing.")
@click.option("--launcher", type=click.Choice(["inprocess", "local", "slurm"]), default="inprocess", show_default=True,
              help="inprocess: runs in this process; slurm: one Slurm job per run through submitit; local: the same "
                   "jobs as local subprocesses (--jobs at a time). A job that dies is rerun and resumes its run.")
@click.option("--launcher-opts", "launcher_opts", multiple=True, metavar="KEY=VALUE,...",
              help="Job settings: partition, time (minutes), gpus, cpus, mem_gb, account, qos, constraint, reruns "
                   "(times a job that died is resubmitted, default 1), folder (job logs).")
def sweep(method, dataset, old_methods, old_datasets, seeds, config_file, print_commands, nproc_per_node, nnodes,
          jobs, protocol, plan_only, launcher, launcher_opts, **options):
    """Run every method × dataset × seed with one recipe, one run after another.

    Runs whose result (same configuration hash) is already in the results folder are skipped;
    interrupted runs are resumed from their checkpoints; a run another sweep is running is skipped.
    With --jobs N, N sweeps share the grid, each with CPUs/N torch threads. With --print-commands
    nothing runs: the runs still to do are printed as torchrun commands (each with --resume, so a
    scheduler may re-issue one after a preemption).
    """
    if protocol or plan_only:
        from mtpeft_bench.cli.sweep_protocol import protocol_command

        context = click.get_current_context()
        given = [name for name in context.params
                 if context.get_parameter_source(name) is click.core.ParameterSource.COMMANDLINE]
        return protocol_command(protocol, plan_only, given, options, jobs)
    from mtpeft_bench.config import parse_sets
    from mtpeft_bench.running.summary import LOG, print_summary
    from mtpeft_bench.running.sweep import (busy_machine_warning, classify, expand, run_grid, start_jobs,
                                            torchrun_command, wait_jobs)

    from mtpeft_bench.running.config_file import SweepFile, load_sweep_file, settings_as_flags

    plan = load_sweep_file(config_file) if config_file else SweepFile(None)
    methods = require(new_or_old(method, old_methods, "--method", "--methods") or plan.method, "--method")
    datasets = new_or_old(dataset, old_datasets, "--dataset", "--datasets") or plan.dataset or "synth"
    seeds = seeds or plan.seeds or "0"
    run_file = plan.run
    if nproc_per_node < 1 or nnodes < 1:
        raise UserError("--nproc-per-node and --nnodes must be at least 1")
    if not print_commands and (nproc_per_node > 1 or nnodes > 1):
        raise UserError("--nproc-per-node/--nnodes only shape the printed commands; add --print-commands "
                        "(or start the sweep itself under torchrun)")
    fields, sets = config_fields(options), parse_sets(options["sets"])
    from mtpeft_bench.train.distributed import env_world_size

    world = nproc_per_node * nnodes if print_commands else env_world_size()
    if jobs < 1:
        raise UserError("--jobs must be at least 1")
    if jobs > 1 and (print_commands or world > 1):
        raise UserError("--jobs runs several sweeps side by side on this machine; it does not combine with "
                        "--print-commands or torchrun")
    points = expand(parse_list(datasets, "dataset"), parse_list(methods, "method"), parse_seeds(seeds),
                    options["preset"], fields, sets, world_size=world, config_file=config_file and run_file)
    classify(points)
    import os

    main_process = int(os.environ.get("RANK", "0")) == 0  # under torchrun, rank 0 speaks for all

    def echo(message: str) -> None:
        if main_process:
            LOG.info(message)

    counts = {s: sum(p.state == s for p in points) for s in ("done", "resume", "new")}
    echo(f"sweep: {len(points)} runs: {counts['done']} completed (skipped), {counts['resume']} to resume, "
         f"{counts['new']} to start")

    if launcher != "inprocess":  # one job per run (running/launchers.py)
        from mtpeft_bench.running.launchers import launch_grid, parse_launcher_opts

        if print_commands or world > 1:
            raise UserError("--launcher local/slurm submits the runs itself; it does not combine with "
                            "--print-commands or torchrun")
        finish(launch_grid(points, launcher, parse_launcher_opts(launcher_opts), jobs, echo), len(points), echo,
               also_see="the job logs")
        return

    if print_commands:
        # The same options on each run's command line (torchrun_command adds --no-progress itself).
        run_args = command_line({k: v for k, v in options.items() if k not in ("no_progress", "sets")})
        if run_file is not None and run_file.preset and not options["preset"]:
            run_args += ["--preset", run_file.preset]
        # the file's settings first, as --set items; the command line's own --set items follow and win
        run_args += settings_as_flags(run_file, fields) + command_line({"sets": options["sets"]})
        for point in points:
            if point.state != "done":
                click.echo(torchrun_command(point, run_args, nproc_per_node, nnodes))
        return

    warning = busy_machine_warning()
    if warning:
        echo(warning)
    others = []
    jobs = min(jobs, counts["resume"] + counts["new"])  # no more jobs than runs to do
    if jobs > 1:
        import torch

        from mtpeft_bench.machine_load import cpu_count

        threads = max(cpu_count() // jobs, 1)
        torch.set_num_threads(threads)
        sweep_args = ["sweep", "--method", methods, "--dataset", datasets, "--seeds", seeds, *command_line(options),
                      *(["--config", config_file] if config_file else [])]
        others = start_jobs(sweep_args, jobs - 1, threads)
        echo(f"sweep: {jobs} jobs share the grid, each with {threads} torch thread(s)")
    finished = False
    try:
        result = run_grid(points, echo, show=print_summary)
        finished = True
    finally:
        codes = wait_jobs(others, stop=not finished)
    finish(result, len(points), echo)
    if any(codes):
        raise click.ClickException(f"{sum(c != 0 for c in codes)} of the other {len(codes)} sweep jobs failed; "
                                   "see their messages above")


def finish(result, total: int, echo, also_see: str = "") -> None:
    """The sweep's last line (in-process or through a launcher); exit status 1 when any run failed."""
    echo(f"sweep: {len(result.completed)} completed, {len(result.skipped)} skipped, {len(result.failed)} failed"
         + (f", {len(result.elsewhere)} running in another process" if result.elsewhere else ""))
    if result.failed:
        names = ", ".join(name for name, _ in result.failed)
        raise click.ClickException(f"{len(result.failed)} of {total} runs failed ({names}); see the messages above"
                                   f"{', ' + also_see + ' ' if also_see else ' '}and the run folders' run.json")
