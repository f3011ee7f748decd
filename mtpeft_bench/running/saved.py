"""Trained models on disk: find a run's saved weights, rebuild its model and load them.

A trained model is found from a run id, a run folder, its checkpoint (``last.safetensors``), its
result record, or a folder written by ``mtbench export`` (``card.json`` + ``model.safetensors``).
The model is rebuilt from the configuration the run stored (its method, tasks, backbone and image
size) with an untrained backbone, and every tensor is then loaded from the file (strictly: every
key must match), so no pretrained weights are needed to load it.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from mtpeft_bench.errors import UserError

CARD_NAME = "card.json"
MODEL_NAME = "model.safetensors"
MERGED_NAME = "merged.safetensors"
ADAPTER_FOLDER = "adapter"


@dataclass
class SavedModel:
    """Where a trained model's weights are and how it was configured.

    Attributes:
        weights: the safetensors file (a checkpoint, or an export's ``model.safetensors``).
        config: the run's stored configuration (running/setup.py ``stored_config``).
        run_id: the run that trained it.
        record: the run's completed result record, when found.
        card: the export's card (None for a run's own checkpoint).
        in_checkpoint: whether ``weights`` is a training checkpoint (tensors under ``model/``).
    """

    weights: Path
    config: dict[str, Any]
    run_id: str
    record: dict[str, Any] | None
    card: dict[str, Any] | None
    in_checkpoint: bool

    @property
    def folder(self) -> Path:
        return self.weights.parent


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def _from_run_folder(folder: Path) -> SavedModel:
    from mtpeft_bench.running.folders import CHECKPOINT_NAME, STATE_NAME

    state = _read_json(folder / STATE_NAME)
    if state is None or "config" not in state:
        raise UserError(f"{folder} is not a run folder (no readable {STATE_NAME})")
    checkpoint = folder / CHECKPOINT_NAME
    if not checkpoint.is_file():
        raise UserError(f"run {folder.name} kept no checkpoint ({checkpoint} is missing; runs with "
                        "checkpoint_every=0 keep none once completed)")
    record = _read_json(Path(state["result"])) if state.get("result") else None
    return SavedModel(checkpoint, state["config"], folder.name, record, None, True)


def _from_export(folder: Path) -> SavedModel:
    card = _read_json(folder / CARD_NAME)
    if card is None or "config" not in card:
        raise UserError(f"{folder / CARD_NAME} is not an mtbench export card")
    weights = folder / MODEL_NAME
    if not weights.is_file():
        raise UserError(f"the export {folder} has no {MODEL_NAME}")
    return SavedModel(weights, card["config"], card.get("run_id", ""), None, card, False)


def find_saved(ref: str, runs_dir: Path) -> SavedModel:
    """The trained model ``ref`` names: an export folder, a run folder, a checkpoint file, a result
    record, or a run id under ``runs_dir``.

    Raises:
        UserError: nothing trained is found there (one line saying what is missing).
    """
    path = Path(ref).expanduser()
    if path.is_dir():
        return _from_export(path) if (path / CARD_NAME).is_file() else _from_run_folder(path)
    if path.is_file() and path.suffix == ".safetensors":
        return _from_export(path.parent) if (path.parent / CARD_NAME).is_file() else _from_run_folder(path.parent)
    if path.is_file() and path.suffix == ".json":
        record = _read_json(path)
        run_dir = ((record or {}).get("execution") or {}).get("run_dir")
        if not run_dir:
            raise UserError(f"{path} is not a result record of a run (no execution.run_dir)")
        from mtpeft_bench.results import stored_path

        saved = _from_run_folder(stored_path({**record, "_path": str(path)}, run_dir))
        saved.record = record
        return saved
    if (runs_dir / ref).is_dir():
        return _from_run_folder(runs_dir / ref)
    raise UserError(f"no run, export or checkpoint '{ref}' (not a path, and no run folder {runs_dir / ref}); "
                    "give a run id with --runs-dir, a run folder or an export folder")


def config_from_stored(stored: Mapping[str, Any], **changes: Any) -> Any:
    """A :class:`~mtpeft_bench.config.RunConfig` from a stored configuration (keys it does not know,
    such as a newer version's, are left out), with ``changes`` applied."""
    from mtpeft_bench.config import RunConfig

    names = {f.name for f in dataclasses.fields(RunConfig)}
    values = {k: v for k, v in stored.items() if k in names}
    if isinstance(values.get("image_size"), list):
        values["image_size"] = tuple(values["image_size"])
    return dataclasses.replace(RunConfig(**values), **changes)


def build_untrained(stored: Mapping[str, Any], plain: bool = False) -> tuple[Any, Any]:
    """The run's model with an untrained backbone, and its resolved run (running/setup.py).

    ``plain``: a stock Swin encoder and the same heads (the layout of merged weights) instead of
    the run's method.
    """
    from mtpeft_bench.model.backbone import create_backbone
    from mtpeft_bench.model.multitask import build_model, task_outputs_of
    from mtpeft_bench.running.setup import prepare

    changes = {"method": "full", "method_options": {}} if plain else {}
    resolved = prepare(config_from_stored(stored, **changes))
    backbone, _ = create_backbone(resolved.cfg.backbone, resolved.image_size, "none", 0.0)
    model, _ = build_model(resolved.method_cls(), resolved.method_cfg, backbone, task_outputs_of(resolved.task_specs))
    return model, resolved


def load_weights(model: Any, path: Path, in_checkpoint: bool) -> None:
    """Load every tensor of ``model`` from ``path`` (strict; one line when the model differs)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from mtpeft_bench.train.checkpoint import Checkpoint, load_checkpoint, restore_model

    if in_checkpoint:
        checkpoint = load_checkpoint(path)
    else:
        try:
            tensors = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise UserError(f"cannot read {path}: not a safetensors file ({exc})") from None
        checkpoint = Checkpoint({f"model/{k}": v for k, v in tensors.items()}, {})
    restore_model(checkpoint, model)


def load_trained(saved: SavedModel) -> tuple[Any, Any]:
    """The trained model of ``saved`` (on the CPU, in eval mode) and its resolved run."""
    model, resolved = build_untrained(saved.config)
    load_weights(model, saved.weights, saved.in_checkpoint)
    return model.eval(), resolved
