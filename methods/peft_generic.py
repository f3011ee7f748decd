"""Any tested peft tuner, chosen by name, shared by all tasks.

``--set method.peft_type=LOHA --set method.r=8`` injects peft's LoHa (or any type of
:data:`TESTED_TYPES`) into the stock timm Swin with peft's own configuration class, so each tuner
is the library's implementation (see each tuner's paper in the peft documentation:
https://huggingface.co/docs/peft). Every option of the chosen type's peft config is a
``method.<name>`` option; an option left unset takes the Swin default of :data:`SWIN_DEFAULTS`
where peft's (language-model sized) default cannot fit Swin's widths, else peft's default.

All tasks share the adapted encoder. As for ``lora``, the backbone's extras (patch embedding,
LayerNorms, relative-position tables, PatchMerging reductions) train by default, as in the
MTLoRA/DiTASK protocol (``train_extras``), except where the tuner wraps them itself (LN-tuning
trains a copy of each norm and keeps the original frozen).

Refused with one line: prompt-based tuners (they need a language model's token sequence), POLY
(routes each sample by a task id the encoder is never given), X-LoRA (a mixture over trained LoRA
adapters of a transformers model), trainable tokens (token embeddings), SHADOW (a shadow language
model), FRoD (its joint decomposition across layers fails on Swin's stage-wise widths). Any other
type not in :data:`TESTED_TYPES` is refused as untested.

AdaLoRA's rank budget schedule runs after every optimizer step through the encoder's
``after_step`` hook, with ``total_step`` set from the run's own total (methods/_adalora.py); the
result records the rank every adapted module ends with.
"""

from __future__ import annotations

import dataclasses
import difflib
from typing import Any

from mtpeft_bench.methods._adalora import AdaLoraSchedule, provisional_total_step
from mtpeft_bench.methods._peft_util import (
    BLOCK_LINEARS, FC2, LAYER_NORMS, QKV_AND_FC2, finish_peft_injection, inject_peft,
)
from mtpeft_bench.methods.base import Method, MethodConfig, freeze
from mtpeft_bench.model.encoder import MultiTaskSwinEncoder
from mtpeft_bench.model.params import extra_parameters
from mtpeft_bench.registry import register_method


#: The peft types that run on a timm Swin and pass the method contract (tests/test_methods_peft.py
#: builds each on a micro Swin and on Swin-T and trains it). Keep in step with the description of
#: the registered method below (a test checks both lists agree).
TESTED_TYPES = (
    "ADALORA", "BEFT", "BOFT", "C3A", "DEFT", "DELORA", "FOURIERFT", "GLORA", "GRALORA", "HIRA", "HRA", "IA3", "LILY",
    "LN_TUNING", "LOHA", "LOKR", "LORA", "MISS", "OFT", "OSF", "PEANUT", "PSOFT", "PVERA", "RANDLORA", "ROAD",
    "SHIRA", "SUPERTUNING", "TINYLORA", "UNILORA", "VBLORA", "VERA", "WAVEFT",
)

#: Defaults that differ from peft's, per type. ``target_modules`` is the 48 block linears unless
#: given here; the other entries exist because peft's default does not divide Swin's widths
#: (96·2^k channels; peft's defaults are sized for language models).
SWIN_DEFAULTS: dict[str, dict[str, Any]] = {
    # (IA)^3 scales keys/values and the MLP's intermediate activation (Liu et al., NeurIPS 2022);
    # Swin fuses q, k, v, so qkv is scaled as a whole; fc2's input is the MLP activation.
    "IA3": {"target_modules": QKV_AND_FC2, "feedforward_modules": FC2},
    "LN_TUNING": {"target_modules": LAYER_NORMS},
    "C3A": {"block_size": 32},  # peft 256; must divide the layer widths
    "ROAD": {"group_size": 32},  # peft 64; must divide the output widths
    "VBLORA": {"vector_length": 32},  # peft 256; must divide the layer widths
}

#: Why a type is refused (types neither here nor in TESTED_TYPES are refused as untested).
REFUSED: dict[str, str] = {
    **{t: "is prompt-based and needs a language model's token sequence" for t in (
        "PROMPT_TUNING", "MULTITASK_PROMPT_TUNING", "P_TUNING", "PREFIX_TUNING", "ADAPTION_PROMPT", "CPT",
        "CARTRIDGE")},
    "POLY": "routes every sample by a task id, which the encoder is never given",
    "XLORA": "mixes trained LoRA adapters of a transformers language model",
    "TRAINABLE_TOKENS": "tunes token embeddings, which a Swin does not have",
    "SHADOW": "trains a shadow language model beside the base model",
    "FROD": "fails on Swin: its joint decomposition across layers needs equal widths",
}

