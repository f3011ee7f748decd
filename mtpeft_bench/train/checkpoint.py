"""Checkpoints: what lets a run survive being stopped and continue exactly.

A run folder (running/folders.py) holds ``last.safetensors``, the latest checkpoint: one safetensors
file written to a temporary name and renamed into place, so a crash at any moment leaves the
previous checkpoint (or none), never a torn one. Tensors: ``model/<name>`` (the full state dict,
buffers included), ``optim/<i>/<name>`` (the optimizer's per-parameter state),
``rng/<rank>/torch|cuda|numpy``. Everything else is JSON in the file's metadata (key ``mtbench``):
optimizer hyper-parameters, scheduler and gradient-scaler state, Python RNG state, the epoch and
step, the history so far, the elapsed time.

Loading never unpickles: tensors come from safetensors, everything else from JSON.

Where a checkpoint stands: ``epoch`` is the epoch to run next and ``step_in_epoch`` the number of
its steps already taken (0 at an epoch end; more when a Ctrl-C stopped the run mid-epoch);
``epoch == epochs + 1`` means training is over and only the final evaluation remains.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import torch

from mtpeft_bench.errors import UserError
from mtpeft_bench.atomic import atomic_file, json_default


FORMAT_VERSION = 1


# -- random number generators -----------------------------------------------------------------------

def capture_rng(device: torch.device | None = None) -> dict[str, Any]:
    """The states of torch (CPU and the CUDA device in use), numpy and Python's ``random``."""
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
                             "python": random.getstate()}
    if device is not None and device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def restore_rng(state: Mapping[str, Any], device: torch.device | None = None) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and device is not None and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)


