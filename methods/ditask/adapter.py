# Over 400 lines on purpose: the adapted linear, the task streams and the bank that warps them share
# one per-step state.
"""DiTASK's adapted linears and the bank that warps all of them in one call per step.

Every adapted ``nn.Linear`` (qkv, proj, fc1, fc2 of every Swin block) becomes a
:class:`DiTASKLinear` that keeps the frozen weight W and bias b and holds its θ. The SVD of every
frozen matrix (qkv split into its q, k, v blocks) is computed once, when the bank is built, and the
factors U, s, V are kept as **non-persistent** buffers: they are derived from the frozen weights,
which stay in the checkpoint, so checkpoints keep timm's format and size; loading a state dict
recomputes them.

Per forward pass (:meth:`DiTASKBank.begin`), one call warps every spectrum of the model (the
shared transform of every layer and the task transforms of the branching layers: docs/ditask.md 2.3,
3.1), with the fused Triton kernel on CUDA or the PyTorch reference elsewhere. Then, stage by
stage, each layer applies W' = U·diag(s')·Vᵀ either as a rebuilt matrix — the rebuilds of all
same-shaped layers of the stage in one batched matmul — or as factors applied to the activations,
whichever costs fewer operations for the tokens at hand (:func:`factored_is_cheaper`).

By default the layer computes the official W' = U·diag(s')·Vᵀ. ``residual=True`` computes
W' = W + U·diag(s' − s)·Vᵀ instead, equal in exact arithmetic; it differs only by the SVD's rounding
error and makes the identity warp reproduce the frozen layer bit for bit, but its factored way must
still compute the frozen product W·x (forward and input gradient), so it is the dearer form.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from typing import Any
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from mtpeft_bench.errors import UserError
from mtpeft_bench.methods.ditask.cpa import SpectrumPack, theta_dim, warp_packed_torch
from mtpeft_bench.model.branching import StreamLayer


SHARED = None  # the variant key of the shared transform; task variants are keyed by task name


def svd_factors(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Reduced SVD of a frozen (out, in) matrix in float32: U (out, k), s (k,) descending, V (in, k).

    The decomposition is taken in the tall orientation (about twice as fast for wide matrices).
    """
    w32 = w.detach().float()
    if w32.shape[0] >= w32.shape[1]:
        u, s, vh = torch.linalg.svd(w32, full_matrices=False)
        return u.contiguous(), s.contiguous(), vh.mT.contiguous()
    u, s, vh = torch.linalg.svd(w32.mT, full_matrices=False)
    return vh.mT.contiguous(), s.contiguous(), u.contiguous()


# How many multiply-adds one element access of an activation is worth, per device type. On the CPU
# the multiply-add count alone predicts the choice (measured: Swin-T, 224 px, batch 8, 2 threads,
# per-layer choice 3.49 s per step against 4.79 s with every W' rebuilt). A GPU's tensor cores do
# far more multiply-adds per byte of memory traffic than a CPU: H100 / H200 spec sheets give about
# 495 T fp16 multiply-adds/s against 3.35–4.8 TB/s, i.e. 200–300 per 2-byte element; matmuls at
# these shapes reach about half their peak, hence 200, an estimate from the spec sheets
# (``benchmarks/cost_weight.py``, run by ``benchmarks/gpu_check.sh``, measures the ratio on the GPU;
# the check also times ``ditask`` against ``ditask_dense`` and ``ditask_factored``).
TRAFFIC_WEIGHT = {"cpu": 0.0, "cuda": 200.0}


