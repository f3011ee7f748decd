"""``synth`` with ``data.holdout``: the last h training images become the ``holdout`` split a run is
evaluated on; they are never trained on, ``val`` is never read, the generated data is unchanged."""

from __future__ import annotations

import json

import pytest

from mtpeft_bench.errors import UserError
from mtpeft_bench.registry import get_dataset
from mtpeft_bench.tasks.base import config_from_mapping
from mtpeft_bench.tasks.synth.cache import MANIFEST

SMALL = dict(num_train=10, num_val=3, height=32, width=32)


def synth(**options):
    cls = get_dataset("synth")
    return cls(config_from_mapping(cls.Config, {**SMALL, **options}, "synth dataset"))


def test_holdout_splits_are_disjoint_and_sized_and_val_is_untouched(tmp_path):
    plain, held = synth(), synth(holdout=4)
    assert plain.eval_split == "val" and held.eval_split == "holdout"
    # the same generated images: one cache folder, whose manifest does not mention the holdout
    assert plain.cache_dir() == held.cache_dir()
    specs = held.task_specs(["semseg"])
    root = held.resolve_root(tmp_path / "data")
    ids = {split: list(held.build(split, specs, (32, 32), root, train=split == "train").ids)
           for split in ("train", "holdout", "val")}
    all_train = list(plain.build("train", specs, (32, 32), root, train=True).ids)
    assert len(all_train) == 10 and len(ids["train"]) == 6 and len(ids["holdout"]) == 4 and len(ids["val"]) == 3
    assert ids["holdout"] == all_train[-4:]  # the last h training images
    assert not set(ids["train"]) & set(ids["holdout"])
    assert not set(ids["val"]) & (set(ids["train"]) | set(ids["holdout"]))
    assert "holdout" not in json.loads((root / MANIFEST).read_text())["config"]
    plain.check_root(root)  # the folder made for the held-out run serves the plain one too (no "other settings")


def test_holdout_must_leave_training_images():
    with pytest.raises(UserError, match="holdout must be between 0 and num_train - 1 = 9"):
        synth(holdout=10)
    with pytest.raises(UserError, match="holdout"):
        synth(holdout=-1)


def test_no_holdout_split_without_the_option(tmp_path):
    plain = synth()
    with pytest.raises(UserError, match="data.holdout"):
        plain.build("holdout", plain.task_specs(["semseg"]), (32, 32), tmp_path, train=False)


def test_a_run_with_holdout_evaluates_on_it_and_says_so(tmp_path, monkeypatch, one_thread):
    """The loaders of a run: trained on N − h images, evaluated on the h held out, val never built;
    the record carries eval_split."""
    from mtpeft_bench import run
    from mtpeft_bench.tasks.synth.dataset import SynthDataset

    built = []
    original = SynthDataset.build

    def spy(self, split, *args, **kwargs):
        dataset = original(self, split, *args, **kwargs)
        built.append((split, len(dataset)))
        return dataset

    monkeypatch.setattr(SynthDataset, "build", spy)
    common = dict(method="decoder_only", preset="smoke", tasks="semseg", epochs=1, batch_size=4, progress=False,
                  measure_repeats=0, **{"data.num_train": 12, "data.num_val": 4})
    result = run(out=str(tmp_path / "results"), **common, **{"data.holdout": 4})
    assert built == [("train", 8), ("holdout", 4)]
    assert result["eval_split"] == "holdout" and result["data_config"]["holdout"] == 4
    built.clear()
    result = run(out=str(tmp_path / "plain"), **common)
    assert built == [("train", 12), ("val", 4)] and result["eval_split"] == "val"
