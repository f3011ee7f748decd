"""Kinds of the Swin backbone's own parameters, and the "extras" the protocol lets train.

A backbone parameter is one of :data:`BACKBONE_KINDS`, read from its name: ``patch_embed`` (conv +
its LayerNorm), ``norms`` (block and PatchMerging LayerNorms), ``rel_pos`` (relative-position bias
tables), ``reductions`` (PatchMerging linear reductions) and ``linears`` (qkv/proj/fc1/fc2 weights
and biases). The first four are the :data:`EXTRA_GROUPS` that MTLoRA and DiTASK train besides their
own parameters (docs/protocol.md 5.2, docs/ditask.md 4.1); the parameter report counts them together
(docs/protocol.md 5.3). Methods pick extras with :func:`extra_parameters` / :func:`set_extras_trainable`,
the measurements and the leaderboard group parameters with :func:`backbone_param_kind`.

Torch is not imported, so the leaderboard can read the group names without it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    from torch import nn


#: Every kind of backbone parameter, in the order of the parameter report.
BACKBONE_KINDS = ("patch_embed", "norms", "rel_pos", "reductions", "linears")
#: The kinds MTLoRA and DiTASK train besides their own parameters: everything but the linears.
EXTRA_GROUPS = ("patch_embed", "norms", "rel_pos", "reductions")


def backbone_param_kind(name: str) -> str:
    """Kind of a backbone parameter from its name (relative to the backbone or any prefix)."""
    parts = name.split(".")
    if "relative_position_bias_table" in parts:
        return "rel_pos"
    if "patch_embed" in parts:
        return "patch_embed"
    if "reduction" in parts and "downsample" in parts:
        return "reductions"
    if any(p.startswith("norm") for p in parts[:-1]):
        return "norms"
    return "linears"


def extra_parameters(backbone: "nn.Module", groups: Sequence[str] = EXTRA_GROUPS) -> list["nn.Parameter"]:
    """The backbone's own "extra" parameters of the given kinds, taken before any injection.

    MTLoRA and DiTASK train, besides their own parameters, the patch embedding, every LayerNorm,
    the relative-position bias tables and the PatchMerging reductions (docs/protocol.md 5.2). Taking the
    parameter objects before a method wraps layers keeps the selection to the original ones (an
    adapter parameter whose name contains ``norm`` is not an extra).
    """
    unknown = [g for g in groups if g not in EXTRA_GROUPS]
    if unknown:
        raise ValueError(f"unknown extra groups {unknown}; known: {EXTRA_GROUPS}")
    return [p for name, p in backbone.named_parameters() if backbone_param_kind(name) in groups]


def set_extras_trainable(backbone: "nn.Module", trainable: bool = True, groups: Sequence[str] = EXTRA_GROUPS) -> None:
    """Set ``requires_grad`` of the backbone's "extra" parameters (:func:`extra_parameters`; DiTASK
    trains them as MTLoRA does, docs/ditask.md 4.1). ``groups`` picks a subset of :data:`EXTRA_GROUPS`.
    """
    for param in extra_parameters(backbone, groups):
        param.requires_grad_(trainable)
