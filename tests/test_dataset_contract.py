"""The dataset contract, checked for every registered dataset plugin."""

from __future__ import annotations

import pytest

from mtpeft_bench.config import PRESETS
from mtpeft_bench.errors import UserError
from mtpeft_bench.losses import LOSSES
from mtpeft_bench.metrics import build_meter
from mtpeft_bench.registry import dataset_registry, get_dataset
from mtpeft_bench.tasks.base import TASK_KINDS


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
