"""The dataset interface: task specifications, metric specifications and the dataset plugin base.

A dataset plugin declares its tasks (:class:`TaskSpec`), the protocol's image size and splits, and
builds a ``torch.utils.data.Dataset`` whose items are dicts::

    {"image": float32[3, H, W] (ImageNet-normalised),
     "<task>": target tensor (format below),
     "meta": {"id": str, "size": (H0, W0)}}

Target formats by task kind (``ignore_index``, 255 by the reference protocol, marks pixels that
neither the loss nor the metrics see):

=============  ==================================================================
kind           target
=============  ==================================================================
segmentation   int64[H, W], class ids 0..C-1, ``ignore_index`` = void
depth          float32[1, H, W], metres, ``ignore_index`` = no measurement
normals        float32[3, H, W], unit vectors, ``ignore_index`` in all 3 channels = invalid
saliency       float32[1, H, W], {0, 1}
edge           float32[1, H, W], {0, 1}
=============  ==================================================================

Torch is imported lazily, so listing datasets never imports it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Mapping, Sequence


TASK_KINDS = ("segmentation", "depth", "normals", "saliency", "edge")
INTERPOLATIONS = ("nearest", "linear", "normals")


@dataclass(frozen=True)
class MetricSpec:
    """One number a task reports.

    Attributes:
        name: key in the result file (``metrics[task][name]``).
        higher_is_better: direction, used for Δm signs, sorting and plot arrows.
        primary: the one metric of the task that enters Δm (exactly one per task).
        unit: printed beside the value ("%", "m", "deg").
        description: how it is computed, in a few words.
    """

    name: str
    higher_is_better: bool
    primary: bool = False
    unit: str = ""
    description: str = ""

    @property
    def arrow(self) -> str:
        return "↑" if self.higher_is_better else "↓"


@dataclass(frozen=True, eq=False)
class TaskSpec:
    """A dense prediction task of a dataset.

    Attributes:
        name: task name, also the key of the sample dict and of the result's metrics.
        kind: one of ``TASK_KINDS``; fixes the target format, the meter and the post-processing.
        num_outputs: channels of the head's output (classes for segmentation, 1 or 3 otherwise).
        loss: name of the loss in ``mtpeft_bench.losses.LOSSES``.
        loss_weight: weight of this task's loss in the sum (docs/protocol.md 4.3).
        metrics: what the task reports; exactly one is ``primary``.
        ignore_index: target value that marks pixels to ignore.
        interpolation: how targets are resized: ``nearest`` (labels), ``linear``, or ``normals``
            (linear, then re-normalised to unit length; zero stays zero).
        description: one line for listings.
        options: meter/loss options specific to the task (e.g. an edge tolerance).
    """

    name: str
    kind: str
    num_outputs: int
    loss: str
    loss_weight: float
    metrics: tuple[MetricSpec, ...]
    ignore_index: int = 255
    interpolation: str = "nearest"
    description: str = ""
    options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in TASK_KINDS:
            raise ValueError(f"task {self.name!r}: kind must be one of {TASK_KINDS}, not {self.kind!r}")
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"task {self.name!r}: interpolation must be one of {INTERPOLATIONS}")
        if sum(m.primary for m in self.metrics) != 1:
            raise ValueError(f"task {self.name!r}: exactly one metric must be primary")

    @property
    def primary(self) -> MetricSpec:
        return next(m for m in self.metrics if m.primary)

    def metric(self, name: str) -> MetricSpec:
        for m in self.metrics:
            if m.name == name:
                return m
        raise KeyError(f"task {self.name!r} has no metric {name!r}")


@dataclass(frozen=True)
class DatasetConfig:
    """Dataset options set with ``--set data.<key>=<value>``; plugins subclass it."""


class DatasetPlugin:
    """Base of dataset plugins (register a subclass with ``@register_dataset("name")``).

    Class attributes to set:
        version: bumped whenever samples or metrics change in a way that breaks comparability.
        tasks: every task the dataset can provide, by name.
        default_tasks: the task set of the benchmark's headline numbers.
        image_size: (H, W) the protocol trains and evaluates at.
        splits: names accepted by :meth:`build`.
        eval_split: the split a run evaluates on (``val``; a plugin may make it depend on its
            options, as ``synth`` does with ``data.holdout``). Result records carry it.
        requires_root: whether the data must exist on disk (False for generated datasets).
        default_preset: the preset ``mtbench run`` uses when none is given.
        reference: name of the file in ``tasks/reference/`` with published numbers, if any.
        Config: a frozen dataclass of options (``--set data.key=value``).

    Set by the runner on an instance:
        progress: whether work done on first use (generating a dataset) may show a progress bar;
            a run sets it from its ``progress`` setting (``--no-progress``).
    """

    name: ClassVar[str]
    description: ClassVar[str] = ""
    version: ClassVar[int] = 1
    tasks: ClassVar[Mapping[str, TaskSpec]] = {}
    default_tasks: ClassVar[tuple[str, ...]] = ()
    image_size: ClassVar[tuple[int, int]] = (448, 448)
    splits: ClassVar[tuple[str, ...]] = ("train", "val")
    eval_split: str = "val"
    requires_root: ClassVar[bool] = True
    default_preset: ClassVar[str] = "paper"
    reference: ClassVar[str | None] = None
    Config: ClassVar[type] = DatasetConfig
    progress: bool = True

    def __init__(self, config: Any = None):
        self.config = config if config is not None else self.Config()

    def task_specs(self, names: Sequence[str] | None = None) -> list[TaskSpec]:
        """The specs of ``names`` (default: ``default_tasks``), in the given order."""
        from mtpeft_bench.errors import UserError
        from mtpeft_bench.registry import did_you_mean, with_hint

        names = list(names) if names else list(self.default_tasks)
        unknown = [n for n in names if n not in self.tasks]
        if unknown:
            hint = did_you_mean(unknown[0], self.tasks)
            raise UserError(
                f"dataset '{self.name}' has no task {', '.join(map(repr, unknown))}; "
                + with_hint(hint, f"its tasks are: {', '.join(self.tasks)}")
            )
        if len(set(names)) != len(names):
            raise UserError(f"task list {names} names a task twice")
        return [self.tasks[n] for n in names]

    def resolve_root(self, root: Path | None) -> Path | None:
        """Check that the data is where it should be; return the folder the loader reads.

        Raises:
            UserError: the folder is missing or not in the expected layout.
        """
        return root

    def check_root(self, root: Path | None) -> None:
        """Check the data folder cheaply, before any slow work of a run (no sample is read, nothing is
        generated): by default, :meth:`resolve_root` for a dataset read from disk.

        Raises:
            UserError: the folder cannot serve this dataset.
        """
        if self.requires_root:
            self.resolve_root(root)

    def build(self, split: str, tasks: Sequence[TaskSpec], image_size: tuple[int, int], root: Path | None,
              train: bool) -> Any:
        """Return a ``torch.utils.data.Dataset`` of sample dicts for ``split``.

        Args:
            split: one of ``splits``.
            tasks: the task specs to load targets for.
            image_size: (H, W) that images and targets are resized to.
            root: the folder returned by :meth:`resolve_root`.
            train: apply the training augmentations.
        """
        raise NotImplementedError


def config_from_mapping(config_cls: type, values: Mapping[str, Any], what: str) -> Any:
    """Build a frozen config dataclass from ``values``, with one-line errors for unknown keys.

    Raises:
        UserError: a key is not a field of ``config_cls`` or a value is invalid.
    """
    from mtpeft_bench.errors import UserError
    from mtpeft_bench.registry import did_you_mean, with_hint

    fields = {f.name: f for f in dataclasses.fields(config_cls)}
    unknown = [k for k in values if k not in fields]
    if unknown:
        known = ", ".join(fields) or "(none)"
        hint = did_you_mean(unknown[0], fields)
        raise UserError(f"unknown {what} option {', '.join(map(repr, unknown))}; "
                        + with_hint(hint, f"known options: {known}"))
    kwargs = {}
    for key, value in values.items():
        default = getattr(config_cls, key, None) if key in config_cls.__dict__ else None
        sequence = _sequence_kind(fields[key], default)
        if sequence is not None:
            value = _as_sequence(value, sequence)
        kwargs[key] = value
    try:
        return config_cls(**kwargs)
    except (ValueError, TypeError) as exc:
        raise UserError(f"invalid {what} option: {exc}") from None


def _sequence_kind(config_field: dataclasses.Field, default: Any) -> type | None:
    """``tuple`` or ``list`` when a plugin option holds a sequence (by its annotation, else its default)."""
    annotation = str(config_field.type).replace("typing.", "").strip()
    for prefix, kind in (("tuple", tuple), ("Tuple", tuple), ("Sequence", tuple), ("list", list), ("List", list)):
        if annotation.startswith(prefix):
            return kind
    return type(default) if isinstance(default, (tuple, list)) else None


def _as_sequence(value: Any, kind: type) -> Any:
    """A sequence option as given on the command line: ``2,3`` (as ``image_size`` takes it) or a YAML
    list ``[2, 3]`` becomes ``kind((2, 3))``, a single value a one-item sequence; anything else is left
    for the plugin's own check."""
    from mtpeft_bench.config import parse_value

    if isinstance(value, str):
        value = [parse_value(item.strip()) for item in value.split(",") if item.strip()]
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        value = [value]
    return kind(value) if isinstance(value, (list, tuple)) else value
