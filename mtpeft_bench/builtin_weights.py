"""The backbone weights that ship with mtbench (``--weights builtin``).

mtbench pretrains its small CPU backbones itself (:mod:`mtpeft_bench.pretrain`, ``mtbench
pretrain``) so that offline runs compare methods on pretrained weights, as the real benchmark
does, rather than on a random initialisation. The files live in ``mtpeft_bench/weights/``:
``<alias>.safetensors`` (the backbone state dict, stored as float16 and loaded into float32), and
``card.json``, the machine-readable part of the model card (``README.md`` beside it), which names
each file with its SHA-256, its pretraining configuration, command and first losses.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import nn

from mtpeft_bench.errors import UserError


WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
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


def load_into(model: nn.Module, name: str) -> dict[str, Any]:
    """Load the built-in weights of backbone ``name`` into ``model`` (a timm Swin of that configuration).

    The file's SHA-256 is checked against the card first. The tensors go through timm's Swin
    checkpoint filter, which resizes the relative-position bias tables when the image size clamps
    the windows differently from the pretraining size.

    Returns:
        The provenance stored in the result file (``source`` is ``builtin``).

    Raises:
        UserError: no built-in weights for ``name``, a missing or altered file, or a model that
            does not fit them.
    """
    import torch
    from safetensors.torch import load_file
    from mtpeft_bench.model.backbone import convert_swin_state, sha256_of

    path = weights_file(name)
    entry = card()["models"][name]
    if not path.is_file():
        raise UserError(f"the built-in weights file {path} is missing: reinstall mtbench")
    digest = sha256_of(path)
    if digest != entry["sha256"]:
        raise UserError(f"the built-in weights file {path} does not match its model card (SHA-256 {digest[:12]}… "
                        f"instead of {entry['sha256'][:12]}…): reinstall mtbench")
    state = {k: v.to(torch.float32) for k, v in load_file(str(path)).items()}
    state = convert_swin_state(state, model)
    result = model.load_state_dict(state, strict=False)
    # The shipped file holds the encoder only: the final norm and classifier are never used.
    missing = [k for k in result.missing_keys if not k.startswith(("norm.", "head."))]
    if missing or result.unexpected_keys:
        raise UserError(f"the built-in weights of '{name}' do not fit this model "
                        f"({len(missing)} missing, {len(result.unexpected_keys)} unexpected keys)")
    config = entry.get("pretrain_config", {})
    return {
        "source": "builtin",
        "id": f"mtbench/{name}",
        "file": f"mtpeft_bench/weights/{entry['file']}",
        "sha256": digest,
        "stored_dtype": entry.get("stored_dtype"),
        "card": "mtpeft_bench/weights/README.md",
        "pretraining": {"objective": entry.get("objective"), "corpus": entry.get("corpus"),
                        "seed": config.get("seed"), "steps": config.get("steps"), "command": entry.get("command")},
    }
