"""Building a run's torch objects: seeds, the model (backbone + method + heads), the data loaders,
the parameter groups and the :class:`~mtpeft_bench.train.trainer.Trainer` with its schedule.

The model comes first, so a bad ``--weights`` fails before any data is generated or read.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from mtpeft_bench.errors import UserError
from mtpeft_bench.running.setup import ResolvedRun


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
    samplers (train/distributed.py) and ``train_wrapper(dataset)`` wrap the training set."""
    import torch
    from torch.utils.data import DataLoader

    cfg = resolved.cfg
    train_set = resolved.dataset.build("train", resolved.task_specs, resolved.image_size, root, train=True)
    # evaluated on the dataset's evaluation split: "val", or images held out of training (synth data.holdout)
    eval_split = getattr(resolved.dataset, "eval_split", "val")
    val_set = resolved.dataset.build(eval_split, resolved.task_specs, resolved.image_size, root, train=False)
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


@dataclass
class Training:
    """Everything one process trains with.

    Attributes:
        model: the bare model (the trainer may hold it inside a DDP wrapper).
        weights: where the backbone's weights came from (``source``, ``id``, ``sha256``...).
        steps_per_epoch: optimisation steps per epoch (after ``limit_train_batches``).
        groups, summary: the parameter counts by group and their summary (measure.py).
        optimizer_params: the number of parameters the optimizer updates.
        speed: the speed switches applied to the model (train/speed.py), for the record.
    """

    model: Any
    weights: dict[str, Any]
    train_loader: Any
    val_loader: Any
    steps_per_epoch: int
    groups: dict[str, Any]
    summary: dict[str, int]
    trainer: Any
    optimizer_params: int
    speed: dict[str, Any] = field(default_factory=dict)


def build_training(resolved: ResolvedRun, ctx: Any, device: Any) -> Training:
    """Build the model, the loaders and the trainer of this process.

    Raises:
        UserError: bad weights, missing data, or fewer training samples per process than one batch.
    """
    from mtpeft_bench.model.backbone import create_backbone
    from mtpeft_bench.model.encoder import enable_grad_checkpointing
    from mtpeft_bench.measure import parameter_groups, parameter_summary
    from mtpeft_bench.model.multitask import build_model, task_outputs_of
    from mtpeft_bench.train import distributed
    from mtpeft_bench.train.optim import Schedule
    from mtpeft_bench.train.speed import apply_speed_switches
    from mtpeft_bench.train.trainer import Trainer

    cfg = resolved.cfg
    backbone, weights = create_backbone(cfg.backbone, resolved.image_size, cfg.weights, cfg.drop_path)
    method = resolved.method_cls()
    model, backbone_ids = build_model(method, resolved.method_cfg, backbone, task_outputs_of(resolved.task_specs))
    if cfg.grad_checkpoint:
        enable_grad_checkpointing(model, cfg.backbone)
    model.to(device)
    resolved.dataset.progress = bool(cfg.progress and ctx.is_main)  # a generated dataset's bar, as the training's
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
    speed = apply_speed_switches(model, cfg)  # on the bare model, before DDP wraps it
    trained = distributed.wrap_model(model, ctx, device, cfg.sync_bn)

    scale = cfg.lr_scale(ctx.world_size)
    schedule = Schedule(lr=cfg.base_lr * scale, warmup_lr=cfg.warmup_lr * scale, min_lr=cfg.min_lr * scale,
                        total_steps=steps_per_epoch * cfg.epochs,
                        warmup_steps=int(round(cfg.warmup_epochs * steps_per_epoch)))
    trainer = Trainer(trained, resolved.task_specs, device, schedule, weight_decay=cfg.weight_decay,
                      clip_grad=cfg.clip_grad, amp=cfg.amp, amp_dtype=cfg.amp_dtype, loss_weights=cfg.loss_weights,
                      progress=cfg.progress and ctx.is_main, agree=ctx.any if ctx.distributed else None,
                      accum_steps=cfg.accum_steps)
    optimizer_params = sum(p.numel() for g in trainer.optimizer.param_groups for p in g["params"])
    return Training(model, weights, train_loader, val_loader, steps_per_epoch, groups, summary, trainer,
                    optimizer_params, speed)
