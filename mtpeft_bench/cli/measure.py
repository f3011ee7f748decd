"""``mtbench params`` and ``mtbench bench``: a method's parameter counts and its speed beside ``full``.

Both build models (no data, no training) and import torch.
"""

from __future__ import annotations

import json

import click

from mtpeft_bench.cli.options import (MODEL_OPTIONS, dataset_option, method_option, new_or_old, old_spelling,
                                      prefixed_settings, resolve_config, run_options, split_list)
from mtpeft_bench.errors import UserError


# How both commands print their result; --json is the old spelling of --format json.
format_option = click.option("--format", "fmt", type=click.Choice(["table", "json"]), default=None,
                             help="table (default) or json.")
old_json_option = old_spelling("--json", "old_json", "--format json", is_flag=True, flag_value="json")


@click.command()
@method_option
@dataset_option
@run_options(*MODEL_OPTIONS)
@format_option
@old_json_option
def params(method, dataset, fmt, old_json, **options):
    """Print the grouped parameter counts of a method's model (no data, no training).

    The model is built at the dataset's image size for its task set, with random weights.
    """
    from tabulate import tabulate

    fmt = new_or_old(fmt, old_json, "--format", "--json", default="table")
    cfg = resolve_config(dataset, options, method=method)
    from mtpeft_bench.model.backbone import create_backbone
    from mtpeft_bench.measure import parameter_groups, parameter_summary
    from mtpeft_bench.model.multitask import build_model, task_outputs_of
    from mtpeft_bench.running.setup import prepare

    resolved = prepare(cfg)
    backbone_model, _ = create_backbone(cfg.backbone, resolved.image_size, "none", cfg.drop_path)
    model, ids = build_model(resolved.method_cls(), resolved.method_cfg, backbone_model,
                             task_outputs_of(resolved.task_specs))
    groups = parameter_groups(model, ids)
    summary = parameter_summary(groups)
    info = {
        "method": cfg.method, "dataset": cfg.dataset, "tasks": [s.name for s in resolved.task_specs],
        "backbone": cfg.backbone, "image_size": list(resolved.image_size),
        "method_config": {k: v for k, v in vars(resolved.method_cfg).items()}, "groups": groups, "summary": summary,
    }
    if fmt == "json":
        click.echo(json.dumps(info, indent=2, default=str))
        return
    click.echo(f"{cfg.method} on {cfg.dataset} [{', '.join(info['tasks'])}], {cfg.backbone} at "
               f"{resolved.image_size[0]}x{resolved.image_size[1]}")
    rows = [[g, f"{c['trainable']:,}", f"{c['total']:,}"] for g, c in groups.items()]
    click.echo(tabulate(rows, headers=["group", "trainable", "total"], tablefmt="simple", disable_numparse=True))
    click.echo("")
    click.echo(tabulate([[k, f"{v:,}"] for k, v in summary.items()], headers=["summary", "parameters"],
                        tablefmt="simple", disable_numparse=True))


EXAMPLES_BENCH = """\b
Examples:
  mtbench bench --method decoder_only                      # micro Swin at 64 px, batch 8, vs full
  mtbench bench --method decoder_only --backbone swin_tiny_patch4_window7_224 --image-size 224 --batch-size 16
  mtbench bench --method <plugin> --set method.<key>=<value> --device cuda --amp
  mtbench bench --method decoder_only --format json > bench.json
"""


@click.command(epilog=EXAMPLES_BENCH)
@click.option("--method", "-m", required=True, help="Method to time.")
@click.option("--baseline", default="full", show_default=True, help="Method to time it against.")
@click.option("--dataset", "-d", default="synth", show_default=True, help="Dataset whose tasks set the heads.")
@run_options("tasks")
@click.option("--backbone", default="swin_micro", show_default=True, help="timm Swin name or swin_micro.")
@click.option("--image-size", default="64", show_default=True, help="N or H,W.")
@click.option("--batch-size", type=int, default=8, show_default=True)
@click.option("--steps", type=int, default=20, show_default=True, help="Timed rounds (each model once per round).")
@click.option("--warmup", type=int, default=5, show_default=True, help="Untimed rounds first.")
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda | cuda:N.")
@click.option("--amp", is_flag=True, help="Autocast (CUDA only), as runs with amp=true.")
@click.option("--set", "sets", multiple=True, metavar="method.KEY=VALUE", help="Options of --method.")
@format_option
@old_json_option
def bench(method, baseline, dataset, tasks, backbone, image_size, batch_size, steps, warmup, device, amp, sets,
          fmt, old_json):
    """Time one method's training step and inference beside `full`, printed as ratios."""
    from mtpeft_bench.config import coerce_value, parse_value

    as_json = new_or_old(fmt, old_json, "--format", "--json", default="table") == "json"
    method_options = prefixed_settings(sets, "method", "bench")
    size = coerce_value("image_size", parse_value(image_size), "")
    if min(size) < 32:
        raise UserError(f"--image-size must be at least 32 px per side, got {image_size}")
    for name, value, low in (("--batch-size", batch_size, 1), ("--steps", steps, 1), ("--warmup", warmup, 0)):
        if value < low:
            raise UserError(f"{name} must be at least {low}, got {value}")
    from mtpeft_bench.bench import BenchSetup, format_bench, run_bench
    from mtpeft_bench.registry import get_method

    get_method(method), get_method(baseline)  # unknown names fail here, in one line
    setup = BenchSetup(method=method, baseline=baseline, dataset=dataset, tasks=split_list(tasks), backbone=backbone,
                       image_size=size, batch_size=batch_size, steps=steps, warmup=warmup, device=device, amp=amp,
                       method_options=method_options)
    result = run_bench(setup)
    click.echo(json.dumps(result, indent=2, default=str) if as_json else format_bench(result), nl=not as_json)