def factored_is_cheaper(tokens: int, out_b: int, in_f: int, k: int, grad: bool, residual: bool,
                        traffic_weight: float = 0.0) -> bool:
    """Whether applying the factors to the activations costs less than rebuilding W'.

    Counted per (out_b × in_f) block with k singular values, forward plus (when θ needs a gradient)
    backward, in multiply-adds, leaving out what both ways share. Residual form: rebuild ΔW
    (out·in·k), and in the backward the weight gradient (tokens·out·in) and its projection on the
    factors (out·in·k); versus ((x·V)·Δs)·Uᵀ, tokens·k·(in+out) each way. Official form: the
    rebuilt W' also carries the frozen part, so the dense way pays the main product and its weight
    gradient, while the factors ((x·V)·s')·Uᵀ replace the main product altogether. For an (4C × C)
    MLP layer with a gradient that is 10·tokens·C² against 12·tokens·C² + 8·C³.

    The factored way also reads and writes a (tokens × k) intermediate about 4 times forward and 8
    times backward, which a memory-bound device feels: each access counts ``traffic_weight``
    multiply-adds (:data:`TRAFFIC_WEIGHT`).
    """
    g = 1 if grad else 0
    factored = (1 + g) * tokens * k * (in_f + out_b) + traffic_weight * (4 + 8 * g) * tokens * k
    if residual:
        dense = (1 + g) * out_b * in_f * k + g * tokens * out_b * in_f
    else:
        dense = (1 + g) * out_b * in_f * k + (1 + 2 * g) * tokens * out_b * in_f
    return factored < dense


