"""Files of a pretraining run: the resumable checkpoint and the exported backbone.

The checkpoint keeps its own format, not the run checkpoints' of :mod:`mtpeft_bench.train.checkpoint`:
a folder ``NAME.ckpt/`` with ``state.json`` (step, configuration, loss history) and
``state.safetensors`` (tensors ``model.<name>`` and ``optim.<index>.<key>``, metadata ``step``).
Run checkpoints are one file with ``model/``-prefixed names, RNG states and a format version;
pretraining needs no RNG state (every batch is a function of the step), and checkpoints written
before this module existed must keep resuming. Both files go through the package's atomic writer
(:func:`mtpeft_bench.atomic.atomic_file`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mtpeft_bench.digest import sha256_of
from mtpeft_bench.errors import UserError
from mtpeft_bench.pretraining.config import PretrainConfig
from mtpeft_bench.pretraining.model import PretrainModel
from mtpeft_bench.atomic import atomic_file, write_json_atomic


def _save_safetensors_atomic(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    from safetensors.torch import save_file

    with atomic_file(path) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, tmp, metadata=metadata)


def paths_for(out: Path) -> dict[str, Path]:
    out = Path(out)
    stem = out.with_suffix("")
    return {"weights": out, "log": stem.with_suffix(".json"), "ckpt": Path(f"{stem}.ckpt")}


def save_checkpoint(folder: Path, model: nn.Module, optimizer: torch.optim.Optimizer, step: int,
                    state: dict[str, Any]) -> None:
    """Write ``state.json`` (step, config, history) and then ``state.safetensors`` (model + AdamW state).

    The JSON goes first: if the process dies in between, the tensors are one checkpoint older and
    resuming trusts their step and drops the JSON's extra history.
    """
    write_json_atomic(folder / "state.json", {**state, "step": step})
    tensors = {f"model.{k}": v.detach().clone() for k, v in model.state_dict().items()}
    for i, entry in optimizer.state_dict()["state"].items():
        for key, value in entry.items():
            tensors[f"optim.{i}.{key}"] = torch.as_tensor(value).clone()
    _save_safetensors_atomic(folder / "state.safetensors", tensors, {"step": str(step)})


def load_checkpoint(folder: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                    config: dict[str, Any]) -> tuple[int, list[dict[str, Any]]] | None:
    """Restore a checkpoint made with ``config``; returns ``(step, history)`` or None if there is none.

    Raises:
        UserError: the checkpoint was made with other settings.
    """
    from safetensors import safe_open

    tensors_path, state_path = folder / "state.safetensors", folder / "state.json"
    if not (tensors_path.is_file() and state_path.is_file()):
        return None
    state = json.loads(state_path.read_text())
    if state.get("config") != config:
        differ = sorted(k for k in set(config) | set(state.get("config", {}))
                        if config.get(k) != state.get("config", {}).get(k))
        raise UserError(f"checkpoint {folder} was made with other settings ({', '.join(differ)} differ); "
                        "delete it, pass the same settings, or choose another --output")
    with safe_open(str(tensors_path), framework="pt") as f:
        step = int(f.metadata()["step"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")}, strict=True)
    saved = optimizer.state_dict()
    saved["state"] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, index, name = key.split(".", 2)
            saved["state"].setdefault(int(index), {})[name] = value
    optimizer.load_state_dict(saved)
    return step, [h for h in state.get("history", []) if h["step"] <= step]


def export_backbone(model: PretrainModel, path: Path, cfg: PretrainConfig, extra: dict[str, Any]) -> str:
    """Write the backbone's state dict (``store_dtype``) as safetensors; returns its SHA-256."""
    dtype = getattr(torch, cfg.store_dtype)
    tensors = {k: v.detach().to(dtype) for k, v in model.backbone.state_dict().items()}
    # One metadata key only: safetensors writes several keys in a random order, which would make
    # the file's bytes (and its SHA-256) differ between identical runs.
    info = {"backbone": cfg.backbone, "pretrain_config": cfg.to_dict(), **extra}
    _save_safetensors_atomic(Path(path), tensors, {"mtbench": json.dumps(info, sort_keys=True)})
    os.chmod(path, 0o644)
    return sha256_of(Path(path))
