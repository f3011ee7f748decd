"""What a run shows a person: the lines it logs as it starts, and the summary the command line
prints when it ends (the per-task metrics table, Δm, cost, MFU where known, the result path).

A run itself prints nothing: its progress goes to the ``mtpeft_bench`` logger at INFO
(:data:`LOG`); ``mtbench`` shows it on stderr through :func:`log_to_stderr` (``-q`` only warnings
and errors, ``-v`` also DEBUG), and prints :func:`print_summary` of the run's result.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, Mapping

LOG = logging.getLogger("mtpeft_bench")


class _CurrentStderr(logging.StreamHandler):
    """A handler writing to whatever ``sys.stderr`` is when a line is logged (a test's capture, a redirect)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


def log_to_stderr(level: int = logging.INFO) -> None:
    """Show the ``mtpeft_bench`` logger's lines from ``level`` up on stderr, as they are (the handler
    is added once per process; each call sets the level)."""
    if not any(isinstance(h, _CurrentStderr) for h in LOG.handlers):
        LOG.addHandler(_CurrentStderr())
    LOG.setLevel(level)


def start_lines(resolved: Any, ctx: Any, device: Any, training: Any, session: Any) -> list[str]:
    """What a run says when it starts: what runs where, its size and schedule, where it resumes."""
    cfg, summary, schedule = resolved.cfg, training.summary, training.trainer.schedule
    lines = [
        f"mtbench: {cfg.method} on {cfg.dataset} [{', '.join(resolved.tasks)}] · preset {cfg.preset} · seed {cfg.seed} · "
        f"{device}{f' × {ctx.world_size} processes ({ctx.backend})' if ctx.distributed else ''} · backbone "
        f"{cfg.backbone} ({training.weights['source']} weights) · {resolved.image_size[0]}x{resolved.image_size[1]} px · "
        f"run {session.run_id}",
        f"mtbench: trainable {summary['total_trainable']:,} params (method {summary['method']:,}, "
        f"backbone {summary['backbone_trainable']:,}, decoder {summary['decoder']:,}) of {summary['total']:,}; "
        f"{len(training.train_loader.dataset)} train / {len(training.val_loader.dataset)} val images; {cfg.epochs} epochs × "
        f"{training.steps_per_epoch} steps; lr {schedule.lr:.3g} (base {cfg.base_lr:.3g} × {cfg.batch_size}"
        f"{f'×{ctx.world_size}' if ctx.distributed else ''}/{cfg.lr_reference_batch})"
        + (f"; each batch in {cfg.accum_steps} micro-batches of {cfg.batch_size // cfg.accum_steps}"
           if getattr(cfg, "accum_steps", 1) > 1 else "")
        + ("; activation checkpointing" if getattr(cfg, "grad_checkpoint", False) else ""),
    ]
    if session.resumed_from is not None:
        lines.append(f"mtbench: resuming run {session.run_id} at epoch {session.start_epoch}, step {session.step_in_epoch}")
    return lines


def format_metrics(specs, metrics: Mapping[str, Mapping[str, float]]) -> str:
    """The per-task table: one row per metric (the primary one starred), its arrow, value and unit."""
    from tabulate import tabulate

    rows = []
    for spec in specs:
        for m in spec.metrics:
            value = metrics.get(spec.name, {}).get(m.name)
            mark = "*" if m.primary else ""
            rows.append([spec.name, f"{m.name}{mark} {m.arrow}", "—" if value is None else f"{value:.4f}", m.unit])
    return tabulate(rows, headers=["task", "metric", "value", "unit"], tablefmt="simple")


def utilization_text(block: Mapping[str, Any] | None) -> str:
    """One line of model FLOPs utilisation (``efficiency.utilization``): empty where no MFU is known
    (a CPU without ``MTBENCH_PEAK_TFLOPS``, a record written before the block existed)."""
    if not block:
        return ""
    parts = []
    for key in ("train", "inference"):
        figures = block.get(key) or {}
        if figures.get("mfu") is not None:
            parts.append(f"{key} {figures['achieved_flops_per_s'] / 1e12:.3g} TFLOP/s = {100 * figures['mfu']:.3g} % MFU")
    if not parts:
        return ""
    devices = block.get("devices") or 1
    return (f"model FLOPs utilisation: {' · '.join(parts)} of {block['peak_flops_per_s'] / 1e12:.4g} TFLOP/s "
            f"{block['precision']} peak{f' × {devices} devices' if devices > 1 else ''} ({block['device_name']}; "
            f"training counted as {block.get('training_flops_factor', 3)} forwards per image)")


def format_summary(result: Any) -> str:
    """The end of a completed run on stdout: the metrics table, Δm, cost, MFU (where the device's peak
    is known) and the result file.

    Args:
        result: the run's :class:`~mtpeft_bench.running.pipeline.RunResult`.
    """
    record = result.record
    lines = [format_metrics(result.task_specs, record["metrics"])]
    delta = record["delta_m"]
    if delta["value"] is not None:
        lines.append(f"Δm = {delta['value']:+.2f} % vs {delta['baseline']['source']} single-task baselines")
    else:
        lines.append(f"Δm: n/a ({delta['baseline'].get('reason')})")
    efficiency = record["efficiency"]
    inference = efficiency["inference"]
    latency = inference["unmerged"]["latency_ms"]
    lines.append(f"trainable parameters: {record['params']['summary']['total_trainable']:,} · peak memory "
                 f"{result.peak_memory_mb:.0f} MB ({efficiency['memory_kind']}) · "
                 f"train {efficiency['train_images_per_s'] or 0:.1f} img/s · "
                 f"{inference['unmerged']['flops_per_image'] / 1e9:.3g} GFLOPs/image"
                 + (f" · latency {latency:.3g} ms at batch 1" if latency is not None else "")
                 + f" · wall {record['wall_time_s']:.0f} s")
    mfu = utilization_text(efficiency.get("utilization"))
    if mfu:
        lines.append(mfu)
    lines.append(f"result: {result.path}")
    return "\n".join(lines)


def print_summary(result: Any) -> None:
    """Print :func:`format_summary` (after a blank line on stderr) when this process completed the run
    now; nothing when it was done before or when another process writes the record."""
    if result.outcome != "completed":
        return
    print("", file=sys.stderr, flush=True)
    print(format_summary(result))