#: Options the run sets itself, per type (a value given with --set is refused).
RUN_SET: dict[str, dict[str, str]] = {
    "ADALORA": {"total_step": "is set from the run's total number of optimizer steps (epochs × steps per epoch)"},
}

# Options of peft configs that only make sense for (quantised, distributed) language models.
_NOT_OPTIONS = {
    "alora_invocation_tokens", "arrow_config", "corda_config", "ensure_weight_tying", "eva_config", "fan_in_fan_out",
    "kasa_config", "layer_replication", "layers_pattern", "layers_to_transform", "loftq_config", "lora_ga_config",
    "megatron_config", "megatron_core", "modules_to_save", "monteclora_config", "qalora_group_size", "runtime_config",
    "target_parameters", "trainable_token_indices", "use_bdlora", "use_qalora", "velora_config",
}


def _peft_fields(peft_type: str) -> dict[str, Any]:
    """The options of one peft config class (without peft's bookkeeping fields)."""
    from peft.config import PeftConfig
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

    base = {f.name for f in dataclasses.fields(PeftConfig)}
    cls = PEFT_TYPE_TO_CONFIG_MAPPING[peft_type]
    return {f.name: f for f in dataclasses.fields(cls) if f.name not in base and f.name not in _NOT_OPTIONS}


def available_types() -> tuple[str, ...]:
    """The tested types the installed peft provides (older peft versions lack some)."""
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING, PEFT_TYPE_TO_TUNER_MAPPING

    return tuple(t for t in TESTED_TYPES if t in PEFT_TYPE_TO_CONFIG_MAPPING and t in PEFT_TYPE_TO_TUNER_MAPPING)


def _option_names() -> list[str]:
    names: set[str] = set()
    for peft_type in available_types():
        names.update(_peft_fields(peft_type))
    return sorted(names)


def _normalise_type(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"peft_type must be a peft tuner name such as LORA or LOHA, got {value!r}")
    name = value.strip().upper().replace("-", "_")
    if name in REFUSED:
        raise ValueError(f"peft type {name} {REFUSED[name]}")
    if name not in TESTED_TYPES:
        from peft.utils import PeftType

        known = {t.value for t in PeftType}
        if name in known:
            raise ValueError(f"peft type {name} is not among the tested types ({', '.join(TESTED_TYPES)})")
        close = difflib.get_close_matches(name, TESTED_TYPES, n=1)
        hint = f"did you mean {close[0]}? Tested" if close else "tested"
        raise ValueError(f"unknown peft type '{value}'; {hint} types: {', '.join(TESTED_TYPES)}")
    if name not in available_types():
        import peft

        raise ValueError(f"peft type {name} is not in the installed peft {peft.__version__}; upgrade peft (tested: 0.21)")
    return name


def _post_init(self) -> None:
    object.__setattr__(self, "peft_type", _normalise_type(self.peft_type))
    if not isinstance(self.train_extras, bool):
        raise ValueError(f"train_extras must be true or false, got {self.train_extras!r}")
    allowed = _peft_fields(self.peft_type)
    for name, why in RUN_SET.get(self.peft_type, {}).items():
        if getattr(self, name) is not None:
            raise ValueError(f"{name} of peft type {self.peft_type} {why}; leave it unset")
    foreign = [name for name in _option_names() if getattr(self, name) is not None and name not in allowed]
    if foreign:
        raise ValueError(f"{', '.join(foreign)} {'is not an option' if len(foreign) == 1 else 'are not options'} of "
                         f"peft type {self.peft_type}; its options: {', '.join(sorted(allowed))}")
    self.peft_config()  # let peft validate the values now, not at build time


def _peft_config(self) -> Any:
    """The peft config object of the chosen type: Swin defaults, then the options that are set."""
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

    kwargs = self.peft_options()
    try:
        return PEFT_TYPE_TO_CONFIG_MAPPING[self.peft_type](**kwargs)
    except (ValueError, TypeError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"peft rejects this {self.peft_type} configuration: {reason}") from None


def _peft_options(self) -> dict[str, Any]:
    """The keyword arguments given to peft's config class (Swin defaults, then what is set)."""
    allowed = _peft_fields(self.peft_type)
    kwargs: dict[str, Any] = {}
    if "target_modules" in allowed:
        kwargs["target_modules"] = BLOCK_LINEARS
    kwargs.update(SWIN_DEFAULTS.get(self.peft_type, {}))
    kwargs.update({name: getattr(self, name) for name in allowed if getattr(self, name) is not None})
    if self.peft_type == "ADALORA":  # replaced by the run's own total before the first step
        kwargs["total_step"] = provisional_total_step(kwargs)
    return kwargs