def _rng_to_storage(rank: int, state: Mapping[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    tensors = {f"rng/{rank}/torch": state["torch"], f"rng/{rank}/numpy": torch.from_numpy(np.asarray(keys).copy())}
    if "cuda" in state:
        tensors[f"rng/{rank}/cuda"] = state["cuda"].cpu()
    version, words, gauss_next = state["python"]
    meta = {"numpy": [kind, int(pos), int(has_gauss), float(gauss)], "python": [version, list(words), gauss_next]}
    return tensors, meta


def _rng_from_storage(rank: int, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> dict[str, Any]:
    kind, pos, has_gauss, gauss = meta["numpy"]
    version, words, gauss_next = meta["python"]
    state = {
        "torch": tensors[f"rng/{rank}/torch"],
        "numpy": (kind, tensors[f"rng/{rank}/numpy"].numpy().astype(np.uint32), pos, has_gauss, gauss),
        "python": (version, tuple(words), gauss_next),
    }
    if f"rng/{rank}/cuda" in tensors:
        state["cuda"] = tensors[f"rng/{rank}/cuda"]
    return state


# -- the checkpoint file ----------------------------------------------------------------------------

@dataclass
class Checkpoint:
    """A loaded checkpoint: tensors by name and the JSON metadata."""

    tensors: dict[str, torch.Tensor]
    meta: dict[str, Any]

    @property
    def epoch(self) -> int:
        return int(self.meta["epoch"])

    @property
    def step_in_epoch(self) -> int:
        return int(self.meta.get("step_in_epoch", 0))

    def rng(self, rank: int) -> dict[str, Any] | None:
        ranks = self.meta.get("rng", {})
        if str(rank) not in ranks:
            return None
        return _rng_from_storage(rank, self.tensors, ranks[str(rank)])


def unshared_tensors(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Contiguous CPU tensors, cloning any that shares storage with one seen before (safetensors
    refuses shared memory; tied weights are restored by ``load_state_dict`` either way)."""
    seen: set[int] = set()
    out = {}
    for name, tensor in tensors.items():
        tensor = tensor.detach().to("cpu").contiguous()
        storage = tensor.untyped_storage()
        whole = storage.nbytes() == tensor.numel() * tensor.element_size()
        if storage.data_ptr() in seen or not whole:
            tensor = tensor.clone()
        seen.add(tensor.untyped_storage().data_ptr())
        out[name] = tensor
    return out


def _optimizer_to_storage(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    plain: dict[str, dict[str, Any]] = {}
    for index, values in state["state"].items():
        for name, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim/{index}/{name}"] = value
            else:
                plain.setdefault(str(index), {})[name] = value
    return tensors, {"param_groups": state["param_groups"], "plain_state": plain}


def _optimizer_from_storage(tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for name, tensor in tensors.items():
        if name.startswith("optim/"):
            _, index, key = name.split("/", 2)
            state.setdefault(int(index), {})[key] = tensor
    for index, values in meta.get("plain_state", {}).items():
        state.setdefault(int(index), {}).update(values)
    groups = []
    for group in meta["param_groups"]:
        group = dict(group)
        if isinstance(group.get("betas"), list):
            group["betas"] = tuple(group["betas"])
        groups.append(group)
    return {"state": state, "param_groups": groups}


def save_checkpoint(path: Path, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
                    scaler: Any, rng_states: Iterable[Mapping[str, Any]], meta: Mapping[str, Any]) -> Path:
    """Write a checkpoint atomically (temporary file in the same folder, fsync, rename).

    Args:
        model: the bare model (not the DDP wrapper).
        rng_states: one :func:`capture_rng` per rank, in rank order.
        meta: JSON-able facts (epoch, step_in_epoch, history, ...).
    """
    from safetensors.torch import save_file

    tensors = {f"model/{k}": v for k, v in model.state_dict().items()}
    optim_tensors, optim_meta = _optimizer_to_storage(optimizer)
    tensors.update(optim_tensors)
    rng_meta = {}
    for rank, state in enumerate(rng_states):
        rng_tensors, rng_meta[str(rank)] = _rng_to_storage(rank, state)
        tensors.update(rng_tensors)
    full_meta = {
        **meta, "format_version": FORMAT_VERSION, "optimizer": optim_meta,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None,
        "rng": rng_meta,
    }
    metadata = {"mtbench": json.dumps(full_meta, allow_nan=False, default=json_default)}
    with atomic_file(path) as tmp:
        save_file(unshared_tensors(tensors), tmp, metadata=metadata)
    return Path(path)


def load_checkpoint(path: Path) -> Checkpoint:
    """Read a checkpoint written by :func:`save_checkpoint` (safetensors and JSON only; no pickle).

    Raises:
        UserError: the file is missing, not a safetensors file, or not an mtbench checkpoint.
    """
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise UserError(f"no checkpoint at {path}")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise UserError(f"cannot read checkpoint {path}: not a safetensors file ({exc}); mtbench never "
                        "unpickles checkpoints") from None
    try:
        meta = json.loads(metadata["mtbench"])
    except (KeyError, json.JSONDecodeError):
        raise UserError(f"{path} is a safetensors file but not an mtbench checkpoint") from None
    if meta.get("format_version") != FORMAT_VERSION:
        raise UserError(f"{path} has checkpoint format {meta.get('format_version')}, this mtbench reads "
                        f"{FORMAT_VERSION}")
    return Checkpoint(tensors, meta)


def restore_model(checkpoint: Checkpoint, model: torch.nn.Module) -> None:
    """Load the model weights and buffers (strict: every key must match)."""
    model_state = {k[len("model/"):]: v for k, v in checkpoint.tensors.items() if k.startswith("model/")}
    expected = model.state_dict()
    missing, unexpected = sorted(set(expected) - set(model_state)), sorted(set(model_state) - set(expected))
    shapes = [k for k in model_state if k in expected and tuple(model_state[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or shapes:
        # torch's own message is a multi-line list of every key; one line names the first of each kind
        kinds = (("missing key", "missing keys", missing), ("unexpected key", "unexpected keys", unexpected),
                 ("tensor of another shape", "tensors of another shape", shapes))
        parts = [f"{len(keys)} {one if len(keys) == 1 else many} (e.g. {keys[0]})" for one, many, keys in kinds if keys]
        raise UserError(f"the checkpoint was saved from another model: {', '.join(parts)}; "
                        "resume with the same method, tasks and backbone")
    try:
        model.load_state_dict(model_state, strict=True)
    except RuntimeError as exc:
        raise UserError(f"the checkpoint does not fit this model ({str(exc).splitlines()[0]}); "
                        "resume with the same method, tasks and backbone") from None


def restore_optimization(checkpoint: Checkpoint, *, optimizer: torch.optim.Optimizer, scheduler: Any,
                         scaler: Any) -> None:
    """Load the optimizer, scheduler and gradient-scaler state."""
    optimizer.load_state_dict(_optimizer_from_storage(checkpoint.tensors, checkpoint.meta["optimizer"]))
    if scheduler is not None and checkpoint.meta.get("scheduler") is not None:
        scheduler.load_state_dict(checkpoint.meta["scheduler"])
    if scaler is not None and scaler.is_enabled() and checkpoint.meta.get("scaler"):
        scaler.load_state_dict(checkpoint.meta["scaler"])
