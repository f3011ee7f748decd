"""The options of the ``synth`` dataset and the version of its generator (part of every cache key)."""

from __future__ import annotations

from dataclasses import dataclass

from mtpeft_bench.tasks.base import DatasetConfig


GENERATOR_VERSION = 1


@dataclass(frozen=True)
class SynthConfig(DatasetConfig):
    """Options of the ``synth`` dataset (``--set data.<key>=<value>``).

    Attributes:
        num_train: number of training images.
        num_val: number of validation images.
        height: image height in pixels (also the native ``image_size``).
        width: image width in pixels.
        seed: seed of the scene generator; different seeds give different datasets.
    """

    num_train: int = 1000
    num_val: int = 200
    height: int = 96
    width: int = 128
    seed: int = 0

    def __post_init__(self) -> None:
        limits = {"num_train": (1, 10_000_000), "num_val": (1, 10_000_000), "height": (16, 4096),
                  "width": (16, 4096), "seed": (0, 2**63 - 1)}
        for key, (lo, hi) in limits.items():
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"synth {key} must be an integer, got {value!r}")
            if not lo <= value <= hi:
                raise ValueError(f"synth {key} must be between {lo} and {hi}, got {value}")

    def counts(self) -> dict[str, int]:
        return {"train": self.num_train, "val": self.num_val}

    def key(self) -> str:
        """Folder name of this configuration's cache: changes with the generator version and every option."""
        return f"g{GENERATOR_VERSION}-{self.num_train}+{self.num_val}-{self.height}x{self.width}-seed{self.seed}"
