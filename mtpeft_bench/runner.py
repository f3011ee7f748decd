"""One run, start to finish: resolve → data → backbone → method → heads → train → evaluate →
measure → write the result record.

``run(cfg)`` is the Python API behind ``mtbench run``; it returns the record it wrote.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import random
import secrets
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from mtpeft_bench.config import RunConfig, config_hash, resolve
from mtpeft_bench.errors import UserError
from mtpeft_bench.registry import get_dataset, get_method
from mtpeft_bench.tasks.base import config_from_mapping


def _echo(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass
class ResolvedRun:
    """The plugins and their configurations for one run (no torch objects yet)."""

    cfg: RunConfig
    dataset: Any
    task_specs: list
    method_cls: type
    method_cfg: Any
    image_size: tuple[int, int]
    data_root: Path | None


def prepare(cfg: RunConfig) -> ResolvedRun:
    """Look up plugins, validate their options and the task list; touch no data yet.

    Raises:
        UserError: unknown method/dataset/task, or invalid plugin options.
    """
    dataset_cls = get_dataset(cfg.dataset)
    method_cls = get_method(cfg.method)
    data_cfg = config_from_mapping(dataset_cls.Config, cfg.data_options, f"{cfg.dataset} dataset")
    method_cfg = config_from_mapping(method_cls.Config, cfg.method_options, f"{cfg.method} method")
    dataset = dataset_cls(data_cfg)
    specs = dataset.task_specs(cfg.tasks)
    unknown = [t for t in cfg.loss_weights if t not in {s.name for s in specs}]
    if unknown:
        raise UserError(f"loss_weights names task {', '.join(unknown)}, which this run does not train")
    image_size = tuple(cfg.image_size) if cfg.image_size else tuple(dataset.image_size)
    # $MTBENCH_DATA locates real datasets; a generated one only honours an explicit --data-root.
    root = cfg.data_root or (os.environ.get("MTBENCH_DATA") if dataset.requires_root else None)
    return ResolvedRun(cfg, dataset, specs, method_cls, method_cfg, image_size, Path(root).expanduser() if root else None)


def _plain(obj: Any) -> dict[str, Any]:
    import dataclasses

    return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)} if dataclasses.is_dataclass(obj) else {}


def run_hash(cfg: RunConfig, resolved: ResolvedRun, world_size: int = 1) -> str:
    """The ``config_hash`` of a run: its configuration, plugin options and (above 1) the number of
    processes, which sets the global batch."""
    extra: dict[str, Any] = {"method": _plain(resolved.method_cfg), "data": _plain(resolved.dataset.config)}
    if world_size > 1:
        extra["world_size"] = world_size
    return config_hash(cfg, extra=extra)


def recipe_key(resolved: ResolvedRun, weights: Mapping[str, Any], world_size: int = 1) -> str:
    """Hash of what a single-task baseline must share with a run for Δm to be meaningful."""
    cfg = resolved.cfg
    recipe = {
        "dataset": cfg.dataset, "dataset_version": resolved.dataset.version, "data": _plain(resolved.dataset.config),
        "backbone": cfg.backbone, "weights": {k: weights.get(k) for k in ("source", "id", "sha256")},
        "image_size": list(resolved.image_size), "epochs": cfg.epochs, "batch_size": cfg.batch_size,
        "lr": [cfg.base_lr, cfg.warmup_lr, cfg.min_lr, cfg.lr_reference_batch, cfg.warmup_epochs],
        "weight_decay": cfg.weight_decay, "clip_grad": cfg.clip_grad, "amp": cfg.amp, "drop_path": cfg.drop_path,
        "loss_weights": cfg.loss_weights, "limits": [cfg.limit_train_batches, cfg.limit_eval_batches],
    }
    if world_size > 1:
        recipe["world_size"] = world_size
    return config_hash(RunConfig(), extra=recipe)


def seed_everything(seed: int, deterministic: bool = False) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


def _worker_init(worker_id: int) -> None:
    import numpy as np
    import torch

    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def make_loaders(resolved: ResolvedRun, root: Path | None, device: Any, sampler_factory: Callable | None = None,
                 train_wrapper: Callable | None = None):
    """Train and validation DataLoaders (the train one shuffles with a seeded generator, drops the last
    partial batch as the reference code does). ``sampler_factory(dataset, train)`` may supply the
    samplers (distributed.py) and ``train_wrapper(dataset)`` wrap the training set."""
    import torch
    from torch.utils.data import DataLoader

    cfg = resolved.cfg
    train_set = resolved.dataset.build("train", resolved.task_specs, resolved.image_size, root, train=True)
    val_set = resolved.dataset.build("val", resolved.task_specs, resolved.image_size, root, train=False)
    if train_wrapper is not None:
        train_set = train_wrapper(train_set)
    if len(train_set) < cfg.batch_size:
        raise UserError(f"the train split has {len(train_set)} samples, fewer than one batch of {cfg.batch_size}; "
                        "lower --set batch_size=...")
    generator = torch.Generator()
    generator.manual_seed(cfg.seed)
    common = dict(num_workers=cfg.num_workers, pin_memory=device.type == "cuda", worker_init_fn=_worker_init,
                  persistent_workers=False)
    train_sampler = sampler_factory(train_set, True) if sampler_factory else None
    val_sampler = sampler_factory(val_set, False) if sampler_factory else None
    train = DataLoader(train_set, batch_size=cfg.batch_size, shuffle=train_sampler is None, sampler=train_sampler,
                       drop_last=True, generator=generator, **common)
    # a dataset may declare its evaluation batch size (1 when targets keep each image's original size)
    val_batch = getattr(val_set, "eval_batch_size", None) or cfg.eval_batch_size or cfg.batch_size
    val = DataLoader(val_set, batch_size=val_batch, shuffle=False, sampler=val_sampler, drop_last=False, **common)
    return train, val


def pick_device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device '{name}'; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("device cuda was asked for, but no CUDA GPU is available; use --set device=cpu")
    return device


def check_writable(out: Path, what: str = "results", fix: str = "choose another folder with --out") -> None:
    """Fail before training, not after, when results (or checkpoints) cannot be written."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{secrets.token_hex(4)}"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise UserError(f"cannot write {what} to {out}: {exc.strerror or exc}; {fix}") from None


