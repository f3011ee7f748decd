"""A run's configuration shown or checked without training: ``mtbench run --print-config`` and
``mtbench run --dry-run``.

:func:`printed_config` is the part of the result record that says what the run is (its resolved
``config``, the plugins' full option sets and the ``config_hash``), as YAML that is itself a run file
(running/config_file.py). :func:`dry_run` goes as far as a run goes before its first step that
writes or reads data: it resolves and validates everything, checks the data folder, the output
folders and the weights, builds the model (with its weights) and counts its parameters.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mtpeft_bench.config import RunConfig


def record_parts(cfg: RunConfig) -> dict[str, Any]:
    """``config``, ``method_config``, ``data_config`` and ``config_hash``, as the result record will hold them."""
    from mtpeft_bench.running.setup import plain_fields, prepare, run_hash
    from mtpeft_bench.train.distributed import env_world_size

    resolved = prepare(cfg)
    return {"config": resolved.stored_config(), "method_config": plain_fields(resolved.method_cfg),
            "data_config": plain_fields(resolved.dataset.config),
            "config_hash": run_hash(cfg, resolved, env_world_size())}


def printed_config(cfg: RunConfig) -> str:
    """:func:`record_parts` as YAML, with a comment line on how to use it."""
    import yaml

    parts = record_parts(cfg)
    head = (f"# mtbench run configuration {parts['config_hash']}: what the result record stores. Rerun it with\n"
            "# `mtbench run --config FILE` (command-line options and --set still override it).\n")
    return head + yaml.safe_dump(parts, sort_keys=False, default_flow_style=None, allow_unicode=True)


def dry_run(cfg: RunConfig) -> dict[str, Any]:
    """Resolve, validate and build the model of ``cfg``; train nothing, write nothing.

    Returns:
        ``config_hash``, ``method``, ``dataset``, ``tasks``, ``backbone``, ``image_size``, ``weights``
        (their provenance), parameter ``groups`` and ``summary`` (measure.py), the ``batch``
        (effective batch, micro-batches, micro-batch size), the scaled ``lr`` and where the run
        would write (``out``, ``runs``).

    Raises:
        UserError: whatever the run itself would refuse before training.
    """
    from mtpeft_bench.measure import parameter_groups, parameter_summary
    from mtpeft_bench.model.backbone import create_backbone
    from mtpeft_bench.model.encoder import enable_grad_checkpointing
    from mtpeft_bench.model.multitask import build_model, task_outputs_of
    from mtpeft_bench.running.folders import runs_root
    from mtpeft_bench.running.setup import check_before_work, pick_device, prepare, run_hash
    from mtpeft_bench.train.distributed import env_world_size

    resolved = prepare(cfg)
    world = env_world_size()
    pick_device(cfg.device)  # an unusable device is refused here as in a run
    out, runs = Path(cfg.out).expanduser(), runs_root(cfg)
    check_before_work(resolved, out, runs)
    backbone, weights = create_backbone(cfg.backbone, resolved.image_size, cfg.weights, cfg.drop_path)
    model, backbone_ids = build_model(resolved.method_cls(), resolved.method_cfg, backbone,
                                      task_outputs_of(resolved.task_specs))
    if cfg.grad_checkpoint:
        enable_grad_checkpointing(model, cfg.backbone)
    groups = parameter_groups(model, backbone_ids)
    return {
        "config_hash": run_hash(cfg, resolved, world), "method": cfg.method, "dataset": cfg.dataset,
        "tasks": resolved.tasks, "backbone": cfg.backbone, "image_size": list(resolved.image_size),
        "weights": weights, "groups": groups, "summary": parameter_summary(groups),
        "batch": {"batch_size": cfg.batch_size, "processes": world, "accum_steps": cfg.accum_steps,
                  "micro_batch": cfg.batch_size // cfg.accum_steps},
        "lr": cfg.base_lr * cfg.lr_scale(world), "grad_checkpoint": cfg.grad_checkpoint,
        "out": str(out), "runs": str(runs),
    }


def format_dry_run(info: dict[str, Any]) -> str:
    """The dry run's report as text: what would run, its parameter counts, its batch and LR."""
    from tabulate import tabulate

    batch = info["batch"]
    lines = [
        f"dry run: {info['method']} on {info['dataset']} [{', '.join(info['tasks'])}], {info['backbone']} at "
        f"{info['image_size'][0]}x{info['image_size'][1]} ({info['weights'].get('source')} weights); "
        f"config_hash {info['config_hash']}",
        f"batch {batch['batch_size']} per process × {batch['processes']} process(es)"
        + (f", in {batch['accum_steps']} micro-batches of {batch['micro_batch']}" if batch["accum_steps"] > 1 else "")
        + f"; lr {info['lr']:.3g}" + ("; activation checkpointing on" if info["grad_checkpoint"] else ""),
        "",
        tabulate([[g, f"{c['trainable']:,}", f"{c['total']:,}"] for g, c in info["groups"].items()],
                 headers=["group", "trainable", "total"], tablefmt="simple", disable_numparse=True),
        "",
        tabulate([[k, f"{v:,}"] for k, v in info["summary"].items()], headers=["summary", "parameters"],
                 tablefmt="simple", disable_numparse=True),
        "",
        f"nothing was trained or written; results would go to {info['out']}, checkpoints to {info['runs']}",
    ]
    return "\n".join(lines)
