"""Shared by the baseline-method tests: Swin-T facts written from the Swin paper, a cached Swin-T
at 448 px, parameter groups of a method on it, and the timm reference features."""

from __future__ import annotations

import copy
import functools

import torch

from mtpeft_bench.measure import parameter_groups, parameter_summary
from mtpeft_bench.model.multitask import build_model, task_outputs_of
from mtpeft_bench.registry import get_dataset, get_method
from mtpeft_bench.tasks.base import config_from_mapping


# Swin-T (Liu et al., ICCV 2021): channels and blocks per stage; the facts the formulas rest on.
SWIN_T_C = (96, 192, 384, 768)
SWIN_T_BLOCKS = (2, 2, 6, 2)
SUM_BC = sum(b * c for b, c in zip(SWIN_T_BLOCKS, SWIN_T_C))  # Σ_blocks C = 4,416
PASCAL_TASKS = ("semseg", "human_parts", "sal", "normals")
# Counts taken from docs/protocol.md 5.3 (recomputed from the reference code there).
EXTRAS = 1_599_546
REDUCTIONS = 1_548_288
DECODER = 1_946_624


@functools.lru_cache(maxsize=1)
def _swin_t_448():
    from mtpeft_bench.model.backbone import create_backbone

    torch.manual_seed(0)
    backbone, _ = create_backbone("swin_tiny_patch4_window7_224", (448, 448), "none", 0.0)
    return backbone


def swin_t_model(method: str, **options):
    """Build ``method`` on a fresh copy of Swin-T at 448 px for the 4 PASCAL tasks.

    Returns:
        ``(model, groups, summary)`` as the parameter report computes them.
    """
    specs = get_dataset("pascal_mt")().task_specs(None)
    assert tuple(s.name for s in specs) == PASCAL_TASKS
    cls = get_method(method)
    cfg = config_from_mapping(cls.Config, options, f"{method} method")
    model, ids = build_model(cls(), cfg, copy.deepcopy(_swin_t_448()), task_outputs_of(specs))
    groups = parameter_groups(model, ids)
    return model, groups, parameter_summary(groups)


def trainable(groups) -> dict[str, int]:
    return {g: c["trainable"] for g, c in groups.items()}


def reference_features(backbone, images):
    """The encoder's four features computed with timm's own stage forwards (docs/protocol.md 4.1)."""
    x = backbone.patch_embed(images)
    outs = []
    for stage in backbone.layers:
        x = stage(x)
        outs.append(x)
    feats = [backbone.layers[i + 1].downsample(outs[i]) for i in range(3)] + [outs[3]]
    return [f.permute(0, 3, 1, 2) for f in feats]
