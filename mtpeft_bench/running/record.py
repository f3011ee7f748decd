"""The result record of a completed run: what it computed (metrics, history), what it cost
(parameters, memory, speed, FLOPs, latency), where it ran (environment, git state), its identity
(``config_hash``, ``recipe_key``) and its Δm against single-task baselines; written atomically
into the results folder (results.py holds the format and the writer).

Records are committed to the repository and shared, so they carry no absolute path of the machine
that made them: the path settings of the configuration (:data:`PATH_SETTINGS`) and the run folder
(``execution.run_dir``) are stored relative to the results folder the record is written into
(``out`` itself is ``"."``); :func:`mtpeft_bench.results.stored_path` turns them back into paths,
and also reads the absolute paths of records written before.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any, Mapping

from mtpeft_bench.config import RunConfig, config_hash
from mtpeft_bench.running.setup import ResolvedRun, plain_fields


#: Configuration settings that hold paths (none of them is part of a run's identity, config.NOT_IDENTITY).
PATH_SETTINGS = ("out", "runs_dir", "data_root")


def relative_to_results(path: str | os.PathLike | None, out: Path) -> str | None:
    """``path`` relative to the results folder ``out``, with ``/`` separators (None stays None)."""
    if path is None or path == "":
        return None
    absolute = Path(os.path.abspath(Path(path).expanduser()))
    return Path(os.path.relpath(absolute, os.path.abspath(Path(out).expanduser()))).as_posix()


def portable_config(stored: dict[str, Any], out: Path) -> dict[str, Any]:
    """The stored configuration with its path settings relative to the results folder ``out``."""
    return {**stored, **{key: relative_to_results(stored.get(key), out) for key in PATH_SETTINGS if key in stored}}


def recipe_key(resolved: ResolvedRun, weights: Mapping[str, Any], world_size: int = 1) -> str:
    """Hash of what a single-task baseline must share with a run for Δm to be meaningful."""
    cfg = resolved.cfg
    recipe = {
        "dataset": cfg.dataset, "dataset_version": resolved.dataset.version, "data": plain_fields(resolved.dataset.config),
        "backbone": cfg.backbone, "weights": {k: weights.get(k) for k in ("source", "id", "sha256")},
        "image_size": list(resolved.image_size), "epochs": cfg.epochs, "batch_size": cfg.batch_size,
        "lr": lr_recipe(cfg),
        "weight_decay": cfg.weight_decay, "clip_grad": cfg.clip_grad, "amp": cfg.amp, "drop_path": cfg.drop_path,
        "loss_weights": cfg.loss_weights, "limits": [cfg.limit_train_batches, cfg.limit_eval_batches],
    }
    if world_size > 1:
        recipe["world_size"] = world_size
    return config_hash(RunConfig(), extra=recipe)


def lr_recipe(cfg: RunConfig) -> list[Any]:
    """The learning-rate part of a run's recipe. A rate chosen per method by a leaderboard protocol
    (``lr_selection``, running/lr_selection.py) is named by that protocol instead of its value: every
    row of the protocol then shares the single-task baselines it ran (at the rate of its ``full`` row),
    whatever rate each method was given; elsewhere the rates themselves must match."""
    selection = cfg.lr_selection or {}
    if selection.get("protocol"):
        return [f"chosen per method by protocol {selection['protocol']}", cfg.lr_reference_batch, cfg.warmup_epochs]
    return [cfg.base_lr, cfg.warmup_lr, cfg.min_lr, cfg.lr_reference_batch, cfg.warmup_epochs]


def git_state() -> dict[str, Any]:
    """Commit and dirty flag of the source tree the package runs from (None outside a git checkout)."""
    here = Path(__file__).resolve().parents[2]  # the folder holding the mtpeft_bench package
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        if commit.returncode != 0:
            return {"commit": None, "dirty": None}
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                                capture_output=True, text=True, timeout=5)
        return {"commit": commit.stdout.strip(), "dirty": bool(status.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def environment(device: Any) -> dict[str, Any]:
    import importlib.metadata as md

    import torch

    versions = {"python": platform.python_version()}
    for pkg in ("mtpeft-bench", "torch", "timm", "peft", "numpy", "triton"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            versions[pkg] = None
    from mtpeft_bench.hardware import device_name

    return {"git": git_state(), "versions": versions, "device": str(device), "device_name": device_name(device),
            "platform": platform.platform(), "threads": torch.get_num_threads()}


def task_specs_record(specs) -> dict[str, Any]:
    return {s.name: {"primary": s.primary.name, "kind": s.kind,
                     "metrics": {m.name: {"higher_is_better": m.higher_is_better, "unit": m.unit} for m in s.metrics}}
            for s in specs}


def global_rate(ctx: Any, rate: float | None) -> float | None:
    """Images/s of all processes together (None if any process timed nothing); every process calls it."""
    if ctx.any([rate is None])[0]:
        return None
    return ctx.sum(rate)


def data_wait_share(history: list[dict[str, Any]]) -> float | None:
    """Σ loader waiting time / Σ epoch wall time over the epochs of ``history`` (None if unmeasured)."""
    timed = [e for e in history if e.get("data_seconds") is not None and e.get("seconds")]
    total = sum(e["seconds"] for e in timed)
    return round(sum(e["data_seconds"] for e in timed) / total, 4) if total else None


def efficiency(resolved: ResolvedRun, ctx: Any, device: Any, training: Any, fit: Any,
               rates: tuple[float | None, float | None]) -> dict[str, Any]:
    """The record's ``efficiency`` block; profiles inference (FLOPs, latency) on this process. Its
    ``utilization`` sub-block (:func:`mtpeft_bench.hardware.utilization`) turns the rates and FLOPs
    into achieved FLOP/s and MFU; records written before it lack it, so readers must not require it.

    Args:
        training: the run's :class:`~mtpeft_bench.running.build.Training`; fit: its
            :class:`~mtpeft_bench.train.fit.FitResult`; rates: the global training and inference images/s.
    """
    import torch

    from mtpeft_bench.hardware import utilization
    from mtpeft_bench.machine_load import load_record
    from mtpeft_bench.measure import FLOPS_COUNTED, profile_inference
    from mtpeft_bench.train.device import autocast

    cfg = resolved.cfg
    # After the peak-memory reading: a merged copy of the encoder must not count as the run's memory.
    inference = profile_inference(training.model, resolved.image_size, training.val_loader.batch_size,
                                  device, warmup=cfg.measure_warmup, repeats=cfg.measure_repeats,
                                  autocast=lambda: autocast(device, cfg.amp, cfg.amp_dtype))
    return {
        "peak_memory_mb": round(fit.peak_mb, 1), "train_peak_memory_mb": round(fit.train_peak_mb, 1),
        "memory_kind": fit.memory_kind,
        "train_images_per_s": rates[0],
        "inference_images_per_s": rates[1],
        "batch_size": cfg.batch_size, "eval_batch_size": training.val_loader.batch_size,
        "global_batch_size": cfg.batch_size * ctx.world_size,
        "timing": "model compute only (forward+backward+step for training, forward for inference), "
                  "after warm-up steps, CUDA-synchronised"
                  + ("; summed over processes; peak memory of rank 0" if ctx.distributed else ""),
        "flops_per_image": inference["unmerged"]["flops_per_image"],
        "latency_ms": inference["unmerged"]["latency_ms"],
        "inference": inference,
        "flops_counted": FLOPS_COUNTED,
        "latency_timing": f"median of {cfg.measure_repeats} forwards at batch 1 on random images after "
                          f"{cfg.measure_warmup} warm-up forwards, CUDA-synchronised (rank 0)",
        # The speed switches applied to the model (train/speed.py); the settings are in the config.
        "speed_switches": training.speed,
        # The share of the training epochs' wall time spent waiting for the data loader (rank 0).
        "data_wait_share": data_wait_share(fit.history),
        # How busy the machine was while the speed above was measured (rank 0's view).
        "load": load_record([training.trainer.train_throughput.load, fit.inference.load], device,
                            torch.get_num_threads(), cfg.num_workers),
        # Achieved model FLOP/s and its share of the devices' peak (None where the peak is unknown).
        "utilization": utilization(inference["unmerged"]["flops_per_image"], rates[0], rates[1], device, cfg.amp,
                                   cfg.amp_dtype, devices=ctx.world_size),
    }


def build_record(resolved: ResolvedRun, run_hash: str, ctx: Any, device: Any, session: Any, training: Any, fit: Any,
                 rates: tuple[float | None, float | None], started: float) -> dict[str, Any]:
    """The result record of a completed run (without Δm, which :func:`write_result` adds).

    Args:
        run_hash: the run's ``config_hash``; session: its :class:`~mtpeft_bench.running.session.RunSession`;
        training, fit, rates: as for :func:`efficiency`; started: ``time.time()`` when this session began.
    """
    from mtpeft_bench.results import SCHEMA_VERSION

    cfg = resolved.cfg
    efficiency_block = efficiency(resolved, ctx, device, training, fit, rates)
    encoder = training.model.encoder
    method_info = dict(encoder.method_info()) if callable(getattr(encoder, "method_info", None)) else {}
    stamp = _dt.datetime.now(_dt.timezone.utc)
    return {
        "schema_version": SCHEMA_VERSION,
        "run_id": session.run_id,
        "status": "completed",
        "created": stamp.isoformat(timespec="seconds"),
        "wall_time_s": round(session.elapsed_before + time.time() - started, 2),
        "method": cfg.method, "dataset": cfg.dataset, "dataset_version": resolved.dataset.version,
        "tasks": resolved.tasks, "seed": cfg.seed, "preset": cfg.preset, "tag": cfg.tag,
        "eval_split": getattr(resolved.dataset, "eval_split", "val"), "lr_selection": cfg.lr_selection,
        "config": portable_config(resolved.stored_config(), Path(cfg.out)),
        "method_config": plain_fields(resolved.method_cfg), "data_config": plain_fields(resolved.dataset.config),
        "config_hash": run_hash, "recipe_key": recipe_key(resolved, training.weights, ctx.world_size),
        "task_specs": task_specs_record(resolved.task_specs),
        "metrics": fit.metrics,
        "params": {"groups": training.groups, "summary": training.summary, "optimizer": training.optimizer_params},
        "efficiency": efficiency_block,
        "weights": training.weights,
        "method_info": method_info,
        "history": fit.history,
        "execution": {
            "world_size": ctx.world_size, "backend": ctx.backend, "sync_bn": bool(cfg.sync_bn and ctx.distributed),
            "sessions": session.sessions, "resumed_from": session.resumed_from,
            "run_dir": relative_to_results(session.folder, Path(cfg.out)),
        },
        "environment": environment(device),
    }


def write_result(out: Path, record: dict[str, Any]) -> Path:
    """Add Δm (against the single-task baselines among the records under ``out`` scored on the same
    split, and this one), write the record into ``out`` and note its path in ``record["_path"]``."""
    from mtpeft_bench.report.baselines import compute_delta
    from mtpeft_bench.results import eval_split, read_records, select_split, write_record

    others = select_split(read_records(out), eval_split(record))[0]  # never a holdout baseline for a val run
    record["delta_m"] = compute_delta(record, [*others, record])
    path = write_record(out, record)
    record["_path"] = str(path)
    return path
