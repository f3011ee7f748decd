"""DiTASK: multi-task fine-tuning with diffeomorphic transformations of the singular values.

Mantri, Schönlieb, Ribeiro, Baskaran, Bevilacqua, "DiTASK: Multi-Task Fine-Tuning with
Diffeomorphic Transformations", CVPR 2025 (arXiv:2502.06029); official code
ipsitmantri/DiTASK (backbone file in Malygossssss/DiTASK). Specification: docs/ditask.md.

Every qkv / proj / fc1 / fc2 of every Swin block keeps its pretrained singular vectors and has its
singular values warped by a 1-D CPA diffeomorphism: W' = U·diag(Warp_θ(s))·Vᵀ (docs/ditask.md 2). A
shared transform (θ with ``shared_cells − 1`` entries) adapts every layer; in the last block of
every stage, proj / fc1 / fc2 also get per-task transforms of the *original* spectrum, which
produce the per-task stage features through the task-branching block (docs/ditask.md 3). Trainable:
θ, and — as in the official code — the patch embedding, every LayerNorm, the relative-position
bias tables and the PatchMerging reductions (docs/ditask.md 4.1). Frozen: the adapted weights and their
biases. The SVDs are taken once, at build time (the official code recomputes them every forward;
``svd_recompute`` reproduces that cost).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from mtpeft_bench.methods.base import Method, MethodConfig, freeze
from mtpeft_bench.methods.ditask.adapter import DiTASKBank, DiTASKLinear, DiTASKStream
from mtpeft_bench.model.encoder import MultiTaskSwinEncoder
from mtpeft_bench.model.params import set_extras_trainable
from mtpeft_bench.registry import register_method


ROLES = (("attn", "qkv"), ("attn", "proj"), ("mlp", "fc1"), ("mlp", "fc2"))
KERNELS = ("auto", "torch", "triton")
INITS = ("uniform", "identity")
MODES = ("auto", "dense", "factored")
SVD_RECOMPUTE = ("never", "per_forward", "per_use")


def _int(name: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an integer ≥ {low}, got {value!r}")


def _choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}, got {value!r}")


def _bool(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be true or false, got {value!r}")


@dataclass(frozen=True)
class DiTASKConfig(MethodConfig):
    """Options of ``ditask`` (paper: https://arxiv.org/abs/2502.06029).

    Attributes:
        shared_cells: CPA cells of the shared transform of every adapted layer (official Swin-T
            config: 64, i.e. 63 parameters per layer).
        task_cells: CPA cells of the per-task transforms (official: 4; 64 reproduces the paper's
            1.61M parameter count, docs/ditask.md 4.3).
        kernel: ``auto`` (fused Triton kernel on CUDA, PyTorch elsewhere), ``torch`` or ``triton``.
        dropout: dropout on the input of every adapted layer's shared path (official: 0.05).
        init: ``uniform`` — θ ~ U(±1/√d) (kaiming-uniform with a = √5, as the official code) — or
            ``identity`` (θ = 0: the warp starts as the identity).
        dead_task_theta: keep the per-task θ the official code creates on every qkv and never uses
            (they count in its parameter total; attention is shared, so they get no gradient).
        train_extras: train the patch embedding, norms, relative-position tables and PatchMerging
            reductions (official: yes); false freezes them.
        task_streams: per-task transforms in the last block of every stage (the multi-task
            model); false gives the shared-only ("single-task") DiTASK of docs/ditask.md 4.3.
        residual: apply W' as W + U·diag(s'−s)·Vᵀ (the identity warp then reproduces the frozen
            layer bit for bit) instead of the official U·diag(s')·Vᵀ (default); both are equal up
            to the SVD's rounding error, but only the official form lets the factored way skip the
            frozen product W·x, which makes it the cheaper one for fc1/fc2 at every batch size.
        mode: how W' reaches the activations: ``auto`` (rebuild W' or apply the factors,
            whichever costs fewer operations for the batch), ``dense`` or ``factored``.
        svd_recompute: ``never`` (SVDs cached at build), ``per_forward`` (every matrix again at
            every forward) or ``per_use`` (as often as the official code); for cost comparisons.
    """

    shared_cells: int = 64
    task_cells: int = 4
    kernel: str = "auto"
    dropout: float = 0.05
    init: str = "uniform"
    dead_task_theta: bool = True
    train_extras: bool = True
    task_streams: bool = True
    residual: bool = False
    mode: str = "auto"
    svd_recompute: str = "never"

    def __post_init__(self):
        _int("shared_cells", self.shared_cells, 2)
        _int("task_cells", self.task_cells, 2)
        _choice("kernel", self.kernel, KERNELS)
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) or not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be a number in [0, 1), got {self.dropout!r}")
        _choice("init", self.init, INITS)
        for name in ("dead_task_theta", "train_extras", "task_streams", "residual"):
            _bool(name, getattr(self, name))
        _choice("mode", self.mode, MODES)
        _choice("svd_recompute", self.svd_recompute, SVD_RECOMPUTE)


class DiTASKEncoder(MultiTaskSwinEncoder):
    """The multi-task Swin encoder with every block linear warped; one CPA call per forward."""

    # The blocks read the warped spectra that begin() computes and end() drops, so a block cannot be
    # recomputed in the backward pass (grad_checkpoint); accum_steps saves memory instead.
    supports_grad_checkpointing = False

    def __init__(self, backbone: nn.Module, tasks, bank: DiTASKBank, task_streams: bool, dead_theta: bool):
        factory = (lambda stage, role, linear: DiTASKStream(linear, tasks)) if task_streams else None
        super().__init__(backbone, tasks, stream_factory=factory)
        self.ditask = bank
        # The dead per-task θ of qkv never get a gradient (the official code also needs this in DDP).
        self.find_unused_parameters = dead_theta

    def forward(self, images):
        self.ditask.begin()
        try:
            return super().forward(images)
        finally:
            self.ditask.end()

    def method_info(self) -> dict[str, Any]:
        return {**super().method_info(), **self.ditask.info()}

    def rebuilt_weights(self) -> dict[str, torch.Tensor]:
        """The adapted weights as plain matrices (``mtbench export``'s merged form), by module path:
        ``<path>.weight`` (out, in) = the shared W′ = U·diag(Warp_θ(s))·Vᵀ of every adapted linear
        and ``<path>.tasks.<task>.weight`` = W′ₜ of every task stream; ``<path>.bias`` the frozen
        bias. Each is read off the layer itself, W′ᵀ = apply(I) − b, so it is what the forward uses
        (dense or factored, either weight form), without dropout.
        """
        from mtpeft_bench.methods.ditask.adapter import SHARED

        paths = {id(m): name for name, m in self.named_modules() if isinstance(m, DiTASKLinear)}
        variants: dict[int, list] = {key: [SHARED] for key in paths}
        for module in self.modules():
            if isinstance(module, DiTASKStream):
                variants[id(module.layer)] += list(module.tasks)
        layers = {id(m): m for m in self.modules() if isinstance(m, DiTASKLinear)}
        out: dict[str, torch.Tensor] = {}
        was_training = self.training
        self.eval()
        self.ditask.begin()
        try:
            for key, path in paths.items():
                layer = layers[key]
                eye = torch.eye(layer.in_features, dtype=layer.base.weight.dtype, device=layer.base.weight.device)
                bias = layer.base.bias
                for variant in variants[key]:
                    rows = self.ditask.apply(layer, eye, variant)  # (in, out) = W′ᵀ + b
                    weight = (rows - bias if bias is not None else rows).T.contiguous()
                    out[f"{path}.weight" if variant is SHARED else f"{path}.tasks.{variant}.weight"] = weight
                if bias is not None:
                    out[f"{path}.bias"] = bias.detach().clone()
        finally:
            self.ditask.end()
            self.train(was_training)
        return out


@register_method("ditask")
class DiTASK(Method):
    """DiTASK: CPA diffeomorphisms of the singular values, shared and per task (Mantri et al., CVPR 2025)."""

    paper = "https://arxiv.org/abs/2502.06029"
    Config = DiTASKConfig

    def build(self, backbone, tasks, cfg: DiTASKConfig):
        tasks = tuple(tasks)
        freeze(backbone)
        set_extras_trainable(backbone, cfg.train_extras)
        layers = []
        for stage_index, stage in enumerate(backbone.layers):
            depth = len(stage.blocks)
            for block_index, block in enumerate(stage.blocks):
                last = block_index == depth - 1
                for parent_name, role in ROLES:
                    parent = getattr(block, parent_name)
                    live = cfg.task_streams and last and role != "qkv"
                    dead = cfg.task_streams and cfg.dead_task_theta and role == "qkv"
                    layer = DiTASKLinear(getattr(parent, role), 3 if role == "qkv" else 1, cfg.shared_cells,
                                         cfg.task_cells, tasks if (live or dead) else (), cfg.dropout)
                    _init_theta(layer, cfg.init)
                    setattr(parent, role, layer)
                    layers.append((stage_index, layer, live))
        bank = DiTASKBank(layers, tasks, cfg.shared_cells, cfg.task_cells, kernel=cfg.kernel, residual=cfg.residual,
                          mode=cfg.mode, svd_recompute=cfg.svd_recompute)
        return DiTASKEncoder(backbone, tasks, bank, cfg.task_streams, cfg.task_streams and cfg.dead_task_theta)


def _init_theta(layer: DiTASKLinear, init: str) -> None:
    params = [layer.ditask_theta, *(layer.ditask_task_theta.values() if layer.ditask_task_theta else ())]
    for theta in params:
        if init == "identity":
            nn.init.zeros_(theta)
        else:
            # The official init: kaiming-uniform(a=√5) on a (1, d) tensor, i.e. U(−1/√d, 1/√d).
            nn.init.kaiming_uniform_(theta, a=math.sqrt(5))
