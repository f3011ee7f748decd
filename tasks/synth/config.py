"""The options of the ``synth`` dataset and the version of its generator (part of every cache key)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

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
        holdout: the last ``holdout`` training images form the ``holdout`` split: a run trains on
            the other ``num_train - holdout`` and evaluates on these instead of ``val`` (learning-rate
            selection, running/lr_selection.py). 0: no holdout, evaluate on ``val``. Not part of
            the generated data (the cache folder and its manifest ignore it).
    """

    num_train: int = 1000
    num_val: int = 200
    height: int = 96
    width: int = 128
    seed: int = 0
    holdout: int = 0

    def __post_init__(self) -> None:
        limits = {"num_train": (1, 10_000_000), "num_val": (1, 10_000_000), "height": (16, 4096),
                  "width": (16, 4096), "seed": (0, 2**63 - 1)}
        for key, (lo, hi) in limits.items():
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"synth {key} must be an integer, got {value!r}")
            if not lo <= value <= hi:
                raise ValueError(f"synth {key} must be between {lo} and {hi}, got {value}")
        if isinstance(self.holdout, bool) or not isinstance(self.holdout, int):
            raise ValueError(f"synth holdout must be an integer, got {self.holdout!r}")
        if not 0 <= self.holdout < self.num_train:
            raise ValueError(f"synth holdout must be between 0 and num_train - 1 = {self.num_train - 1} (some "
                             f"training images must remain to train on), got {self.holdout}")

    def counts(self) -> dict[str, int]:
        """Images generated per split (the holdout split is carved out of ``train``, not generated)."""
        return {"train": self.num_train, "val": self.num_val}

    def generation(self) -> dict[str, int]:
        """The options that decide the generated images (all but ``holdout``): the manifest stores these."""
        return {k: v for k, v in asdict(self).items() if k != "holdout"}

    def key(self) -> str:
        """Folder name of this configuration's cache: changes with the generator version and every option."""
        return f"g{GENERATOR_VERSION}-{self.num_train}+{self.num_val}-{self.height}x{self.width}-seed{self.seed}"