def git_state() -> dict[str, Any]:
    """Commit and dirty flag of the source tree the package runs from (None outside a git checkout)."""
    here = Path(__file__).resolve().parent.parent
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
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    return {"git": git_state(), "versions": versions, "device": str(device), "device_name": name,
            "platform": platform.platform(), "threads": torch.get_num_threads()}


def task_specs_record(specs) -> dict[str, Any]:
    return {s.name: {"primary": s.primary.name, "kind": s.kind,
                     "metrics": {m.name: {"higher_is_better": m.higher_is_better, "unit": m.unit} for m in s.metrics}}
            for s in specs}


def format_metrics(specs, metrics: Mapping[str, Mapping[str, float]]) -> str:
    from tabulate import tabulate

    rows = []
    for spec in specs:
        for m in spec.metrics:
            value = metrics.get(spec.name, {}).get(m.name)
            mark = "*" if m.primary else ""
            rows.append([spec.name, f"{m.name}{mark} {m.arrow}", "—" if value is None else f"{value:.4f}", m.unit])
    return tabulate(rows, headers=["task", "metric", "value", "unit"], tablefmt="simple")


def run(cfg: RunConfig | None = None, /, *, resume: bool | str | None = None, **options: Any) -> dict[str, Any]:
    """Train and evaluate one method on one dataset; write and return the result record.

    Call as ``run(RunConfig(...))`` or ``run(method="ditask", dataset="synth", preset="smoke",
    **overrides)`` (keyword overrides use the same keys as ``--set``). Under ``torchrun`` every
    process calls it; rank 0 writes. ``resume``: None (a new run), True (continue this
    configuration: resume its newest interrupted run, or return its completed record, or start
    one) or a run id (see :mod:`mtpeft_bench.session`).

    Raises:
        UserError: bad input, found before training where possible.
        RunFailed: the loss diverged or memory ran out (the last checkpoint is kept).
        RunCancelled: stopped by Ctrl-C/SIGTERM after saving a checkpoint (a ``KeyboardInterrupt``).
    """
    from mtpeft_bench import distributed
    from mtpeft_bench.model.backbone import create_backbone
    from mtpeft_bench.baselines import compute_delta
    from mtpeft_bench.checkpoint import runs_root
    from mtpeft_bench.engine import Schedule, Trainer, _autocast
    from mtpeft_bench.loop import EpochLoop
    from mtpeft_bench.measure import FLOPS_COUNTED, parameter_groups, parameter_summary, profile_inference
    from mtpeft_bench.model.multitask import build_model, task_outputs_of
    from mtpeft_bench.results import SCHEMA_VERSION, read_records, write_record
    from mtpeft_bench.session import RunSession

    if cfg is None:
        preset = options.pop("preset", None)
        cfg = resolve(preset, {}, options)
    started = time.time()
    resolved = prepare(cfg)
    ctx, device = distributed.setup(cfg.device, pick_device)
    out = Path(cfg.out).expanduser()
    runs = runs_root(cfg)
    if ctx.is_main:
        check_writable(out)
        check_writable(runs, "checkpoints", "choose another folder with --set runs_dir=...")
    tasks = [s.name for s in resolved.task_specs]
    cfg_dict = {**cfg.to_dict(), "image_size": list(resolved.image_size), "tasks": tasks}
    full_hash = run_hash(cfg, resolved, ctx.world_size)
    plan = RunSession.plan(ctx, cfg, cfg_dict, full_hash, runs, out, resume)
    if "completed" in plan:  # resume=True and this configuration is already done
        if ctx.is_main:
            _echo(f"mtbench: already completed, nothing to do: {plan['completed'].get('_path')}")
        return plan["completed"]
    seed_everything(cfg.seed, cfg.deterministic)

    # The model first: a bad --weights must fail before any data is generated or read.
    backbone, weights = create_backbone(cfg.backbone, resolved.image_size, cfg.weights, cfg.drop_path)
    method = resolved.method_cls()
    model, backbone_ids = build_model(method, resolved.method_cfg, backbone, task_outputs_of(resolved.task_specs))
    model.to(device)
    root = resolved.dataset.resolve_root(resolved.data_root)
    train_loader, val_loader = make_loaders(resolved, root, device, distributed.sampler_factory(ctx, cfg.seed),
                                            lambda dataset: distributed.PerSampleSeed(dataset, cfg.seed))
    steps_per_epoch = len(train_loader) if cfg.limit_train_batches is None else min(len(train_loader),
                                                                                   cfg.limit_train_batches)
    if steps_per_epoch == 0:
        raise UserError(f"each of the {ctx.world_size} processes gets {len(train_loader.sampler)} training samples, "
                        f"fewer than one batch of {cfg.batch_size}; lower --batch-size or use fewer processes")
    groups = parameter_groups(model, backbone_ids)
    summary = parameter_summary(groups)
    trained = distributed.wrap_model(model, ctx, device, cfg.sync_bn)

    scale = cfg.lr_scale(ctx.world_size)
    schedule = Schedule(lr=cfg.base_lr * scale, warmup_lr=cfg.warmup_lr * scale, min_lr=cfg.min_lr * scale,
                        total_steps=steps_per_epoch * cfg.epochs,
                        warmup_steps=int(round(cfg.warmup_epochs * steps_per_epoch)))
    trainer = Trainer(trained, resolved.task_specs, device, schedule, weight_decay=cfg.weight_decay,
                      clip_grad=cfg.clip_grad, amp=cfg.amp, amp_dtype=cfg.amp_dtype, loss_weights=cfg.loss_weights,
                      progress=cfg.progress and ctx.is_main, agree=ctx.any if ctx.distributed else None)
    optimizer_count = sum(p.numel() for g in trainer.optimizer.param_groups for p in g["params"])
    session = RunSession.begin(ctx, plan, device)  # from here on, the run folder records how the run ends
    session.restore_model(model)
    session.restore_training(trainer)

    say = _echo if ctx.is_main else (lambda message: None)
    say(f"mtbench: {cfg.method} on {cfg.dataset} [{', '.join(tasks)}] · preset {cfg.preset} · seed {cfg.seed} · "
        f"{device}{f' × {ctx.world_size} processes ({ctx.backend})' if ctx.distributed else ''} · backbone "
        f"{cfg.backbone} ({weights['source']} weights) · {resolved.image_size[0]}x{resolved.image_size[1]} px · "
        f"run {session.run_id}")
    say(f"mtbench: trainable {summary['total_trainable']:,} params (method {summary['method']:,}, "
        f"backbone {summary['backbone_trainable']:,}, decoder {summary['decoder']:,}) of {summary['total']:,}; "
        f"{len(train_loader.dataset)} train / {len(val_loader.dataset)} val images; {cfg.epochs} epochs × "
        f"{steps_per_epoch} steps; lr {schedule.lr:.3g} (base {cfg.base_lr:.3g} × {cfg.batch_size}"
        f"{f'×{ctx.world_size}' if ctx.distributed else ''}/{cfg.lr_reference_batch})")
    if session.resumed_from is not None:
        say(f"mtbench: resuming run {session.run_id} at epoch {session.start_epoch}, step {session.step_in_epoch}")

    loop = EpochLoop(cfg, resolved, ctx, device, model, trainer, train_loader, val_loader, session)
    metrics, infer, train_peak, memory_kind, peak = loop.run(say)

    train_rate = _global_rate(ctx, trainer.train_throughput.last_rate)
    infer_rate = _global_rate(ctx, infer.last_rate)
    if not ctx.is_main:
        ctx.barrier()  # rank 0 writes the record
        return {}
    history = loop.history
    # After the peak-memory reading: a merged copy of the encoder must not count as the run's memory.
    inference = profile_inference(model, resolved.image_size, val_loader.batch_size, device,
                                  warmup=cfg.measure_warmup, repeats=cfg.measure_repeats,
                                  autocast=lambda: _autocast(device, cfg.amp, cfg.amp_dtype))
    encoder = model.encoder
    method_info = dict(encoder.method_info()) if callable(getattr(encoder, "method_info", None)) else {}
    stamp = _dt.datetime.now(_dt.timezone.utc)
    record: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "run_id": session.run_id,
        "status": "completed",
        "created": stamp.isoformat(timespec="seconds"),
        "wall_time_s": round(session.elapsed_before + time.time() - started, 2),
        "method": cfg.method, "dataset": cfg.dataset, "dataset_version": resolved.dataset.version,
        "tasks": tasks, "seed": cfg.seed, "preset": cfg.preset, "tag": cfg.tag,
        "config": cfg_dict,
        "method_config": _plain(resolved.method_cfg), "data_config": _plain(resolved.dataset.config),
        "config_hash": full_hash, "recipe_key": recipe_key(resolved, weights, ctx.world_size),
        "task_specs": task_specs_record(resolved.task_specs),
        "metrics": metrics,
        "params": {"groups": groups, "summary": summary, "optimizer": optimizer_count},
        "efficiency": {
            "peak_memory_mb": round(peak, 1), "train_peak_memory_mb": round(train_peak, 1), "memory_kind": memory_kind,
            "train_images_per_s": train_rate,
            "inference_images_per_s": infer_rate,
            "batch_size": cfg.batch_size, "eval_batch_size": val_loader.batch_size,
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
        },
        "weights": weights,
        "method_info": method_info,
        "history": history,
        "execution": {
            "world_size": ctx.world_size, "backend": ctx.backend, "sync_bn": bool(cfg.sync_bn and ctx.distributed),
            "sessions": session.sessions, "resumed_from": session.resumed_from, "run_dir": str(session.run_dir.path),
        },
        "environment": environment(device),
    }
    others = read_records(out)
    record["delta_m"] = compute_delta(record, [*others, record])
    path = write_record(out, record)
    record["_path"] = str(path)
    session.mark("completed", result=str(path))
    ctx.barrier()

    _echo("")
    print(format_metrics(resolved.task_specs, metrics))
    delta = record["delta_m"]
    if delta["value"] is not None:
        print(f"Δm = {delta['value']:+.2f} % vs {delta['baseline']['source']} single-task baselines")
    else:
        print(f"Δm: n/a ({delta['baseline'].get('reason')})")
    latency = inference["unmerged"]["latency_ms"]
    print(f"trainable parameters: {summary['total_trainable']:,} · peak memory {peak:.0f} MB ({memory_kind}) · "
          f"train {record['efficiency']['train_images_per_s'] or 0:.1f} img/s · "
          f"{inference['unmerged']['flops_per_image'] / 1e9:.3g} GFLOPs/image"
          + (f" · latency {latency:.3g} ms at batch 1" if latency is not None else "")
          + f" · wall {record['wall_time_s']:.0f} s")
    print(f"result: {path}")
    return record


def _global_rate(ctx: Any, rate: float | None) -> float | None:
    """Images/s of all processes together (None if any process timed nothing)."""
    if ctx.any([rate is None])[0]:
        return None
    return ctx.sum(rate)
