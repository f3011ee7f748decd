"""Fused Triton kernels for the DiTASK singular-value warp of a whole model.

One forward launch integrates the CPA velocity fields of every adapted layer (docs/ditask.md 7.3) and
re-samples every spectrum (docs/ditask.md 2.3); one backward launch gives the gradient of the loss with
respect to every layer's CPA coefficients (docs/ditask.md 7.4), from which autograd forms the gradient
in θ (A = B·θ is a tiny matmul outside the kernel). Spectra of different lengths and transforms of
different cell counts (DiTASK's shared 64 / task 4) are described by the per-warp metadata of a
:class:`~mtpeft_bench.methods.ditask.cpa.SpectrumPack`: ``(s_offset, k, coeff_offset, nc,
out_offset)``.

Grid: (warp, block of ``BLOCK`` points). Each lane follows difw's cell-crossing loop for its grid
point, with an early exit once every lane of the program has stopped. The backward replays the
forward's trajectory twice (to find the final cell, then to visit each crossing) and scatters
into the coefficients with atomic adds (so the float32 sum order, hence the last bits, may vary
from run to run).

Importing this module imports Triton: the method imports it lazily and falls back to the PyTorch
reference (:func:`~mtpeft_bench.methods.ditask.cpa.warp_packed_torch`) when Triton is missing.
Without a GPU, the kernels run under ``TRITON_INTERPRET=1`` (set before this module is imported).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from mtpeft_bench.methods.ditask.cpa import EPS, SpectrumPack


BLOCK = 256


@triton.jit
def _poly7(z, c0, c1, c2, c3, c4, c5, c6):
    return c0 + z * (c1 + z * (c2 + z * (c3 + z * (c4 + z * (c5 + z * c6)))))


@triton.jit
def _expm1_ratio(z):
    # (e^z - 1)/z
    small = tl.abs(z) < 0.1
    zs = tl.where(small, 1.0, z)
    direct = (tl.exp(zs) - 1.0) / zs
    series = _poly7(z, 1.0, 1.0 / 2, 1.0 / 6, 1.0 / 24, 1.0 / 120, 1.0 / 720, 1.0 / 5040)
    return tl.where(small, series, direct)


@triton.jit
def _expm1_curvature(z):
    # (z e^z - (e^z - 1))/z^2
    small = tl.abs(z) < 0.1
    zs = tl.where(small, 1.0, z)
    ez = tl.exp(zs)
    direct = (zs * ez - (ez - 1.0)) / (zs * zs)
    series = _poly7(z, 1.0 / 2, 1.0 / 3, 1.0 / 8, 1.0 / 30, 1.0 / 144, 1.0 / 840, 1.0 / 5760)
    return tl.where(small, series, direct)


@triton.jit
def _log1p_ratio(w):
    # log(1 + w)/w; lanes with w <= -1 never cross and are masked by the caller
    small = tl.abs(w) < 0.1
    ws = tl.where(small | (w <= -1.0), 1.0, w)
    direct = tl.log(1.0 + ws) / ws
    series = _poly7(w, 1.0, -1.0 / 2, 1.0 / 3, -1.0 / 4, 1.0 / 5, -1.0 / 6, 1.0 / 7)
    return tl.where(small, series, direct)


@triton.jit
def _log1p_curvature(w):
    # (w - (1 + w) log(1 + w))/w^2
    small = tl.abs(w) < 0.1
    ws = tl.where(small | (w <= -1.0), 1.0, w)
    direct = (ws - (1.0 + ws) * tl.log(1.0 + ws)) / (ws * ws)
    series = _poly7(w, -1.0 / 2, 1.0 / 6, -1.0 / 12, 1.0 / 20, -1.0 / 30, 1.0 / 42, -1.0 / 56)
    return tl.where(small, series, direct)


@triton.jit
def _step(x, t, c, coeff_ptr, a_off, ncf, nc, mask, eps):
    """Cell coefficients, crossing point and hit time of every lane (one turn of difw's loop)."""
    a = tl.load(coeff_ptr + a_off + 2 * c, mask=mask, other=0.0)
    b = tl.load(coeff_ptr + a_off + 2 * c + 1, mask=mask, other=0.0)
    v = a * x + b
    right = v > 0
    nxt = tl.where(right, c + 1, c - 1)
    cf = c.to(tl.float32)
    xc = tl.where(right, (cf + 1.0) / ncf + eps, cf / ncf - eps)
    vc = a * xc + b
    moving = tl.abs(v) >= eps
    vs = tl.where(moving, v, 1.0)
    dx = xc - x
    w = tl.where(moving, a * dx / vs, 0.0)
    t_hit = dx / vs * _log1p_ratio(w)
    crosses = (mask & moving & (nxt >= 0) & (nxt < nc) & (tl.abs(vc) >= eps) & ((vc > 0) == right)
               & (t_hit <= t))
    return a, b, vs, xc, dx, w, t_hit, nxt, crosses


@triton.jit
def _setup(meta_ptr, T, BLOCK: tl.constexpr):
    j = tl.program_id(0)
    s_off = tl.load(meta_ptr + j * 5 + 0)
    k = tl.load(meta_ptr + j * 5 + 1)
    a_off = tl.load(meta_ptr + j * 5 + 2)
    nc = tl.load(meta_ptr + j * 5 + 3)
    o_off = tl.load(meta_ptr + j * 5 + 4)
    i = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = i < k
    x0 = i.to(tl.float32) / (k - 1).to(tl.float32)
    ncf = nc.to(tl.float32)
    c0 = tl.minimum(tl.maximum(tl.floor(x0 * ncf), 0.0), ncf - 1.0).to(tl.int32)
    t0 = tl.zeros([BLOCK], dtype=tl.float32) + T
    return s_off, k, a_off, nc, o_off, i, mask, x0, ncf, c0, t0


@triton.jit
def _trajectory(x0, t0, c0, coeff_ptr, a_off, ncf, nc, mask, eps, BLOCK: tl.constexpr):
    x = x0
    t = t0
    c = c0
    count = tl.zeros([BLOCK], dtype=tl.int32)
    active = mask
    it = nc * 0  # an int32 tensor, so the loop-carried type never changes
    go = tl.sum(active.to(tl.int32), axis=0) > 0
    while go:
        a, b, vs, xc, dx, w, t_hit, nxt, crosses = _step(x, t, c, coeff_ptr, a_off, ncf, nc, active, eps)
        x = tl.where(crosses, xc, x)
        t = tl.where(crosses, t - t_hit, t)
        c = tl.where(crosses, nxt, c)
        count += crosses.to(tl.int32)
        active = crosses
        it += 1
        go = (tl.sum(active.to(tl.int32), axis=0) > 0) & (it < nc)
    return x, t, c, count


@triton.jit
def _resample_index(i, k, disp):
    km1 = (k - 1).to(tl.float32)
    u = i.to(tl.float32) + km1 * disp
    j0f = tl.minimum(tl.maximum(tl.floor(u), 0.0), km1)
    omega = u - j0f
    j0 = j0f.to(tl.int32)
    j1 = tl.minimum(j0 + 1, k - 1)
    return j0, j1, omega


@triton.jit
def _warp_fwd(s_ptr, coeff_ptr, meta_ptr, out_ptr, T, eps, RESIDUAL: tl.constexpr, BLOCK: tl.constexpr):
    s_off, k, a_off, nc, o_off, i, mask, x0, ncf, c0, t0 = _setup(meta_ptr, T, BLOCK)
    x, t, c, count = _trajectory(x0, t0, c0, coeff_ptr, a_off, ncf, nc, mask, eps, BLOCK)
    a = tl.load(coeff_ptr + a_off + 2 * c, mask=mask, other=0.0)
    b = tl.load(coeff_ptr + a_off + 2 * c + 1, mask=mask, other=0.0)
    disp = (x - x0) + t * _expm1_ratio(t * a) * (a * x + b)
    j0, j1, omega = _resample_index(i, k, disp)
    s0 = tl.load(s_ptr + s_off + j0, mask=mask, other=0.0)
    s1 = tl.load(s_ptr + s_off + j1, mask=mask, other=0.0)
    out = (1.0 - omega) * s0 + omega * s1
    if RESIDUAL:
        out = out - tl.load(s_ptr + s_off + i, mask=mask, other=0.0)
    tl.store(out_ptr + o_off + i, out, mask=mask)


@triton.jit
def _warp_bwd(grad_ptr, s_ptr, coeff_ptr, meta_ptr, gcoeff_ptr, T, eps, BLOCK: tl.constexpr):
    s_off, k, a_off, nc, o_off, i, mask, x0, ncf, c0, t0 = _setup(meta_ptr, T, BLOCK)
    g = tl.load(grad_ptr + o_off + i, mask=mask, other=0.0)
    x, t, c, count = _trajectory(x0, t0, c0, coeff_ptr, a_off, ncf, nc, mask, eps, BLOCK)
    a = tl.load(coeff_ptr + a_off + 2 * c, mask=mask, other=0.0)
    b = tl.load(coeff_ptr + a_off + 2 * c + 1, mask=mask, other=0.0)
    z = t * a
    disp = (x - x0) + t * _expm1_ratio(z) * (a * x + b)
    j0, j1, omega = _resample_index(i, k, disp)
    s0 = tl.load(s_ptr + s_off + j0, mask=mask, other=0.0)
    s1 = tl.load(s_ptr + s_off + j1, mask=mask, other=0.0)
    # d out / d disp = (k - 1)(s_{j+1} - s_j): the loss gradient with respect to φ.
    gd = g * (k - 1).to(tl.float32) * (s1 - s0)
    ez = tl.exp(z)
    # Final cell: ∂ψ/∂a = t e^{ta} x + b t² G(ta), ∂ψ/∂b = t E(ta).
    tl.atomic_add(gcoeff_ptr + a_off + 2 * c, gd * (t * ez * x + b * t * t * _expm1_curvature(z)), mask=mask)
    tl.atomic_add(gcoeff_ptr + a_off + 2 * c + 1, gd * t * _expm1_ratio(z), mask=mask)
    # Crossings: -v(φ) ∂t_hit/∂(a, b) of every cell left on the way.
    scale = -gd * ez * (a * x + b)
    left = tl.where(mask & (scale != 0.0), count, 0)
    x = x0
    t = t0
    c = c0
    go = tl.sum(left, axis=0) > 0
    while go:
        active = left > 0
        a, b, vs, xc, dx, w, t_hit, nxt, crosses = _step(x, t, c, coeff_ptr, a_off, ncf, nc, active, eps)
        q = dx / (vs * vs * (1.0 + w))
        d_a = q * (dx * _log1p_curvature(w) - x)
        tl.atomic_add(gcoeff_ptr + a_off + 2 * c, tl.where(active, scale * d_a, 0.0), mask=active)
        tl.atomic_add(gcoeff_ptr + a_off + 2 * c + 1, tl.where(active, -scale * q, 0.0), mask=active)
        x = tl.where(active, xc, x)
        t = tl.where(active, t - t_hit, t)
        c = tl.where(active, nxt, c)
        left = left - active.to(tl.int32)
        go = tl.sum(left, axis=0) > 0


def _grid(pack: SpectrumPack):
    return (pack.count, triton.cdiv(pack.max_length, BLOCK))


class _FusedWarp(torch.autograd.Function):
    @staticmethod
    def forward(ctx, coeff, s, pack, T, residual):
        coeff = coeff.contiguous()
        s = s.contiguous()
        out = torch.empty(pack.numel, device=s.device, dtype=torch.float32)
        _warp_fwd[_grid(pack)](s, coeff, pack.meta, out, float(T), EPS, RESIDUAL=bool(residual), BLOCK=BLOCK)
        ctx.save_for_backward(coeff, s)
        ctx.pack, ctx.T = pack, T
        return out

    @staticmethod
    def backward(ctx, grad):
        coeff, s = ctx.saved_tensors
        gcoeff = torch.zeros_like(coeff)
        _warp_bwd[_grid(ctx.pack)](grad.contiguous(), s, coeff, ctx.pack.meta, gcoeff, float(ctx.T), EPS, BLOCK=BLOCK)
        return gcoeff, None, None, None, None


def warp_packed_triton(pack: SpectrumPack, s: torch.Tensor, coeff: torch.Tensor, T: float = 1.0,
                       residual: bool = True) -> torch.Tensor:
    """Fused equivalent of :func:`~mtpeft_bench.methods.ditask.cpa.warp_packed_torch` (float32).

    Differentiable in ``coeff`` only: the spectra are the frozen factors of the method, and a
    spectrum that requires grad is refused rather than silently given no gradient.
    """
    if s.requires_grad:
        raise ValueError("the fused DiTASK kernel does not differentiate the spectra; use warp_packed_torch")
    if s.dtype != torch.float32 or coeff.dtype != torch.float32:
        raise ValueError("the fused DiTASK kernel runs in float32")
    return _FusedWarp.apply(coeff, s, pack, T, residual)
