"""The dataset contract, checked for every registered dataset plugin: its declarations, and one
train and one val item of real data (generated, or a miniature copy of the on-disk layout)."""

from __future__ import annotations

import pytest
import torch

from helpers.datasets import MINIATURE_WRITERS
from mtpeft_bench.config import PRESETS
from mtpeft_bench.errors import UserError
from mtpeft_bench.losses import LOSSES
from mtpeft_bench.metrics import build_meter
from mtpeft_bench.registry import dataset_registry, get_dataset
from mtpeft_bench.tasks.base import TASK_KINDS, config_from_mapping
from mtpeft_bench.tasks.transforms import IMAGENET_MEAN, IMAGENET_STD


DATASETS = dataset_registry.names()


@pytest.mark.parametrize("name", DATASETS)
def test_declarations_are_complete(name):
    cls = get_dataset(name)
    plugin = cls()
    assert isinstance(cls.version, int) and cls.version >= 1
    assert {"train", "val"} <= set(cls.splits)
    assert cls.default_preset in PRESETS
    assert set(cls.default_tasks) <= set(cls.tasks) and cls.default_tasks
    h, w = plugin.image_size
    assert isinstance(h, int) and isinstance(w, int) and min(h, w) >= 32
    for task_name, spec in plugin.tasks.items():
        assert spec.name == task_name
        assert spec.kind in TASK_KINDS
        assert spec.loss in LOSSES, f"{name}/{task_name}: unknown loss {spec.loss}"
        assert spec.loss_weight > 0
        build_meter(spec)  # every declared metric has a meter
        if spec.kind == "segmentation":
            assert spec.num_outputs >= 2
        else:
            assert spec.num_outputs == (3 if spec.kind == "normals" else 1)
    assert [s.name for s in plugin.task_specs(None)] == list(cls.default_tasks)


@pytest.mark.parametrize("name", [n for n in DATASETS if get_dataset(n).requires_root])
def test_missing_data_is_a_one_line_error(name, tmp_path):
    plugin = get_dataset(name)()
    for root in (None, tmp_path / "does-not-exist", tmp_path):
        with pytest.raises(UserError) as info:
            plugin.resolve_root(root)
        assert "\n" not in str(info.value)


# -- a real item of every registered dataset -------------------------------------------------------

#: Options that keep generated datasets (no data root) tiny: synth renders 1 + 1 images at 48x64.
SMALL_CONFIGS = {"synth": {"num_train": 1, "num_val": 1, "height": 48, "width": 64}}


def _plugin_and_root(name, tmp_path):
    """The plugin of ``name`` (small options for generated data) and the root its ``build`` reads."""
    cls = get_dataset(name)
    plugin = cls(config_from_mapping(cls.Config, SMALL_CONFIGS.get(name, {}), f"{name} dataset"))
    if not cls.requires_root:
        return plugin, None
    if name not in MINIATURE_WRITERS:
        pytest.fail(f"dataset {name!r} reads data from disk: add its miniature to tests/helpers/datasets.py")
    return plugin, plugin.resolve_root(MINIATURE_WRITERS[name](tmp_path / "data"))


def _check_target(spec, target, size):
    """``target`` has the dtype, shape ([H, W] or [C, H, W] at ``size``) and values of ``spec.kind``."""
    ignore = spec.ignore_index
    if spec.kind == "segmentation":
        assert target.dtype == torch.int64 and tuple(target.shape) == size
        valid = target != ignore
        assert bool(((target[valid] >= 0) & (target[valid] < spec.num_outputs)).all()), target.unique()
        return
    channels = 3 if spec.kind == "normals" else 1
    assert target.dtype == torch.float32 and tuple(target.shape) == (channels, *size)
    assert bool(torch.isfinite(target).all())
    if spec.kind == "depth":
        assert bool(((target > 0) | (target == ignore)).all()), "depth must be > 0 (metres) or ignore"
    elif spec.kind == "normals":
        invalid = (target == ignore).all(dim=0)
        assert not bool(((target == ignore).any(dim=0) & ~invalid).any()), "ignore must mark all 3 channels"
        length = target.norm(dim=0)[~invalid]
        torch.testing.assert_close(length, torch.ones_like(length), rtol=0, atol=1e-4)
    else:  # saliency, edge
        assert bool(((target == 0) | (target == 1) | (target == ignore)).all()), target.unique()


@pytest.mark.parametrize("split", ["train", "val"])
@pytest.mark.parametrize("name", DATASETS)
def test_an_item_has_the_declared_keys_dtypes_shapes_and_values(name, split, tmp_path, one_thread):
    plugin, root = _plugin_and_root(name, tmp_path)
    specs = plugin.task_specs(list(plugin.tasks))  # every task the dataset provides, with its options
    height, width = plugin.image_size
    dataset = plugin.build(split, specs, (height, width), root, train=split == "train")
    assert len(dataset) >= 1
    torch.manual_seed(0)  # the training augmentations draw from torch's global generator
    item = dataset[0]
    assert set(item) == {"image", "meta", *(s.name for s in specs)}

    image = item["image"]
    assert image.dtype == torch.float32 and tuple(image.shape) == (3, height, width)
    assert bool(torch.isfinite(image).all())
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    pixels = image * std + mean  # ImageNet-normalised: the raw pixels lie in [0, 1]
    assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5

    meta = item["meta"]
    assert isinstance(meta["id"], str) and meta["id"]
    original = tuple(meta["size"])
    assert len(original) == 2 and min(original) >= 1
    # training targets are resized with the image; evaluation may keep the original size (MTI-Net protocol)
    sizes = {(height, width)} if split == "train" else {(height, width), original}
    for spec in specs:
        target = item[spec.name]
        size = tuple(target.shape[-2:])
        assert size in sizes, f"{spec.name}: {size} is neither the image size nor the original size"
        _check_target(spec, target, size)