class InputDropout(nn.Dropout):
    """``nn.Dropout`` whose CPU mask costs half as much, and whose scale can go to the weights.

    On the CPU, drawing one random float per element dominates dropout's cost; here each 64-bit
    draw gives four 16-bit numbers and an element is dropped when its number falls below
    round(p·2¹⁶), so the drop rate is p rounded to a multiple of 2⁻¹⁶ (0.05 → 0.0500031) and kept
    elements are scaled by 1/(1 − that rate), keeping the expectation. CUDA and evaluation use
    ``nn.Dropout`` unchanged.

    :meth:`masked` returns the masked input and the scale separately: dropout(x)·W'ᵀ equals
    mask(x)·(c·W')ᵀ, and c·W' (or c·s' for the factored layer) is far smaller than x.
    """

    def masked(self, x: torch.Tensor) -> tuple[torch.Tensor, float]:
        """(x with the dropped elements zeroed, the scale c of the kept ones) on the CPU in training;
        elsewhere (dropout(x), 1.0)."""
        if not self.training or self.p == 0 or x.device.type != "cpu":
            return super().forward(x), 1.0
        drop = round(self.p * 65536)
        n = x.numel()
        bits = torch.randint(-2**63, 2**63 - 1, ((n + 3) // 4,), dtype=torch.int64, device=x.device)
        r = bits.view(torch.int16)[:n].view(x.shape)
        return x.masked_fill(r < drop - 32768, 0.0), 65536 / (65536 - drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xm, scale = self.masked(x)
        return xm if scale == 1.0 else xm * scale


class DiTASKLinear(nn.Module):
    """A frozen ``nn.Linear`` whose weight is warped in its singular values (docs/ditask.md 2.2).

    ``forward(x (..., in)) -> (..., out)``: y = dropout(x)·W'ᵀ + b with the shared transform.

    Args:
        base: the frozen linear (its weight and bias stay as they are, frozen).
        blocks: row blocks with their own SVD (3 for qkv: q, k, v share θ), else 1.
        shared_cells: cells of the shared transform (θ has ``shared_cells − 1`` entries).
        task_cells: cells of the per-task transforms.
        tasks: tasks that get their own θ here (empty: none).
        dropout: dropout on the input of the shared path (0.05 in the official code).
    """

    def __init__(self, base: nn.Linear, blocks: int, shared_cells: int, task_cells: int, tasks: Sequence[str],
                 dropout: float):
        super().__init__()
        if base.out_features % blocks:
            raise ValueError(f"{base.out_features} rows do not split into {blocks} blocks")
        self.base = base
        self.blocks = blocks
        self.in_features, self.out_features = base.in_features, base.out_features
        self.dropout = InputDropout(dropout)
        self.ditask_theta = nn.Parameter(torch.zeros(1, theta_dim(shared_cells)))
        self.ditask_task_theta = nn.ParameterDict(
            {t: nn.Parameter(torch.zeros(1, theta_dim(task_cells))) for t in tasks}) if tasks else None
        self.__dict__["_bank"] = None  # set by the bank; not a submodule

    @property
    def weight(self) -> torch.Tensor:
        return self.base.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xm, scale = self.dropout.masked(x)
        return self.__dict__["_bank"].apply(self, xm, SHARED, input_scale=scale)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, blocks={self.blocks}"


class DiTASKStream(StreamLayer):
    """Shared and per-task outputs of an adapted linear in the last block of a stage (docs/ditask.md 3.1).

    The shared path sees dropout(x); each task uses the full task-warped weight W'_t (built from the
    original spectrum) on its own stream, or on the shared dropped-out input before the streams
    diverge (the attention projection).
    """

    def __init__(self, layer: DiTASKLinear, tasks: Sequence[str]):
        super().__init__()
        self.layer = layer
        self.tasks = tuple(tasks)

    def forward(self, x: torch.Tensor, task_x: Mapping[str, torch.Tensor] | None):
        bank = self.layer.__dict__["_bank"]
        xm, c = self.layer.dropout.masked(x)
        shared = bank.apply(self.layer, xm, SHARED, input_scale=c)
        if task_x is None:  # the task paths read the same dropped-out input
            return shared, {t: bank.apply(self.layer, xm, t, input_scale=c) for t in self.tasks}
        return shared, {t: bank.apply(self.layer, task_x[t], t) for t in self.tasks}


@dataclass
class _Rows:
    """Where a (layer, variant) lives: its group, its piece of the group's rows, first slot, number of blocks."""

    group: int
    piece: int
    pos: int
    blocks: int


@dataclass
class _Group:
    """Same-shaped matrices of one stage (the unit of batched rebuilds)."""

    stage: int
    out_b: int
    in_f: int
    slots: int = 0
    rows: int = 0
    row_pos: list | None = None  # slot of every warp row
    pieces: list | None = None  # rows of every (layer, variant), in row order


class DiTASKBank(nn.Module):
    """The factors, θ layout and per-step warps of every adapted layer of a model.

    Args:
        layers: ``(stage, layer, live_tasks)`` for every adapted layer, in forward order;
            ``live_tasks``: whether the layer's task θ are used (the branching layers) or dead.
        tasks: task names.
        shared_cells, task_cells: CPA cells of the shared / task transforms.
        kernel: ``auto`` (Triton on CUDA, else PyTorch), ``torch`` or ``triton``.
        residual: W' = W + U·diag(s'−s)·Vᵀ (True) or U·diag(s')·Vᵀ (the official form).
        mode: ``auto`` (cheaper of rebuild and factors), ``dense`` or ``factored``.
        svd_recompute: ``never`` (cached factors), ``per_forward`` (every matrix once per forward)
            or ``per_use`` (as often as the official code: once per shared or task path).
    """

    def __init__(self, layers: Sequence[tuple[int, DiTASKLinear, bool]], tasks: Sequence[str], shared_cells: int,
                 task_cells: int, kernel: str = "auto", residual: bool = False, mode: str = "auto",
                 svd_recompute: str = "never"):
        super().__init__()
        self.tasks = tuple(tasks)
        self.kernel, self.residual, self.mode, self.svd_recompute = kernel, residual, mode, svd_recompute
        self.__dict__["_layers"] = [layer for _, layer, _ in layers]
        self._live = [live for _, _, live in layers]
        self._stage_of = [stage for stage, _, _ in layers]
        self.last_kernel: str | None = None
        self.last_modes: dict[str, dict[str, str]] = {}
        self._state: dict[str, Any] | None = None
        self._triton_ok: bool | None = None  # unknown until the kernel is first wanted

        # Slots (one SVD'd matrix each), grouped by (stage, shape).
        groups: dict[tuple[int, int, int], int] = {}
        self.groups: list[_Group] = []
        self._slots: list[tuple[int, int, int, int]] = []  # (layer index, block, group, position)
        for li, layer in enumerate(self._layers):
            out_b = layer.out_features // layer.blocks
            key = (self._stage_of[li], out_b, layer.in_features)
            if key not in groups:
                groups[key] = len(self.groups)
                self.groups.append(_Group(*key))
            g = groups[key]
            for b in range(layer.blocks):
                self._slots.append((li, b, g, self.groups[g].slots))
                self.groups[g].slots += 1

        # θ rows per cell count: the shared θ of every layer, then the live task θ.
        self._theta_rows: dict[int, list[tuple[int, str | None]]] = {}

        def theta_row(li: int, variant: str | None) -> tuple[int, int]:
            cells = shared_cells if variant is SHARED else task_cells
            rows = self._theta_rows.setdefault(cells, [])
            rows.append((li, variant))
            return cells, len(rows) - 1

        shared_rows = {li: theta_row(li, SHARED) for li in range(len(self._layers))}
        task_rows = {(li, t): theta_row(li, t) for li in range(len(self._layers)) if self._live[li] for t in self.tasks}

        # Warps, laid out group by group: every slot's shared warp, then the task warps.
        s_offsets, offset = [], 0
        for _, _, g, _ in self._slots:
            s_offsets.append(offset)
            offset += min(self.groups[g].out_b, self.groups[g].in_f)
        warps: list[tuple[int, int, int, int]] = []
        self._rows: dict[tuple[int, str | None], _Rows] = {}
        slots_of = {}
        for si, (li, _, _, _) in enumerate(self._slots):
            slots_of.setdefault(li, []).append(si)
        for g, group in enumerate(self.groups):
            group.row_pos, group.pieces = [], []
            k = min(group.out_b, group.in_f)
            layer_ids = sorted({li for li, _, gg, _ in self._slots if gg == g})
            variants = [(li, SHARED) for li in layer_ids] + [(li, t) for li in layer_ids if self._live[li]
                                                              for t in self.tasks]
            for li, variant in variants:
                cells, row = shared_rows[li] if variant is SHARED else task_rows[(li, variant)]
                slots = slots_of[li]
                self._rows[(li, variant)] = _Rows(g, len(group.pieces), self._slots[slots[0]][3], len(slots))
                group.pieces.append(len(slots))
                for si in slots:
                    warps.append((s_offsets[si], k, cells, row))
                    group.row_pos.append(self._slots[si][3])
            group.rows = len(group.row_pos)
        self.pack = SpectrumPack(warps)
        for li, layer in enumerate(self._layers):
            layer.__dict__["_bank"] = self
            layer.__dict__["_bank_index"] = li
        first_slot = {}
        for si, (_, _, g, pos) in enumerate(self._slots):
            first_slot[(g, pos)] = si
        for g, group in enumerate(self.groups):
            k = min(group.out_b, group.in_f)
            self.register_buffer(f"row_pos{g}", torch.tensor(group.row_pos), persistent=False)
            s_index = [[s_offsets[first_slot[(g, pos)]] + i for i in range(k)] for pos in group.row_pos]
            self.register_buffer(f"s_index{g}", torch.tensor(s_index), persistent=False)
        self.refresh_factors()
        self.register_load_state_dict_post_hook(_refresh_after_load)

    # -- factors ----------------------------------------------------------------------------------
    def _slot_weight(self, si: int) -> torch.Tensor:
        li, b, g, _ = self._slots[si]
        out_b = self.groups[g].out_b
        return self._layers[li].base.weight[b * out_b:(b + 1) * out_b]

    @torch.no_grad()
    def _compute_factors(self) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor]:
        us: list[list[torch.Tensor]] = [[] for _ in self.groups]
        vs: list[list[torch.Tensor]] = [[] for _ in self.groups]
        ss = []
        for si, (_, _, g, _) in enumerate(self._slots):
            u, s, v = svd_factors(self._slot_weight(si))
            us[g].append(u)
            vs[g].append(v)
            ss.append(s)
        return [torch.stack(u) for u in us], [torch.stack(v) for v in vs], torch.cat(ss)

    @torch.no_grad()
    def refresh_factors(self) -> None:
        """(Re)compute U, s, V of every frozen matrix from the current weights (done at build)."""
        us, vs, s = self._compute_factors()
        for g in range(len(self.groups)):
            self.register_buffer(f"U{g}", us[g], persistent=False)
            self.register_buffer(f"V{g}", vs[g], persistent=False)
        self.register_buffer("s", s, persistent=False)

    def _official_extra_svds(self) -> None:
        # The official code decomposes each matrix again on every task path, the dead qkv ones included.
        with torch.no_grad():
            for si, (li, _, _, _) in enumerate(self._slots):
                layer = self._layers[li]
                for _ in range(len(layer.ditask_task_theta) if layer.ditask_task_theta is not None else 0):
                    svd_factors(self._slot_weight(si))

    # -- per forward ------------------------------------------------------------------------------
    def _thetas(self) -> dict[int, torch.Tensor]:
        out = {}
        for cells, rows in self._theta_rows.items():
            params = [self._layers[li].ditask_theta if v is SHARED else self._layers[li].ditask_task_theta[v]
                      for li, v in rows]
            out[cells] = torch.cat(params).float()
        return out

    def _load_triton(self):
        """The kernel module, or None (with one warning) when Triton cannot be imported."""
        if self._triton_ok is False:
            return None
        try:
            from mtpeft_bench.methods.ditask import triton_kernel
        except (ImportError, RuntimeError) as exc:
            warnings.warn(f"DiTASK: Triton is not usable ({exc}); using the PyTorch reference of the CPA warp",
                          RuntimeWarning, stacklevel=3)
            self._triton_ok = False
            return None
        self._triton_ok = True
        return triton_kernel

    def _choose_kernel(self, device: torch.device) -> str:
        if self.kernel == "torch":
            return "torch"
        if self.kernel == "triton" and device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
            raise UserError("method.kernel=triton needs a CUDA device (or TRITON_INTERPRET=1 for Triton's CPU "
                            "interpreter); use method.kernel=auto or torch")
        if self.kernel == "auto" and device.type != "cuda":
            return "torch"
        return "triton" if self._load_triton() is not None else "torch"

    def _warp(self, s: torch.Tensor, coeff: torch.Tensor) -> tuple[torch.Tensor, str]:
        if self._choose_kernel(s.device) == "triton":
            return self._load_triton().warp_packed_triton(self.pack, s, coeff, residual=True), "triton"
        return warp_packed_torch(self.pack, s, coeff, residual=True), "torch"

    def begin(self) -> None:
        """Warp every spectrum for this forward pass (one call for the whole model)."""
        if self.svd_recompute != "never":
            us, vs, s = self._compute_factors()
            if self.svd_recompute == "per_use":
                self._official_extra_svds()
        else:
            us = [getattr(self, f"U{g}") for g in range(len(self.groups))]
            vs = [getattr(self, f"V{g}") for g in range(len(self.groups))]
            s = self.s
        device_type = s.device.type
        with torch.autocast(device_type=device_type, enabled=False):  # the CPA runs in float32 (docs/ditask.md 5)
            delta, kernel = self._warp(s, self.pack.coefficients(self._thetas()))
        self.last_kernel = kernel
        # One split per tensor: slicing each layer's piece out separately would make the backward
        # allocate a full-size zero gradient per slice.
        sizes = [grp.rows * min(grp.out_b, grp.in_f) for grp in self.groups]
        scales = []
        for g, (grp, part) in enumerate(zip(self.groups, torch.split(delta, sizes))):
            part = part.view(grp.rows, -1)
            scales.append(part if self.residual else s[getattr(self, f"s_index{g}")] + part)
        self._state = {"scale": scales, "U": us, "V": vs, "stages": {}}

    def end(self) -> None:
        self._state = None

    def _prepare_stage(self, stage: int, tokens: int, device_type: str) -> dict[int, Any]:
        """Choose dense or factored for every group of ``stage`` and rebuild the dense ones, batched."""
        grad = torch.is_grad_enabled()
        plan: dict[int, Any] = {}
        for g, group in enumerate(self.groups):
            if group.stage != stage:
                continue
            k = min(group.out_b, group.in_f)
            if self.mode == "auto":
                factored = factored_is_cheaper(tokens, group.out_b, group.in_f, k, grad, self.residual,
                                               TRAFFIC_WEIGHT.get(device_type, 0.0))
            else:
                factored = self.mode == "factored"
            modes = self.last_modes.setdefault("train" if grad else "no_grad", {})
            modes[f"stage{stage}:{group.out_b}x{group.in_f}"] = "factored" if factored else "dense"
            scale = self._state["scale"][g]  # (rows, k): s' − s (residual) or s'
            if factored:
                plan[g] = (False, torch.split(scale, group.pieces))
                continue
            u, v = self._state["U"][g], self._state["V"][g]
            if group.rows != group.slots or group.row_pos != list(range(group.slots)):
                pos = getattr(self, f"row_pos{g}")
                u, v = u.index_select(0, pos), v.index_select(0, pos)
            rebuilt = torch.bmm(u * scale.unsqueeze(1).to(u.dtype), v.mT)  # (rows, out_b, in)
            plan[g] = (True, torch.split(rebuilt, group.pieces))
        return plan

    def apply(self, layer: DiTASKLinear, x: torch.Tensor, variant: str | None,
              input_scale: float = 1.0) -> torch.Tensor:
        """The adapted layer's output for input ``input_scale · x`` (..., in) with the shared or a
        task's warp; the scale (dropout's 1/(1−p)) is applied to W' or s', not to ``x``."""
        if self._state is None:  # called outside the encoder's forward (e.g. a layer on its own)
            self.begin()
            try:
                return self.apply(layer, x, variant, input_scale)
            finally:
                self.end()
        li = layer.__dict__["_bank_index"]
        where = self._rows[(li, variant)]
        stage = self._stage_of[li]
        stages = self._state["stages"]
        if stage not in stages:
            stages[stage] = self._prepare_stage(stage, max(1, x.numel() // layer.in_features), x.device.type)
        base = layer.base
        dense, pieces = stages[stage][where.group]
        n = where.blocks
        if dense:
            dw = pieces[where.piece].reshape(layer.out_features, layer.in_features)
            weight = base.weight + dw if self.residual else dw
            return F.linear(x, weight if input_scale == 1.0 else weight * input_scale, base.bias)
        scale = pieces[where.piece]  # (n, k): s' − s (residual) or s'
        u = self._state["U"][where.group][where.pos:where.pos + n]  # (n, out_b, k)
        v = self._state["V"][where.group][where.pos:where.pos + n]  # (n, in, k)
        lead = x.shape[:-1]
        x2 = x.reshape(-1, layer.in_features)
        # What the factored term is added to: the frozen layer's output (residual form) or its bias.
        if self.residual:
            offset = F.linear(x2, base.weight if input_scale == 1.0 else base.weight * input_scale, base.bias)
        else:
            offset = base.bias
        if input_scale != 1.0:
            scale = scale * input_scale
        proj = torch.einsum("ti,nik->ntk", x2, v) * scale.unsqueeze(1)  # (n, tokens, k)
        if n == 1:  # the offset rides on the last matmul
            y = torch.addmm(offset, proj[0], u[0].mT) if offset is not None else proj[0] @ u[0].mT
        else:
            y = torch.einsum("ntk,nok->tno", proj, u).reshape(x2.shape[0], layer.out_features)
            if offset is not None:
                y = y + offset
        return y.reshape(*lead, layer.out_features)

    def info(self) -> dict[str, Any]:
        return {
            "kernel": self.last_kernel or ("triton" if self.kernel == "triton" else "torch"),
            "kernel_option": self.kernel,
            "layer_modes": dict(self.last_modes),
            "weight_form": "residual W + U diag(s'-s) V^T" if self.residual else "U diag(s') V^T",
            "svd": "cached at build (non-persistent buffers)" if self.svd_recompute == "never"
                   else f"recomputed ({self.svd_recompute})",
            "adapted_linears": len(self._layers),
            "warps_per_step": self.pack.count,
        }


def _refresh_after_load(module: DiTASKBank, incompatible_keys: Any) -> None:
    # The factors derive from the frozen weights, which a state dict may have just replaced.
    module.refresh_factors()
