"""``mtbench sweep --protocol NAME``: the command-line side of a protocol sweep (the options it
refuses, the plan, several sweeps side by side, the closing lines); the sweep itself is
:mod:`mtpeft_bench.running.protocol_sweep`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from mtpeft_bench.running.protocol_sweep import ProtocolSweep


#: ``mtbench sweep`` options a protocol fixes itself (its file says them): refused beside ``--protocol``.
FIXED_BY_PROTOCOL = {"method": "--method", "dataset": "--dataset", "old_methods": "--methods",
                     "old_datasets": "--datasets", "seeds": "--seeds", "tasks": "--tasks", "preset": "--preset",
                     "backbone": "--backbone", "weights": "--weights", "epochs": "--epochs",
                     "batch_size": "--batch-size", "tag": "--tag"}
#: Options of a grid sweep that a protocol sweep cannot honour.
GRID_ONLY = {"print_commands": "--print-commands", "nproc_per_node": "--nproc-per-node", "nnodes": "--nnodes"}


def check_options(given: list[str], sets: Mapping[str, Any], jobs: int) -> None:
    """Refuse, in one line, what a protocol sweep cannot take (see :func:`protocol_command`)."""
    from mtpeft_bench.config import NOT_IDENTITY
    from mtpeft_bench.errors import UserError
    from mtpeft_bench.train.distributed import env_world_size

    fixed = [flag for key, flag in FIXED_BY_PROTOCOL.items() if key in given]
    if fixed:
        raise UserError(f"--protocol sets the methods, seeds and recipe itself; leave out {', '.join(fixed)} "
                        "(to change them, copy the protocol file, edit it and pass its path to --protocol)")
    grid_only = [flag for key, flag in GRID_ONLY.items() if key in given]
    if grid_only:
        raise UserError(f"{', '.join(grid_only)} cannot print a protocol's runs ahead: which runs follow depends on "
                        "the scores of the earlier ones; run `mtbench sweep --protocol` itself (several at once share "
                        "the work)")
    changing = [key for key in sets if key not in NOT_IDENTITY]
    if changing:
        allowed = ", ".join(sorted(NOT_IDENTITY - {"lr_selection", "out", "tag"}))
        raise UserError(f"--set {changing[0]}=... would change the protocol's runs; beside --protocol, --set takes "
                        f"only settings outside a run's identity ({allowed}); to change the recipe, copy the "
                        "protocol file and edit its settings")
    if jobs < 1:
        raise UserError("--jobs must be at least 1")
    if jobs > 1 and env_world_size() > 1:
        raise UserError("--jobs runs several sweeps side by side on this machine; it does not combine with torchrun")


def protocol_command(name: str | None, plan_only: bool, given: list[str], options: Mapping[str, Any],
                     jobs: int = 1) -> None:
    """``mtbench sweep --protocol NAME [--plan] [--jobs N]``: print the plan, then (unless
    ``plan_only``) run it, with N − 1 more sweep processes of the same protocol sharing the work.

    Args:
        given: the sweep options given on the command line (those a protocol fixes are refused).
        options: the run options (only the data root, device, progress, ``--out`` and ``--set`` of
            settings outside a run's identity apply).

    Raises:
        UserError: no protocol, an option the protocol fixes, a ``--set`` that changes the runs.
        click.ClickException: some run failed (after the others ran).
    """
    import os

    import click

    from mtpeft_bench.cli.options import command_line, config_fields
    from mtpeft_bench.config import parse_sets
    from mtpeft_bench.errors import UserError
    from mtpeft_bench.running.protocol import load_protocol
    from mtpeft_bench.running.protocol_report import plan_lines
    from mtpeft_bench.running.summary import LOG, print_summary
    from mtpeft_bench.running.sweep import busy_machine_warning, start_jobs, wait_jobs
    from mtpeft_bench.train.distributed import env_world_size

    if not name:
        raise UserError("--plan prints the plan of a protocol; add --protocol NAME (e.g. --protocol synth)")
    sets = parse_sets(options.get("sets") or ())
    check_options(given, sets, jobs)
    protocol = load_protocol(name)
    out = Path(options.get("out") or Path("results") / protocol.name)
    fields = config_fields({k: options.get(k) for k in ("data_root", "device", "no_progress")})
    sweep = ProtocolSweep(protocol, out, fields, sets, world_size=env_world_size())
    main_process = int(os.environ.get("RANK", "0")) == 0  # under torchrun, rank 0 speaks for all

    def echo(message: str) -> None:
        if main_process:
            LOG.info(message)

    for line in plan_lines(sweep):
        echo(line)
    if plan_only:
        return
    warning = busy_machine_warning()
    if warning:
        echo(warning)
    others = []
    if jobs > 1:
        import torch

        from mtpeft_bench.machine_load import cpu_count

        threads = max(cpu_count() // jobs, 1)
        torch.set_num_threads(threads)
        args = ["sweep", "--protocol", name, *command_line({**options, "out": str(out)})]
        others = start_jobs(args, jobs - 1, threads)
        echo(f"protocol: {jobs} sweeps share the protocol, each with {threads} torch thread(s)")
    finished = False
    try:
        outcome = sweep.run(echo, show=print_summary)
        finished = True
    finally:
        codes = wait_jobs(others, stop=not finished)
    echo(f"protocol: {outcome.completed} run(s) completed now, {len(outcome.failed)} failed"
         + (f", {len(outcome.elsewhere)} running in another sweep (it finishes them)" if outcome.elsewhere else ""))
    if outcome.reference_diverged:
        raise click.ClickException(f"the reference run ({protocol.selection.reference} ×1 on the held-out images) "
                                   "diverged, so no rate can be scored; lower the preset's base_lr in a copy of "
                                   "the protocol file (settings: base_lr=...)")
    if outcome.pending:
        echo(f"protocol: the rate of {', '.join(outcome.pending)} is not chosen yet (runs failed or run elsewhere); "
             "run the same command again to continue")
    if outcome.unchosen:
        echo(f"protocol: every rate of {', '.join(outcome.unchosen)} diverged; these rows are left out")
    if outcome.failed:
        names = ", ".join(label for label, _ in outcome.failed)
        raise click.ClickException(f"{len(outcome.failed)} protocol run(s) failed ({names}); see the messages "
                                   "above and the run folders' run.json")
    if any(codes):
        raise click.ClickException(f"{sum(c != 0 for c in codes)} of the other {len(codes)} protocol sweeps failed; "
                                   "see their messages above")
