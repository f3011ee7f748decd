"""The multi-task encoder and the task-branching block, against timm's own forward."""

from __future__ import annotations

import copy

import pytest
import torch

from mtpeft_bench.branching import SharedStream, TaskBranchingBlock
from mtpeft_bench.encoder import MultiTaskSwinEncoder
from helpers import micro_backbone
from helpers.baseline import reference_features


TASKS = ("a", "b", "c")


@pytest.fixture
def images():
    torch.manual_seed(0)
    return torch.randn(2, 3, 64, 64)


def test_shared_encoder_matches_timm(images):
    torch.manual_seed(1)
    backbone = micro_backbone().eval()
    expected = reference_features(backbone, images)
    encoder = MultiTaskSwinEncoder(backbone, TASKS).eval()
    with torch.no_grad():
        feats = encoder(images)
    assert set(feats) == set(TASKS)
    assert encoder.out_channels == [64, 128, 256, 256]
    for t in TASKS:
        assert [f.shape for f in feats[t]] == [(2, 64, 8, 8), (2, 128, 4, 4), (2, 256, 2, 2), (2, 256, 2, 2)]
        for got, want in zip(feats[t], expected):
            torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert feats["a"][0] is feats["b"][0]  # shared features are computed once


def test_branching_with_shared_layers_reproduces_timm(images):
    torch.manual_seed(1)
    backbone = micro_backbone().eval()
    expected = reference_features(backbone, images)
    encoder = MultiTaskSwinEncoder(backbone, TASKS, stream_factory=lambda s, r, lin: SharedStream(lin, TASKS)).eval()
    assert sum(isinstance(m, TaskBranchingBlock) for m in encoder.modules()) == 4
    with torch.no_grad():
        feats = encoder(images)
    for t in TASKS:
        for got, want in zip(feats[t], expected):
            torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


def _per_task_proj_encoder(backbone):
    from mtbench_example_task_proj import PerTaskCopies  # noqa: F401 - imported by the fixture

    def factory(stage, role, linear):
        return PerTaskCopies(linear, TASKS) if role in ("proj", "fc2") else SharedStream(linear, TASKS)

    return MultiTaskSwinEncoder(backbone, TASKS, stream_factory=factory).eval()


def test_identical_task_layers_give_the_shared_features(images, example_plugin):
    torch.manual_seed(1)
    backbone = micro_backbone().eval()
    expected = reference_features(copy.deepcopy(backbone), images)
    encoder = _per_task_proj_encoder(backbone)
    with torch.no_grad():
        feats = encoder(images)
    for t in TASKS:
        for got, want in zip(feats[t], expected):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_task_streams_are_task_specific_and_do_not_propagate(images, example_plugin):
    """Changing task b's projection in stage 2 changes only b's stage-2 feature: task streams feed
    the decoder, never the next stage (MTLoRA/DiTASK structure)."""
    torch.manual_seed(1)
    encoder = _per_task_proj_encoder(micro_backbone())
    with torch.no_grad():
        before = encoder(images)
        block = encoder.backbone.layers[1].blocks[-1]
        block.proj.per_task["b"].weight.add_(0.5)
        after = encoder(images)
    for t in TASKS:
        for i in range(4):
            same = torch.equal(before[t][i], after[t][i])
            assert same == (not (t == "b" and i == 1)), (t, i)


def test_gradients_reach_only_the_right_task(images, example_plugin):
    torch.manual_seed(1)
    encoder = _per_task_proj_encoder(micro_backbone())
    feats = encoder(images)
    feats["a"][2].sum().backward()
    block = encoder.backbone.layers[2].blocks[-1]
    assert block.proj.per_task["a"].weight.grad is not None
    assert block.proj.per_task["b"].weight.grad is None
    # Shared parameters of earlier stages get gradient through the shared stream.
    assert encoder.backbone.layers[2].blocks[0].attn.qkv.weight.grad is not None
    assert encoder.backbone.layers[0].blocks[0].block.attn.qkv.weight.grad is not None
