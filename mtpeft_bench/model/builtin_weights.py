"""The backbone weights that ship with mtbench (``--weights builtin``).

mtbench pretrains its small CPU backbones itself (:mod:`mtpeft_bench.pretraining`, ``mtbench
pretrain``) so that offline runs compare methods on pretrained weights, as the real benchmark
does, rather than on a random initialisation. The files live in ``mtpeft_bench/weights/``:
``<alias>.safetensors`` (the backbone state dict, stored as float16 and loaded into float32), and
``card.json``, the machine-readable part of the model card (``README.md`` beside it), which names
each file with its SHA-256, its pretraining configuration, command and first losses.

This module is a registry of files: it finds and verifies them and says where they came from.
Loading the tensors into a model is :func:`mtpeft_bench.model.backbone.create_backbone`'s job, which
asks this module for the file; nothing here imports the backbone or torch.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mtpeft_bench.digest import sha256_of
from mtpeft_bench.errors import UserError


WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"
CARD_FILE = WEIGHTS_DIR / "card.json"


def card() -> dict[str, Any]:
    """The card's data: ``{"models": {alias: {"file", "sha256", "pretrain_config", "command", ...}}}``."""
    try:
        return json.loads(CARD_FILE.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {"models": {}}


def available() -> list[str]:
    """Backbone aliases with built-in weights."""
    return sorted(card()["models"])


def weights_file(name: str) -> Path:
    """The shipped file of backbone ``name``.

    Raises:
        UserError: mtbench ships no weights for ``name``.
    """
    entry = card()["models"].get(name)
    if entry is None:
        have = ", ".join(available()) or "none"
        raise UserError(f"mtbench ships no built-in weights for backbone '{name}' (built-in: {have}); "
                        "use --backbone with one of those, --weights none, timm or a checkpoint path")
    return WEIGHTS_DIR / entry["file"]


def verified_file(name: str) -> tuple[Path, dict[str, Any]]:
    """The shipped file of backbone ``name``, its SHA-256 checked against the card, and its provenance.

    Returns:
        ``(path, provenance)``; the provenance is what the result file stores (``source`` is
        ``builtin``).

    Raises:
        UserError: no built-in weights for ``name``, or a missing or altered file.
    """
    path = weights_file(name)
    entry = card()["models"][name]
    if not path.is_file():
        raise UserError(f"the built-in weights file {path} is missing: reinstall mtbench")
    digest = sha256_of(path)
    if digest != entry["sha256"]:
        raise UserError(f"the built-in weights file {path} does not match its model card (SHA-256 {digest[:12]}… "
                        f"instead of {entry['sha256'][:12]}…): reinstall mtbench")
    config = entry.get("pretrain_config", {})
    provenance = {
        "source": "builtin",
        "id": f"mtbench/{name}",
        "file": f"mtpeft_bench/weights/{entry['file']}",
        "sha256": digest,
        "stored_dtype": entry.get("stored_dtype"),
        "card": "mtpeft_bench/weights/README.md",
        "pretraining": {"objective": entry.get("objective"), "corpus": entry.get("corpus"),
                        "seed": config.get("seed"), "steps": config.get("steps"), "command": entry.get("command")},
    }
    return path, provenance
