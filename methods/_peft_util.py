"""Helpers shared by the peft-based method plugins (``lora``, ``peft``) and the other baselines.

Not a plugin (the leading underscore keeps the registry scan away): the regexes of the Swin
layers the baselines adapt and the injection of a peft tuner into the stock timm Swin (which
backbone "extras" train is :mod:`mtpeft_bench.model.params`).
"""

from __future__ import annotations

import warnings
from typing import Any, Iterable, Sequence

from torch import nn

from mtpeft_bench.errors import UserError


#: The 48 block linears of Swin-T (qkv, proj, fc1, fc2 of every block). A bare ``proj`` would also
#: catch the patch-embedding conv ``patch_embed.proj``, hence the anchored regex.
BLOCK_LINEARS = r".*\.(attn\.(qkv|proj)|mlp\.(fc1|fc2))$"
#: qkv and fc2 of every block (IA3: keys/values and the MLP's intermediate activation).
QKV_AND_FC2 = r".*\.(attn\.qkv|mlp\.fc2)$"
#: fc2 of every block (IA3's "feed-forward" layers, whose input is scaled).
FC2 = r".*\.mlp\.fc2$"
#: Every LayerNorm of the backbone: the block norms, the PatchMerging norms and the patch
#: embedding's norm (timm's ``Mlp.norm`` is an Identity and is not matched).
LAYER_NORMS = r".*\.(norm1|norm2|downsample\.norm|patch_embed\.norm)$"


def set_trainable(params: Iterable[nn.Parameter], trainable: bool = True) -> None:
    for param in params:
        param.requires_grad_(trainable)


def peft_base_parameter_ids(module: nn.Module) -> set[int]:
    """Ids of the parameters of the layers peft wrapped (their base layers stay frozen)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    ids: set[int] = set()
    for layer in module.modules():
        if isinstance(layer, BaseTunerLayer):
            base = layer.get_base_layer()
            if base is not layer:
                ids.update(id(p) for p in base.parameters())
    return ids


def inject_peft(backbone: nn.Module, peft_config: Any, adapter_name: str = "default") -> Any:
    """Inject a peft tuner into ``backbone`` in place and return the tuner object.

    Uses the tuner class of ``peft_config.peft_type`` directly rather than
    ``peft.inject_adapter_in_model``: peft 0.21 refuses the latter for tuners that keep shared
    state on the tuner (VeRA, VB-LoRA, ...), and the tuner class handles every type the same way.
    The wrapped base layers keep their original ``Parameter`` objects, so the parameter report
    still tells the method's additions from the backbone by identity.

    Raises:
        UserError: peft cannot apply this configuration to the backbone (one line, peft's reason).
    """
    from peft.mapping import PEFT_TYPE_TO_TUNER_MAPPING

    tuner_cls = PEFT_TYPE_TO_TUNER_MAPPING[peft_config.peft_type]
    try:
        with warnings.catch_warnings():
            # peft warns that it does not know the model type (a timm Swin is no transformers model).
            warnings.simplefilter("ignore", UserWarning)
            return tuner_cls(backbone, peft_config, adapter_name)
    except (ValueError, TypeError, KeyError, RuntimeError, NotImplementedError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        name = getattr(peft_config.peft_type, "value", peft_config.peft_type)
        raise UserError(f"peft could not apply {name} to the Swin backbone: {reason}") from None


def finish_peft_injection(backbone: nn.Module, extras: Sequence[nn.Parameter], train_extras: bool) -> None:
    """After a peft injection: let the extras train (or not) and keep every wrapped base layer frozen.

    peft freezes everything but its adapters; the protocol's extras are switched back on here,
    except where peft wrapped the layer itself (LN-tuning's norms: peft trains a copy of them).
    """
    frozen = peft_base_parameter_ids(backbone)
    set_trainable((p for p in extras if id(p) not in frozen), train_extras)
    set_trainable((p for p in backbone.parameters() if id(p) in frozen), False)
