"""Protocol presets of the real benchmarks (docs/protocol.md 2 and 8) and the switches behind them.

Two presets, chosen with ``--set data.protocol=...``:

``mtlora`` (default; MTLoRA / DiTASK)
    Every sample, image and targets, is resized to the run's image size (448x448 by default,
    aspect ratio not kept) for training AND evaluation; metrics are computed at that size against
    the resized ground truth (docs/protocol.md 8 item 1).
``mtinet`` (MTI-Net / ASTMT)
    Training as ``mtlora``; evaluation feeds the resized image but keeps the ground truth at the
    image's original size, and each prediction is resized back to it before the meters see it
    (nearest for labels, bilinear for saliency, normals, edges and depth;
    :func:`mtpeft_bench.metrics.resize_prediction`). Images of different sizes cannot share a
    batch, so the validation set asks for batch size 1.

Training augmentations (both presets; docs/protocol.md 2): PASCAL: horizontal flip, then rotation
U[-20°, 20°] and scale U[0.75, 1.25]; NYUD: flip, then zoom in {1, 1.2, 1.5} with depth divided by
the zoom. Then FixedResize → AddIgnoreRegions → Normalize.

Each reference quirk the data side reproduces is a named field of :class:`ProtocolConfig`
(defaults = the reference behaviour), so it lands in the result's ``data_config`` and in the
recipe key that Δm baselines are matched by.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from mtpeft_bench.tasks.base import DatasetConfig, TaskSpec
from mtpeft_bench.tasks.transforms import (
    BORDER_FILLS,
    NEAREST_MODES,
    NORMALS_MODES,
    Compose,
    FixedResize,
    RandomHorizontalFlip,
    ScaleNRotate,
    Transform,
    build_transforms,
)


PROTOCOLS = ("mtlora", "mtinet")
AUGMENT_FAMILIES = ("pascal", "nyud")


@dataclass(frozen=True)
class ProtocolConfig(DatasetConfig):
    """Options shared by the real datasets (``--set data.<key>=<value>``).

    Attributes:
        protocol: ``mtlora`` (evaluate at the training size) or ``mtinet`` (evaluate at each
            image's original size); see the module docstring.
        augment: apply the reference's training augmentations (flip + rotate/zoom); ``false``
            trains on resized images only.
        border_fill: what the rotation/zoom-out border becomes: ``zero`` (the reference: 0, i.e.
            background for semseg/parts, non-salient, no edge; docs/protocol.md 8 item 5) or ``ignore``.
        nearest: label resizing: ``cv2`` (the reference's OpenCV ``INTER_NEAREST``) or ``centre``.
        normals_interpolation: ``cubic`` (the reference's FLAGVALS, then renormalised) or ``linear``.
        edge_thresholds: number of thresholds of the edge odsF (99 = 0.01 ... 0.99, as MTI-Net passes
            to SEISM); fewer makes the (slow) boundary matching faster at the cost of faithfulness.
    """

    protocol: str = "mtlora"
    augment: bool = True
    border_fill: str = "zero"
    nearest: str = "cv2"
    normals_interpolation: str = "cubic"
    edge_thresholds: int = 99

    def __post_init__(self) -> None:
        choices = {"protocol": PROTOCOLS, "border_fill": BORDER_FILLS, "nearest": NEAREST_MODES,
                   "normals_interpolation": NORMALS_MODES}
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise ValueError(f"{key} must be one of {', '.join(allowed)}, not {getattr(self, key)!r}")
        if not isinstance(self.augment, bool):
            raise ValueError(f"augment must be true or false, not {self.augment!r}")
        if isinstance(self.edge_thresholds, bool) or not isinstance(self.edge_thresholds, int) \
                or not 1 <= self.edge_thresholds <= 999:
            raise ValueError(f"edge_thresholds must be an integer in 1..999, not {self.edge_thresholds!r}")

    @property
    def eval_at_original_size(self) -> bool:
        return self.protocol == "mtinet"


def train_augmentations(family: str, config: ProtocolConfig) -> list[Transform]:
    """The reference's training augmentations for ``family`` (``pascal`` or ``nyud``), in order."""
    if family not in AUGMENT_FAMILIES:
        raise ValueError(f"augmentation family must be one of {AUGMENT_FAMILIES}, not {family!r}")
    if not config.augment:
        return []
    if family == "pascal":
        warp = ScaleNRotate(rotations=(-20.0, 20.0), scales=(0.75, 1.25), border=config.border_fill)
    else:
        warp = ScaleNRotate(rotations=[0.0], scales=[1.0, 1.2, 1.5], border=config.border_fill)
    return [RandomHorizontalFlip(0.5), warp]


def protocol_transforms(family: str, config: ProtocolConfig, image_size: tuple[int, int], train: bool) -> Compose:
    """The sample pipeline of a split under ``config``'s protocol (see the module docstring)."""
    keep_targets = not train and config.eval_at_original_size
    resize = FixedResize(image_size, nearest=config.nearest, normals=config.normals_interpolation,
                         targets=not keep_targets)
    augmentations = train_augmentations(family, config) if train else None
    return build_transforms(image_size, train, augmentations=augmentations, resize=resize)


def edge_task_with_approximation(max_dist: float, description: str = "object boundaries") -> TaskSpec:
    """The edge task of a real dataset: ``odsF`` (primary) plus ``F_tol``, labelled as an approximation."""
    import dataclasses

    from mtpeft_bench.tasks.base import MetricSpec
    from mtpeft_bench.tasks.specs import edge_task

    spec = edge_task("odsF", max_dist, description)
    approx = MetricSpec("F_tol", True, unit="%",
                        description=f"APPROXIMATION of odsF: max over thresholds of pooled F1, matches within "
                                    f"{max_dist} x diagonal without one-to-one matching or thinning")
    return dataclasses.replace(spec, metrics=(*spec.metrics, approx))


def edge_options(tasks: Sequence[TaskSpec], config: ProtocolConfig) -> list[TaskSpec]:
    """``tasks`` with the edge task's meter options taken from ``config`` (thresholds)."""
    import dataclasses

    out = []
    for spec in tasks:
        if spec.kind == "edge":
            spec = dataclasses.replace(spec, options={**spec.options, "thresholds": config.edge_thresholds})
        out.append(spec)
    return out