def _make_config_class() -> type:
    # peft_type first: it selects which of the other options apply.
    fields: list[tuple[str, Any, Any]] = [
        ("peft_type", str, dataclasses.field(default="LORA")),
        ("train_extras", bool, dataclasses.field(default=True)),
    ]
    fields += [(name, Any, dataclasses.field(default=None)) for name in _option_names()]
    namespace = {"__post_init__": _post_init, "peft_config": _peft_config, "peft_options": _peft_options,
                 "__doc__": PEFT_CONFIG_DOC, "__module__": __name__}
    return dataclasses.make_dataclass("PeftMethodConfig", fields, bases=(MethodConfig,), frozen=True,
                                      namespace=namespace)


PEFT_CONFIG_DOC = """Options of ``peft``: the tuner type, the extras switch and every option of peft's configs.

    Attributes:
        peft_type: one of :data:`TESTED_TYPES` (case-insensitive), e.g. ``LORA``, ``LOHA``, ``VERA``.
        train_extras: whether the patch embedding, LayerNorms, relative-position tables and
            PatchMerging reductions train (the MTLoRA/DiTASK protocol; default ``true``).
        (others): any option of the chosen type's peft config class (``r``, ``alpha``,
            ``lora_alpha``, ``n_frequency``, ``target_modules`` ...), with peft's meaning; unset
            (``None``) means the Swin default of :data:`SWIN_DEFAULTS`, else peft's default. An
            option of another type is rejected.
    """

PeftMethodConfig = _make_config_class()


class PeftEncoder(MultiTaskSwinEncoder):
    """The shared multi-task encoder with a peft tuner's layers inside the backbone."""

    def __init__(self, backbone, tasks, cfg, tuner):
        super().__init__(backbone, tasks)
        # The tuner object wraps the backbone (its `model`); it is kept outside the module tree so
        # the backbone's parameters are not registered twice. Its layers live in the backbone.
        object.__setattr__(self, "_tuner", tuner)
        object.__setattr__(self, "peft_tuner", tuner)  # mtbench export saves its adapter (peft's own layout)
        self._info = {"peft_type": cfg.peft_type, "train_extras": cfg.train_extras,
                      "peft_options": _jsonable(cfg.peft_options())}

    def method_info(self):
        import peft

        return {**super().method_info(), **self._info, "peft_version": peft.__version__}


class AdaLoraEncoder(PeftEncoder):
    """:class:`PeftEncoder` with AdaLoRA's rank budget schedule and orthogonal regulariser."""

    def __init__(self, backbone, tasks, cfg, tuner):
        super().__init__(backbone, tasks, cfg, tuner)
        object.__setattr__(self, "_schedule", AdaLoraSchedule(tuner))

    def after_step(self, global_step: int, total_steps: int) -> None:
        self._schedule.after_step(global_step, total_steps)

    def extra_loss(self):
        return self._schedule.orthogonal_regulariser()

    def method_info(self):
        info = super().method_info()
        info["peft_options"] = {**info["peft_options"], "total_step": int(self._schedule.config.total_step)}
        return {**info, **self._schedule.info()}


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return repr(value)


@register_method("peft", description="any tested peft tuner by name, shared by all tasks (method.peft_type=...): "
                                      "ADALORA BEFT BOFT C3A DEFT DELORA FOURIERFT GLORA GRALORA HIRA HRA IA3 LILY LN_TUNING "
                                      "LOHA LOKR LORA MISS OFT OSF PEANUT PSOFT PVERA RANDLORA ROAD SHIRA SUPERTUNING "
                                      "TINYLORA UNILORA VBLORA VERA WAVEFT")
class PeftGeneric(Method):
    """Any tested peft tuner, chosen by name, shared by all tasks."""

    paper = "https://huggingface.co/docs/peft"
    Config = PeftMethodConfig

    def build(self, backbone, tasks, cfg):
        freeze(backbone)
        extras = extra_parameters(backbone)
        tuner = inject_peft(backbone, cfg.peft_config())
        finish_peft_injection(backbone, extras, cfg.train_extras)
        encoder_cls = AdaLoraEncoder if cfg.peft_type == "ADALORA" else PeftEncoder
        return encoder_cls(backbone, tasks, cfg, tuner)
