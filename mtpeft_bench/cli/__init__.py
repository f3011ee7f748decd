"""The ``mtbench`` command line (click): the group, every command's registration, and :func:`main`.

One module per command group:

    options.py   the run options (declared once, shared by run, params and sweep), comma lists, seeds
    run.py       run                    train and evaluate one configuration
    sweep.py     sweep                  a grid of runs, or its torchrun commands
    measure.py   params, bench          parameter counts; step and inference timing
    report.py    compare, plot          leaderboards and figures from result JSONs
    reproduce.py reproduce              rerun a run from its result JSON and compare the metrics
    ls.py        ls                     the registered methods, datasets and presets
    data.py      data prepare/verify/show
    pretrain.py  pretrain               pretraining a built-in backbone

Commands import torch only when they need it: ``ls`` and ``compare`` never do. Bad input is
answered with one line on stderr and exit status 2, never a traceback. What the library logs
(``mtpeft_bench`` logger: a run's progress, a sweep's steps, warnings) goes to stderr at INFO;
``-q`` keeps only warnings and errors, ``-v`` adds DEBUG. A command's result (tables, JSON, the
run summary) is printed on stdout whatever the level.
"""

from __future__ import annotations

import logging
import sys

import click

from mtpeft_bench.cli import data, export, ls, measure, pretrain, report, reproduce, run, sweep
from mtpeft_bench.errors import UserError


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(package_name="mtpeft-bench", prog_name="mtbench")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors on stderr (results still print).")
@click.option("-v", "--verbose", is_flag=True, help="Also debug messages on stderr.")
def cli(quiet: bool, verbose: bool) -> None:
    """mtbench: multi-task parameter-efficient fine-tuning of Swin transformers on dense prediction.

    One training loop, one set of heads, one protocol for every method; results as JSON,
    leaderboards with Δm, parameters, memory and speed.
    """
    from mtpeft_bench.running.summary import log_to_stderr

    if quiet and verbose:
        raise click.UsageError("-q/--quiet and -v/--verbose exclude each other")
    log_to_stderr(logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO)


for _command in (run.run, sweep.sweep, measure.params, measure.bench, report.compare, report.plot, ls.ls, data.data,
                 pretrain.pretrain, reproduce.reproduce, export.export, export.evaluate):
    cli.add_command(_command)
for _command in (data.prepare, data.verify, data.show):
    data.data.add_command(_command)


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``mtbench`` script: run the CLI, turn bad input into one line and exit 2."""
    try:
        code = cli.main(args=argv, prog_name="mtbench", standalone_mode=False)
    except UserError as exc:
        click.echo(f"mtbench: error: {_one_line(exc)}", err=True)
        sys.exit(UserError.exit_code)
    except click.UsageError as exc:
        where = exc.ctx.command_path if exc.ctx is not None else "mtbench"
        click.echo(f"{where}: error: {_one_line(exc.format_message())} (see '{where} --help')", err=True)
        sys.exit(2)
    except click.ClickException as exc:
        click.echo(f"mtbench: error: {_one_line(exc.format_message())}", err=True)
        sys.exit(exc.exit_code or 1)
    except (KeyboardInterrupt, click.Abort):
        click.echo("mtbench: interrupted", err=True)
        sys.exit(130)
    sys.exit(code or 0)
