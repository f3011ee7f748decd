"""``mtbench export``: a trained model out of its run folder, as safetensors with a JSON card.

The export folder holds:

- ``model.safetensors``: every tensor of the trained model (encoder and heads; no optimizer, no
  scheduler, no RNG state), loadable into the run's model rebuilt from ``card.json``'s ``config``
  (:func:`mtpeft_bench.running.saved.load_trained`, ``mtbench eval --checkpoint``);
- ``merged.safetensors`` where the method allows it: with layout ``plain``, the state dict of a
  stock timm Swin and the heads, the method's update folded into the weights (peft tuners through
  each layer's own ``merge()``, e.g. LoRA's W + s·B·A; BitFit, full fine-tuning and decoder-only
  are plain already); with layout ``per_task_weights``, what the encoder's ``rebuilt_weights()``
  gives (DiTASK: the rebuilt W′ of every adapted linear and the W′ₜ of every task stream);
- ``adapter/`` for peft tuners: the adapter in peft's own ``save_pretrained`` layout
  (``adapter_config.json``, ``adapter_model.safetensors``), loadable with
  ``peft.PeftModel.from_pretrained(timm_swin, folder)``; the trained backbone extras and the heads
  are not in it (they are in ``model.safetensors``);
- ``card.json``: the run, its configuration, its final metrics, what each file holds and its SHA-256.

The folder is written under a temporary name beside the destination and renamed into place, so an
interrupted export leaves no half folder; each file is written atomically too.
"""

from __future__ import annotations

import copy
import datetime as _dt
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from mtpeft_bench.atomic import atomic_file, write_json_atomic
from mtpeft_bench.digest import sha256_of
from mtpeft_bench.errors import UserError
from mtpeft_bench.running.saved import (ADAPTER_FOLDER, CARD_NAME, MERGED_NAME, MODEL_NAME, SavedModel,
                                        build_untrained, load_trained)

EXPORT_FORMAT = 1


def save_tensors(path: Path, tensors: dict[str, Any], metadata: dict[str, str] | None = None) -> None:
    """Write ``tensors`` as safetensors, atomically (shared or strided tensors are copied first)."""
    from safetensors.torch import save_file

    from mtpeft_bench.train.checkpoint import unshared_tensors

    with atomic_file(path) as tmp:
        save_file(unshared_tensors(tensors), tmp, metadata={"format": "pt", **(metadata or {})})


def merge_peft_layers(model: Any) -> Any:
    """A deep copy of ``model`` with every peft tuner layer merged into its base layer and replaced by
    it (what peft's ``merge_and_unload`` does). Raises whatever the tuner's ``merge`` raises."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    merged = copy.deepcopy(model)
    targets = [(parent, name, child) for parent in merged.modules() for name, child in parent.named_children()
               if isinstance(child, BaseTunerLayer)]
    for parent, name, child in targets:
        child.merge()
        setattr(parent, name, child.get_base_layer())
    return merged


def _same_layout(state: dict[str, Any], reference: dict[str, Any]) -> bool:
    return set(state) == set(reference) and all(tuple(state[k].shape) == tuple(reference[k].shape) for k in state)


def merged_form(model: Any, stored_config: dict[str, Any]) -> tuple[dict[str, Any] | None, str, str]:
    """``(tensors, layout, note)``: the merged weights of ``model`` and how they are laid out, or
    ``(None, "", why not)``."""
    import torch

    encoder = model.encoder
    rebuilt = getattr(encoder, "rebuilt_weights", None)
    if callable(rebuilt):
        with torch.no_grad():
            weights = rebuilt()
        others = {f"encoder.{k}": v for k, v in encoder.state_dict().items()}
        return ({**weights, **{f"heads.{k}": v for k, v in model.heads.state_dict().items()}},
                "per_task_weights", f"the method's rebuilt weights ({len(weights)} tensors); the model's other "
                f"tensors ({len(others)}) are in {MODEL_NAME}")
    try:
        with torch.no_grad():
            merged = merge_peft_layers(model)
    except Exception as exc:  # a tuner that cannot merge: say why, export the rest
        return None, "", f"the tuner cannot merge ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
    state = merged.state_dict()
    plain, _ = build_untrained(stored_config, plain=True)
    if not _same_layout(state, plain.state_dict()):
        return None, "", "the method adds layers that do not fold into a stock Swin"
    return state, "plain", "a stock timm Swin and the heads (method=full layout), the method's update folded in"


def adapter_form(model: Any, folder: Path) -> str:
    """Write a peft tuner's adapter in peft's ``save_pretrained`` layout into ``folder``; a note
    saying what was written, or why nothing was."""
    tuner = getattr(model.encoder, "peft_tuner", None)
    if tuner is None:
        return ""
    from peft.utils import get_peft_model_state_dict

    try:
        state = get_peft_model_state_dict(tuner, adapter_name="default")
    except (ValueError, KeyError, TypeError) as exc:
        return f"not written: peft cannot save this adapter ({str(exc).splitlines()[0]})"
    folder.mkdir()
    # peft's PeftModel keeps the tuner as `base_model`; its files name the tensors from there.
    save_tensors(folder / "adapter_model.safetensors", {f"base_model.{k}": v for k, v in state.items()})
    tuner.peft_config["default"].save_pretrained(str(folder))
    return "peft save_pretrained layout: peft.PeftModel.from_pretrained(timm_swin, folder)"


def export(saved: SavedModel, dest: Path) -> Path:
    """Write the export folder of ``saved`` at ``dest`` (see the module docstring); return ``dest``.

    Raises:
        UserError: ``dest`` exists, or the weights do not fit the run's model.
    """
    import mtpeft_bench

    if dest.exists():
        raise UserError(f"{dest} already exists; choose another --output or remove it")
    model, resolved = load_trained(saved)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    try:
        files: dict[str, dict[str, Any]] = {}
        save_tensors(tmp / MODEL_NAME, model.state_dict())
        files[MODEL_NAME] = {"holds": "every tensor of the trained model (encoder and heads), no optimizer state"}
        tensors, layout, note = merged_form(model, saved.config)
        if tensors is not None:
            save_tensors(tmp / MERGED_NAME, tensors, {"layout": layout})
            files[MERGED_NAME] = {"holds": note, "layout": layout}
        adapter_note = adapter_form(model, tmp / ADAPTER_FOLDER)
        for name in (MODEL_NAME, MERGED_NAME):
            if name in files:
                files[name]["sha256"] = sha256_of(tmp / name)
        record = saved.record or {}
        card = {
            "format": "mtbench-export", "format_version": EXPORT_FORMAT, "mtbench_version": mtpeft_bench.__version__,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "run_id": saved.run_id, "method": resolved.cfg.method, "dataset": resolved.cfg.dataset,
            "tasks": resolved.tasks, "backbone": resolved.cfg.backbone, "image_size": list(resolved.image_size),
            "config": saved.config, "config_hash": record.get("config_hash"),
            "metrics": record.get("metrics"), "weights": record.get("weights"),
            "files": files, "merged": note if tensors is None else layout,
            "adapter": ({"folder": ADAPTER_FOLDER, "holds": adapter_note}
                        if (tmp / ADAPTER_FOLDER).is_dir() else adapter_note or None),
        }
        write_json_atomic(tmp / CARD_NAME, card)
        os.replace(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest
