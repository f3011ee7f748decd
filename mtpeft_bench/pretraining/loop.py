"""The pretraining run: load the corpus, build the model, train step by step with checkpoints, export."""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mtpeft_bench.train import Schedule, make_optimizer
from mtpeft_bench.errors import UserError
from mtpeft_bench.pretraining.batches import CorpusBatches
from mtpeft_bench.pretraining.checkpoint import export_backbone, load_checkpoint, paths_for, save_checkpoint
from mtpeft_bench.pretraining.config import PretrainConfig
from mtpeft_bench.pretraining.corpus import CorpusConfig, load_corpus, load_geometry
from mtpeft_bench.pretraining.losses import pretrain_losses
from mtpeft_bench.pretraining.model import build_pretrain_model
from mtpeft_bench.atomic import write_json_atomic


def pretrain(cfg: PretrainConfig, out: Path, *, progress: bool = True, checkpoint_every: int = 200,
             command: str | None = None, stop_after: int | None = None) -> dict[str, Any]:
    """Pretrain, checkpoint, export; returns the log record (also written to ``NAME.json``).

    Args:
        out: the ``.safetensors`` file to write the backbone to.
        checkpoint_every: steps between checkpoints (and at the end).
        command: the command line to record (default: this process's).
        stop_after: stop (after checkpointing) once this step is reached, without exporting —
            to test resuming.
    """
    from tqdm.auto import tqdm

    out = Path(out).expanduser()
    if out.suffix != ".safetensors":
        raise UserError(f"--output must name a .safetensors file, got {out}")
    files = paths_for(out)
    threads_before = torch.get_num_threads()
    deterministic_before = torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(cfg.threads)
    torch.use_deterministic_algorithms(True)
    try:
        started = time.time()
        corpus_cfg = CorpusConfig(num_images=cfg.corpus_images, seed=cfg.corpus_seed)
        arrays = load_corpus(corpus_cfg, progress=progress)
        if cfg.height_weight > 0 or cfg.group_weight > 0:
            arrays = {**arrays, **load_geometry(corpus_cfg, progress=progress)}
        data = CorpusBatches(arrays, cfg)
        model = build_pretrain_model(cfg)
        schedule = Schedule(lr=cfg.lr, warmup_lr=cfg.lr / 100, min_lr=cfg.min_lr, total_steps=cfg.steps,
                            warmup_steps=cfg.warmup_steps)
        # the benchmark's AdamW (decay groups) and per-step warm-up + cosine schedule
        optimizer, scheduler = make_optimizer(model, schedule, cfg.weight_decay)
        config = cfg.to_dict()
        resumed = load_checkpoint(files["ckpt"], model, optimizer, config)
        step, history = resumed if resumed else (0, [])
        elapsed_before = history[-1].get("elapsed_s", 0.0) if history else 0.0
        t0 = time.time()
        bar = tqdm(total=cfg.steps, initial=step, desc=f"pretrain {cfg.config}", disable=not progress,
                   dynamic_ncols=True, file=sys.stderr)
        model.train()
        while step < cfg.steps and (stop_after is None or step < stop_after):
            scheduler.step_update(step)  # the LR is a function of the step alone
            lr = optimizer.param_groups[0]["lr"]
            images, mask, albedo, labels = data.batch(step)
            losses = pretrain_losses(model, images, mask, albedo, labels, cfg)
            optimizer.zero_grad(set_to_none=True)
            losses["loss"].backward()
            nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad)
            optimizer.step()
            step += 1
            entry = {"step": step, "lr": lr, **{k: v.item() for k, v in losses.items()},
                     "elapsed_s": round(elapsed_before + time.time() - t0, 2)}
            if not math.isfinite(entry["loss"]):
                raise RuntimeError(f"pretraining diverged at step {step} (loss {entry['loss']})")
            history.append(entry)
            bar.update(1)
            bar.set_postfix(loss=f"{entry['loss']:.4f}", albedo=f"{entry['albedo']:.3f}", labels=f"{entry['labels']:.3f}")
            if step % checkpoint_every == 0 or step == cfg.steps or step == stop_after:
                save_checkpoint(files["ckpt"], model, optimizer, step, {"config": config, "history": history})
        bar.close()
        record: dict[str, Any] = {
            "config": config, "backbone": cfg.backbone, "image_size": list(cfg.image_size),
            "corpus": {**dataclasses.asdict(corpus_cfg), "key": corpus_cfg.key()},
            "command": command or " ".join(["mtbench", *sys.argv[1:]]),
            "steps_done": step, "history": history,
            "train_seconds": history[-1]["elapsed_s"] if history else 0.0,
            "wall_seconds_this_call": round(time.time() - started, 2),
            "environment": {"torch": torch.__version__, "threads": torch.get_num_threads(),
                            "deterministic": torch.are_deterministic_algorithms_enabled()},
        }
        if step < cfg.steps:
            record["status"] = "stopped"
            return record
        record["status"] = "completed"
        record["sha256"] = export_backbone(model, files["weights"], cfg, {"steps_done": step})
        record["weights"] = str(files["weights"])
        write_json_atomic(files["log"], record)
        return record
    finally:
        torch.set_num_threads(threads_before)
        torch.use_deterministic_algorithms(deterministic_before)
