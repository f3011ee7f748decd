"""Run configuration: defaults → preset → run file → command-line options → ``--set key=value``.

``RunConfig`` holds everything a run depends on. Method and dataset hyper-parameters live in their
plugins' ``Config`` dataclasses and are set with ``--set method.<key>=<value>`` and
``--set data.<key>=<value>``; task loss weights with ``--set loss_weights.<task>=<value>``.

Presets:

- ``smoke``: a micro Swin at 64 px with mtbench's built-in pretrained weights (``--weights
  builtin``, :mod:`mtpeft_bench.model.builtin_weights`), a few hundred steps: a check that everything
  runs end to end (under 2 minutes on 2 CPU cores), not a result.
- ``cpu``: a run worth reading on a CPU: the mini Swin (``swin_mini``) with its built-in
  pretrained weights at the dataset's native size on ``synth``; works offline.
- ``bench``: the recipe of the leaderboard protocol (``mtpeft_bench/protocols/synth.yaml``,
  docs/leaderboard.md): the ``cpu`` recipe cut to 6 epochs, no periodic evaluation.
- ``paper``: the published recipe (docs/protocol.md 4.4): Swin-T, 448 px, 300 epochs, batch 32,
  AdamW 5e-4 × batch/512, 20 warm-up epochs then cosine, weight decay 0.05, drop-path 0.2,
  gradient clipping 5, AMP.

Memory without changing the recipe: ``accum_steps=N`` splits each step's ``batch_size`` (still the
effective batch, which the learning-rate scaling uses) into N micro-batches whose gradients are
summed before the one optimizer step; ``grad_checkpoint=true`` recomputes each Swin block's
activations in the backward pass instead of keeping them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from mtpeft_bench.errors import UserError
from mtpeft_bench.registry import did_you_mean, unknown_name


@dataclass
class RunConfig:
    """Everything one run depends on (see the module docstring for how it is resolved)."""

    method: str = "full"
    dataset: str = "synth"
    tasks: tuple[str, ...] | None = None  # None: the dataset's default tasks
    preset: str = "paper"
    seed: int = 0
    # model
    backbone: str = "swin_tiny_patch4_window7_224"
    weights: str = "timm"
    image_size: tuple[int, int] | None = None  # None: the dataset's protocol size
    drop_path: float = 0.2
    # optimisation (docs/protocol.md 4.4)
    epochs: int = 300
    batch_size: int = 32  # per process, per optimisation step (with accum_steps: the effective batch)
    accum_steps: int = 1  # micro-batches of batch_size/accum_steps accumulated into each step (memory)
    grad_checkpoint: bool = False  # recompute each Swin block in the backward pass (memory)
    eval_batch_size: int | None = None  # None: batch_size
    base_lr: float = 5e-4
    warmup_lr: float = 5e-7
    min_lr: float = 5e-6
    lr_reference_batch: int = 512  # LRs are multiplied by global_batch / lr_reference_batch
    warmup_epochs: float = 20
    weight_decay: float = 0.05
    clip_grad: float | None = 5.0
    amp: bool = True  # CUDA only
    amp_dtype: str = "float16"
    # speed switches (train/speed.py, docs/configuration.md); each off by default, checked against the
    # eager fp32 path in tests; the paper preset turns on the ones that help on a GPU
    fused_attention: bool = False  # torch's scaled_dot_product_attention inside timm's window attention
    channels_last: bool = False  # the model's convolutions and its input images in NHWC memory order
    compile: bool = False  # torch.compile of the model (in place: state dicts keep their names)
    compile_mode: str = "default"  # default | reduce-overhead (CUDA graphs) | max-autotune | max-autotune-no-cudagraphs
    loss_weights: dict[str, float] = field(default_factory=dict)  # overrides of the tasks' weights
    # evaluation and logging
    eval_every: int = 5  # epochs; 0: only at the end
    limit_train_batches: int | None = None  # cap on steps per epoch (debugging)
    limit_eval_batches: int | None = None
    # inference cost after training (measure.profile_inference): timed forwards at batch 1 (and at
    # batch_size for a merged encoder) after untimed warm-up ones; 0 repeats: FLOPs only
    measure_repeats: int = 20
    measure_warmup: int = 3
    # system
    device: str = "auto"
    num_workers: int = 4
    deterministic: bool = False
    progress: bool = True
    logger: str = "none"  # none | tensorboard | wandb | tensorboard,wandb (metrics.jsonl is always written)
    # several processes, checkpoints (distributed.py, checkpoint.py)
    sync_bn: bool = False  # BatchNorm over the global batch under torchrun (reference: per process)
    checkpoint_every: int = 1  # epochs between checkpoints; 0: only when stopped by Ctrl-C/SIGTERM
    runs_dir: str | None = None  # run folders (checkpoints, state); None: runs/ beside the results folder
    # data and output
    data_root: str | None = None
    out: str = "results"
    tag: str = ""
    # where the learning rate came from when a leaderboard protocol chose it (running/lr_selection.py):
    # protocol, row, rule, multiplier, grid; stored in the record, not part of the identity
    lr_selection: dict[str, Any] | None = None
    # plugin options
    method_options: dict[str, Any] = field(default_factory=dict)
    data_options: dict[str, Any] = field(default_factory=dict)

    def lr_scale(self, world_size: int = 1) -> float:
        return self.batch_size * world_size / self.lr_reference_batch

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))


PRESETS: dict[str, dict[str, Any]] = {
    "smoke": dict(
        backbone="swin_micro", weights="builtin", image_size=(64, 64), drop_path=0.0,
        epochs=3, batch_size=16, base_lr=1e-3 * 512 / 16, warmup_lr=1e-6 * 512 / 16, min_lr=1e-5 * 512 / 16,
        warmup_epochs=0.5, eval_every=0, num_workers=0, amp=False, measure_repeats=10, measure_warmup=2,
    ),
    "cpu": dict(
        backbone="swin_mini", weights="builtin", image_size=None, drop_path=0.1,
        epochs=10, batch_size=16, base_lr=2e-4 * 512 / 16, warmup_lr=2e-7 * 512 / 16, min_lr=2e-6 * 512 / 16,
        warmup_epochs=1, eval_every=5, num_workers=2, amp=False,
    ),
    # the leaderboard protocol's recipe (protocols/synth.yaml, docs/leaderboard.md): the cpu recipe
    # cut to 6 epochs without periodic evaluation, so that a run fits the protocol's time budget on
    # 2 CPU cores; the noise study that chose it is in docs/leaderboard.md
    "bench": dict(
        backbone="swin_mini", weights="builtin", image_size=None, drop_path=0.1,
        epochs=6, batch_size=16, base_lr=2e-4 * 512 / 16, warmup_lr=2e-7 * 512 / 16, min_lr=2e-6 * 512 / 16,
        warmup_epochs=1, eval_every=0, num_workers=2, amp=False,
    ),
    # the published recipe; bf16 autocast and the fused attention kernel are speed switches (the papers
    # trained in fp16 AMP with eager attention; --set amp_dtype=float16 fused_attention=false restores it)
    "paper": dict(amp_dtype="bfloat16", fused_attention=True),
}

PRESET_HELP = {
    "smoke": "micro Swin, 64 px, built-in pretrained weights, ~200 steps: checks the pipeline (< 2 min on 2 CPU cores)",
    "cpu": "mini Swin at the dataset's size, built-in pretrained weights, 10 epochs: a run worth reading on a CPU",
    "bench": "the leaderboard protocol's recipe (mtbench sweep --protocol synth): mini Swin, native size, 6 epochs",
    "paper": "the published recipe: Swin-T, 448 px, 300 epochs, batch 32, AdamW 5e-4×batch/512",
}

# Settings that are not part of a run's identity: they do not change what training computes (where
# it reads and writes, how it reports, how it measures afterwards). They are left out of the
# configuration hash, may change between the sessions of one resumed run, and are not named when
# a resumed run's configuration is compared with the new one (running/resume.py). Changing this set
# changes every configuration hash: old runs would no longer resume or be skipped as completed.
# (A setting added to RunConfig and to this set at once leaves every existing hash as it was.)
NOT_IDENTITY = frozenset({"out", "tag", "data_root", "device", "num_workers", "progress", "checkpoint_every",
                          "runs_dir", "measure_repeats", "measure_warmup", "lr_selection", "logger",
                          "grad_checkpoint"})
# (grad_checkpoint is here because recomputing a block, with the RNG state of its first pass, gives the
# same gradients: a run that ran out of memory may resume with it switched on.)

# Settings added after runs were first recorded, with the value that reproduces what came before. At
# that value a setting is left out of the configuration hash, so adding a setting to RunConfig does
# not orphan every completed run (a sweep would no longer skip them, nor resume them); any other
# value is part of the run's identity as usual: ``accum_steps`` gives each BatchNorm in the
# decoders a micro-batch's statistics instead of the batch's, and sums the loss in another order.
IDENTITY_SINCE: dict[str, Any] = {"accum_steps": 1, "fused_attention": False, "channels_last": False,
                                  "compile": False, "compile_mode": "default"}

# torch.compile's modes (``compile_mode``); reduce-overhead replays CUDA graphs (fixed shapes).
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")

# Which logging libraries ``logger`` may name (train/logging_sinks.py).
LOGGERS = ("tensorboard", "wandb")


def _field_types() -> dict[str, Any]:
    return {f.name: f for f in dataclasses.fields(RunConfig)}


def parse_value(text: str) -> Any:
    """Parse a ``--set`` value: YAML scalars and lists, and floats like ``1e-3`` that YAML 1.1 misses."""
    import yaml

    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def parse_sets(items: Sequence[str]) -> dict[str, Any]:
    """``["a=1", "method.r=8"]`` → ``{"a": 1, "method.r": 8}``.

    Raises:
        UserError: an item is not ``key=value``.
    """
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UserError(f"--set expects key=value (e.g. --set epochs=10 or --set method.r=8), got '{item}'")
        out[key] = parse_value(value.strip())
    return out


def coerce_value(name: str, value: Any, annotation: str) -> Any:
    """Convert ``value`` to the type of field ``name`` (annotated ``annotation``)."""
    if name == "image_size":
        if value is None:
            return None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return (int(value), int(value))
        if isinstance(value, str):
            value = [v for v in value.replace("x", ",").split(",") if v.strip()]
        if isinstance(value, (list, tuple)) and len(value) == 2:
            try:
                return (int(value[0]), int(value[1]))
            except (TypeError, ValueError):
                pass
        raise UserError(f"image_size must be N or H,W (e.g. 448 or 480,640), got {value!r}")
    if name == "tasks":
        if value is None:
            return None
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            value = [value]
        if not value:  # `--tasks ""` is a slip, not a request for the default task set
            raise UserError("--tasks names no task; give one or more (e.g. --tasks semseg,depth) "
                            "or leave it out for the dataset's default tasks")
        return tuple(str(v) for v in value)
    if name == "lr_selection":
        if value is None or isinstance(value, Mapping):
            return None if value is None else dict(value)
        raise UserError(f"lr_selection must be a mapping or null (a protocol sweep sets it), got {value!r}")
    if value is None:
        if "None" in annotation:
            return None
        raise UserError(f"{name} cannot be null")
    kinds = {"bool": "true or false", "float": "number", "int": "integer", "str": "string"}
    kind = next((k for k in kinds if k in annotation.replace("None", "")), None)
    try:
        if kind == "bool":
            if isinstance(value, bool):
                return value
            raise ValueError
        if kind == "float":
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if kind == "int":
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if kind == "str":
            return str(value)
    except (TypeError, ValueError):
        article = {"int": "an ", "bool": ""}.get(kind, "a ")
        raise UserError(f"{name} must be {article}{kinds[kind]}, got {value!r}") from None
    return value


def apply_overrides(cfg: RunConfig, overrides: Mapping[str, Any]) -> RunConfig:
    """Apply flat overrides (``epochs``, ``method.r``, ``data.seed``, ``loss_weights.depth``).

    Raises:
        UserError: an unknown key or a value of the wrong type.
    """
    fields = _field_types()
    for key, value in overrides.items():
        head, _, rest = key.partition(".")
        if head == "method" and rest:
            cfg.method_options[rest] = value
        elif head == "data" and rest:
            cfg.data_options[rest] = value
        elif head == "loss_weights" and rest:
            try:
                if isinstance(value, bool):
                    raise ValueError
                cfg.loss_weights[rest] = float(value)
            except (TypeError, ValueError):
                raise UserError(f"loss_weights.{rest} must be a number, got {value!r}") from None
        elif key in fields and key not in ("method_options", "data_options", "loss_weights"):
            setattr(cfg, key, coerce_value(key, value, str(fields[key].type)))
        else:
            names = [n for n in fields if n not in ("method_options", "data_options")]
            hint = did_you_mean(key, names)
            raise UserError(f"unknown setting '{key}'{'; ' + hint if hint else ''} (run settings: {', '.join(names)}; "
                            "plugin options: method.<key>, data.<key>, loss_weights.<task>)")
    return cfg


def resolve(preset: str | None, options: Mapping[str, Any], sets: Mapping[str, Any],
            default_preset: str = "paper", file: Mapping[str, Any] | None = None, file_name: str = "") -> RunConfig:
    """Build the run configuration: defaults → preset → a run file's settings → explicit options →
    ``--set`` overrides.

    Args:
        preset: preset name, or None for ``default_preset``.
        options: explicit command-line options (None values are ignored).
        sets: parsed ``--set`` overrides.
        file: a run file's settings (``--set`` keys; running/config_file.py), named ``file_name``
            in error messages.
    """
    name = preset or default_preset
    if name not in PRESETS:
        raise UserError(unknown_name("preset", name, PRESETS))
    cfg = RunConfig(preset=name)
    apply_overrides(cfg, PRESETS[name])
    if file:
        try:
            apply_overrides(cfg, file)
        except UserError as exc:
            raise UserError(f"{file_name}: {exc}") from None
    apply_overrides(cfg, {k: v for k, v in options.items() if v is not None})
    apply_overrides(cfg, sets)
    validate(cfg)
    return cfg


def validate(cfg: RunConfig) -> None:
    """Reject values no run can use.

    Raises:
        UserError: with the offending setting named.
    """
    positive = {"epochs": cfg.epochs, "batch_size": cfg.batch_size, "lr_reference_batch": cfg.lr_reference_batch}
    for name, value in positive.items():
        if value <= 0:
            raise UserError(f"{name} must be positive, got {value}")
    if cfg.accum_steps < 1:
        raise UserError(f"accum_steps must be at least 1, got {cfg.accum_steps}")
    if cfg.batch_size % cfg.accum_steps:
        raise UserError(f"batch_size ({cfg.batch_size}) must be a multiple of accum_steps ({cfg.accum_steps}): "
                        f"batch_size is the effective batch of a step, split into accum_steps equal micro-batches")
    loggers = logger_names(cfg.logger)
    unknown = [n for n in loggers if n not in LOGGERS]
    if unknown:
        hint = did_you_mean(unknown[0], LOGGERS)
        raise UserError(f"unknown logger '{unknown[0]}'{'; ' + hint if hint else ''} (loggers: none, "
                        f"{', '.join(LOGGERS)}, or a comma list)")
    if cfg.eval_batch_size is not None and cfg.eval_batch_size <= 0:
        raise UserError(f"eval_batch_size must be positive, got {cfg.eval_batch_size}")
    for name in ("base_lr", "warmup_lr", "min_lr", "weight_decay", "warmup_epochs", "drop_path"):
        if getattr(cfg, name) < 0:
            raise UserError(f"{name} must not be negative, got {getattr(cfg, name)}")
    if not 0 <= cfg.drop_path < 1:
        raise UserError(f"drop_path must be in [0, 1), got {cfg.drop_path}")
    if cfg.clip_grad is not None and cfg.clip_grad <= 0:
        raise UserError(f"clip_grad must be positive or null, got {cfg.clip_grad}")
    if cfg.amp_dtype not in ("float16", "bfloat16"):
        raise UserError(f"amp_dtype must be float16 or bfloat16, got {cfg.amp_dtype!r}")
    if cfg.compile_mode not in COMPILE_MODES:
        hint = did_you_mean(str(cfg.compile_mode), COMPILE_MODES)
        raise UserError(f"unknown compile_mode {cfg.compile_mode!r}{'; ' + hint if hint else ''} "
                        f"(modes: {', '.join(COMPILE_MODES)})")
    if cfg.eval_every < 0:
        raise UserError(f"eval_every must be >= 0, got {cfg.eval_every}")
    for name in ("measure_repeats", "measure_warmup"):
        if getattr(cfg, name) < 0:
            raise UserError(f"{name} must be >= 0, got {getattr(cfg, name)}")
    if cfg.num_workers < 0:
        raise UserError(f"num_workers must be >= 0, got {cfg.num_workers}")
    if cfg.checkpoint_every < 0:
        raise UserError(f"checkpoint_every must be >= 0 (0: no periodic checkpoints), got {cfg.checkpoint_every}")
    if cfg.image_size is not None and min(cfg.image_size) < 32:
        raise UserError(f"image_size must be at least 32 px per side, got {cfg.image_size}")
    for name in ("limit_train_batches", "limit_eval_batches"):
        value = getattr(cfg, name)
        if value is not None and value <= 0:
            raise UserError(f"{name} must be positive or null, got {value}")
    for task, weight in cfg.loss_weights.items():
        # a negative weight rewards the loss going up; a non-finite one makes every step NaN
        if not math.isfinite(weight) or weight < 0:
            raise UserError(f"loss_weights.{task} must be a finite number >= 0, got {weight}")


def logger_names(text: str) -> list[str]:
    """``"tensorboard,wandb"`` → ``["tensorboard", "wandb"]``; ``"none"`` or ``""`` → ``[]``."""
    names = [n.strip().lower() for n in str(text or "").split(",") if n.strip()]
    return [n for n in dict.fromkeys(names) if n != "none"]


def config_hash(cfg: RunConfig, extra: Mapping[str, Any] | None = None) -> str:
    """A short hash of everything that changes what a run computes (not where it writes)."""
    data = {k: v for k, v in cfg.to_dict().items()
            if k not in NOT_IDENTITY and not (k in IDENTITY_SINCE and v == IDENTITY_SINCE[k])}
    if extra:
        data["extra"] = extra
    blob = json.dumps(data, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]
