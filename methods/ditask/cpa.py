# Over 400 lines on purpose: the basis, the closed-form integration with its analytic gradient and the
# packing of many spectra into one call are one unit, which the Triton kernel mirrors.
"""1-D continuous piecewise-affine (CPA) diffeomorphisms and the DiTASK singular-value warp, in PyTorch.

DiTASK (Mantri et al., "DiTASK: Multi-Task Fine-Tuning with Diffeomorphic Transformations",
CVPR 2025, arXiv:2502.06029) warps the singular values of every frozen weight with a CPA
diffeomorphism (Freifeld et al., TPAMI 2017) integrated in closed form as in the ``difw`` library
(Martinez et al., ICML 2022) that the official code imports. Specification: docs/ditask.md 2.3, 7.

Public API (all tensors float32 or float64; the CPA itself runs in the input's dtype):

- :func:`cpa_basis` ``(nc, zero_boundary=True) -> (2*nc, d)``: difw's "rref" basis, so θ values are
  interchangeable with the official code's (d = nc-1 with zero boundary, nc+1 without).
- :func:`theta_to_coefficients` ``(theta (L, d), nc) -> (L, 2*nc)``: the per-cell (a_c, b_c) = B·θ.
- :func:`cpa_transform` ``(x (n,), theta (L, d), nc, T=1) -> (L, n)``: φ_θ(x, T) for L transforms.
- :func:`warp_spectrum` ``(s (L, k), theta (L, d), nc) -> (L, k)`` and :func:`warp_spectra` (ragged
  list): the singular-value warp of docs/ditask.md 2.3 (warp the index axis, re-sample linearly).
- :class:`SpectrumPack`: the packed layout of many warps with mixed lengths and cell counts that
  the method (and the fused Triton kernel) evaluates in one call; :func:`warp_packed_torch` is the
  PyTorch reference for it.

Gradients: the integration is an ``autograd.Function`` with the **analytic** gradient of
docs/ditask.md 7.4 (the difw ``derivative_closed_form_trace`` formulas, rewritten in numerically stable
form: ``expm1``/``log1p`` ratios with series near 0, and the exact a → 0 limits where difw drops a
term); it is differentiable in θ (through the coefficients A = B·θ), not in the grid ``x``. The
re-sampling is plain PyTorch (autograd), so gradients also reach the spectrum.

Numerics follow difw: cells are found by ``floor(x·nc)``, crossing points are nudged by
FLT_EPSILON into the next cell, and |v| < FLT_EPSILON counts as a fixed point, in every dtype.
The integrator returns the displacement φ(x) − x, so the identity transform (θ = 0) gives exactly
φ(x) = x and the identity warp reproduces the spectrum bit for bit.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
from torch import nn


#: difw's tolerance (``std::numeric_limits<float>::epsilon()``), used in every dtype.
EPS = float(torch.finfo(torch.float32).eps)
_SERIES = 0.1  # below this |argument| the ratio helpers use their Taylor series


# ----------------------------------------------------------------------------------------------
# Basis
# ----------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=64)
def _basis64(nc: int, zero_boundary: bool) -> torch.Tensor:
    h = 1.0 / nc
    if zero_boundary:
        # Column k-1 (k = 1..nc-1): v_k(x) = x/k on [0, kh], (k+1)h - x on [kh, (k+1)h], 0 beyond:
        # a ramp from the origin peaking at vertex k (height h) and back to 0 at vertex k+1.
        basis = torch.zeros(2 * nc, nc - 1, dtype=torch.float64)
        for k in range(1, nc):
            basis[0:2 * k:2, k - 1] = 1.0 / k
            basis[2 * k, k - 1] = -1.0
            basis[2 * k + 1, k - 1] = (k + 1) * h
        return basis
    # Without the boundary constraint (nc+1 columns): a left-edge hat h - x on cell 0; the ramps
    # k = 1..nc-2 as above; the global line x/nc; a right-edge ramp x - (nc-1)h on the last cell.
    basis = torch.zeros(2 * nc, nc + 1, dtype=torch.float64)
    basis[0, 0], basis[1, 0] = -1.0, h
    for k in range(1, nc - 1):
        basis[0:2 * k:2, k] = 1.0 / k
        basis[2 * k, k] = -1.0
        basis[2 * k + 1, k] = (k + 1) * h
    basis[0::2, nc - 1] = 1.0 / nc
    basis[2 * nc - 2, nc] = 1.0
    basis[2 * nc - 1, nc] = -(nc - 1) * h
    return basis


def cpa_basis(nc: int, zero_boundary: bool = True, dtype: torch.dtype = torch.float32,
              device: torch.device | str | None = None) -> torch.Tensor:
    """The "rref" basis of difw's ``Tessellation`` on [0, 1] (docs/ditask.md 7.5).

    The velocity coefficients of cell c are ``A[2c] = a_c`` (slope) and ``A[2c+1] = b_c``
    (intercept), with ``A = B @ θ``; every column is a continuous piecewise-affine velocity field,
    normalised to max-abs coefficient 1 like difw's rows.

    Args:
        nc: number of equal cells (≥ 2).
        zero_boundary: also force v(0) = v(1) = 0 (DiTASK does).

    Returns:
        ``B`` of shape (2·nc, d) with d = nc − 1 (zero boundary) or nc + 1.
    """
    if int(nc) != nc or nc < 2:
        raise ValueError(f"a CPA tessellation needs at least 2 cells, got nc={nc}")
    return _basis64(int(nc), bool(zero_boundary)).to(dtype=dtype, device=device)


def theta_dim(nc: int, zero_boundary: bool = True) -> int:
    """Number of free parameters d of a CPA velocity field with ``nc`` cells."""
    return nc - 1 if zero_boundary else nc + 1


def theta_to_coefficients(theta: torch.Tensor, nc: int, zero_boundary: bool = True) -> torch.Tensor:
    """θ (L, d) → per-cell coefficients A (L, 2·nc), ``A[l] = B @ θ[l]`` (differentiable)."""
    basis = cpa_basis(nc, zero_boundary, dtype=theta.dtype, device=theta.device)
    if theta.shape[-1] != basis.shape[1]:
        raise ValueError(f"θ has {theta.shape[-1]} parameters; nc={nc} (zero_boundary={zero_boundary}) needs "
                         f"{basis.shape[1]}")
    return theta @ basis.T


# ----------------------------------------------------------------------------------------------
# Stable ratio helpers (shared by the integrator and its gradient)
# ----------------------------------------------------------------------------------------------
def _poly(z: torch.Tensor, coeffs: Sequence[float]) -> torch.Tensor:
    out = torch.full_like(z, coeffs[-1])
    for c in reversed(coeffs[:-1]):
        out = out * z + c
    return out


def _small(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    small = z.abs() < _SERIES
    return small, torch.where(small, torch.ones_like(z), z)


def expm1_ratio(z: torch.Tensor) -> torch.Tensor:
    """E(z) = (e^z − 1)/z, with E(0) = 1."""
    small, zs = _small(z)
    return torch.where(small, _poly(z, [1, 1 / 2, 1 / 6, 1 / 24, 1 / 120, 1 / 720, 1 / 5040]), torch.expm1(zs) / zs)


def expm1_curvature(z: torch.Tensor) -> torch.Tensor:
    """G(z) = (z·e^z − (e^z − 1))/z², with G(0) = 1/2 (the a-derivative of ψ needs it)."""
    small, zs = _small(z)
    direct = (zs * torch.exp(zs) - torch.expm1(zs)) / (zs * zs)
    return torch.where(small, _poly(z, [1 / 2, 1 / 3, 1 / 8, 1 / 30, 1 / 144, 1 / 840, 1 / 5760]), direct)


def log1p_ratio(w: torch.Tensor) -> torch.Tensor:
    """L(w) = log(1 + w)/w, with L(0) = 1 (defined for w > −1)."""
    small, ws = _small(w)
    ws = torch.where(ws > -1, ws, torch.ones_like(ws))  # lanes outside the domain are masked by the caller
    return torch.where(small, _poly(w, [1, -1 / 2, 1 / 3, -1 / 4, 1 / 5, -1 / 6, 1 / 7]), torch.log1p(ws) / ws)


def log1p_curvature(w: torch.Tensor) -> torch.Tensor:
    """M(w) = (w − (1 + w)·log(1 + w))/w², with M(0) = −1/2 (the a-derivative of the hit time)."""
    small, ws = _small(w)
    ws = torch.where(ws > -1, ws, torch.ones_like(ws))
    direct = (ws - (1 + ws) * torch.log1p(ws)) / (ws * ws)
    return torch.where(small, _poly(w, [-1 / 2, 1 / 6, -1 / 12, 1 / 20, -1 / 30, 1 / 42, -1 / 56]), direct)


# ----------------------------------------------------------------------------------------------
# Closed-form integration (docs/ditask.md 7.2-7.3) and its analytic gradient (7.4)
# ----------------------------------------------------------------------------------------------
def _crossing(x, t, c, coeff, base, nc: int):
    """One step of difw's loop for every lane: the coefficients of the current cell and, for the
    lanes that leave it before the remaining time runs out, where and when they cross."""
    a = coeff[base + 2 * c]
    b = coeff[base + 2 * c + 1]
    v = a * x + b
    right = v > 0
    next_cell = c + torch.where(right, 1, -1)
    cf = c.to(x.dtype)
    # Crossing point, nudged into the next cell as difw does.
    xc = torch.where(right, (cf + 1) / nc + EPS, cf / nc - EPS)
    vc = a * xc + b
    moving = v.abs() >= EPS
    v_safe = torch.where(moving, v, torch.ones_like(v))
    dx = xc - x
    w = a * dx / v_safe  # v_c / v = 1 + w
    t_hit = dx / v_safe * log1p_ratio(torch.where(moving, w, torch.zeros_like(w)))
    # difw also refuses a crossing point exactly on the domain's edge; a nudged point never is, and
    # leaving the domain is already refused through the next cell's index.
    crosses = (moving & (next_cell >= 0) & (next_cell < nc) & (vc.abs() >= EPS)
               & (torch.sign(vc) == torch.sign(v)) & (t_hit <= t))
    return a, b, v_safe, xc, dx, w, t_hit, next_cell, crosses


def _integrate(x0: torch.Tensor, base: torch.Tensor, coeff: torch.Tensor, nc: int, T: float):
    """Integrate every lane to time T; returns the final cell's entry point, remaining time and cell."""
    x = x0.clone()
    t = torch.full_like(x0, T)
    c = torch.clamp(torch.floor(x0 * nc), 0, nc - 1).long()
    count = torch.zeros_like(c)
    active = torch.ones_like(x0, dtype=torch.bool)
    # At most nc - 1 crossings can happen; one more attempt finds the final cell.
    for _ in range(nc):
        if not bool(active.any()):
            break
        *_, xc, _, _, t_hit, next_cell, crosses = _crossing(x, t, c, coeff, base, nc)
        crosses &= active
        x = torch.where(crosses, xc, x)
        t = torch.where(crosses, t - t_hit, t)
        c = torch.where(crosses, next_cell, c)
        count += crosses.long()
        active = crosses
    return x, t, c, count


def _final_segment(x, t, c, coeff, base):
    a = coeff[base + 2 * c]
    b = coeff[base + 2 * c + 1]
    z = t * a
    return a, b, z, t * expm1_ratio(z) * (a * x + b)  # ψ(x, t) − x


class _CPAIntegrate(torch.autograd.Function):
    """disp = φ(x0) − x0 for lanes reading their coefficients at ``coeff[base + 2c], [base + 2c + 1]``."""

    @staticmethod
    def forward(ctx, coeff, x0, base, nc, T):
        x, t, c, count = _integrate(x0, base, coeff, nc, T)
        _, _, _, dpsi = _final_segment(x, t, c, coeff, base)
        ctx.save_for_backward(coeff, x0, base, x, t, c, count)
        ctx.nc, ctx.T = nc, T
        return (x - x0) + dpsi

    @staticmethod
    def backward(ctx, grad):
        coeff, x0, base, xm, tm, cm, count = ctx.saved_tensors
        nc, T = ctx.nc, ctx.T
        grad_coeff = torch.zeros_like(coeff)
        g = grad.to(coeff.dtype)
        # Final cell: ∂ψ/∂a = t·e^{ta}·x + b·t²·G(ta), ∂ψ/∂b = t·E(ta).
        a, b, z, _ = _final_segment(xm, tm, cm, coeff, base)
        idx = base + 2 * cm
        grad_coeff.index_add_(0, idx, g * (tm * torch.exp(z) * xm + b * tm * tm * expm1_curvature(z)))
        grad_coeff.index_add_(0, idx + 1, g * tm * expm1_ratio(z))
        # Crossings: φ depends on them through the remaining time, ∂φ/∂θ ∋ −v(φ)·Σ ∂t_hit/∂θ.
        scale = -g * torch.exp(z) * (a * xm + b)
        x = x0.clone()
        t = torch.full_like(x0, T)
        c = torch.clamp(torch.floor(x0 * nc), 0, nc - 1).long()
        # Replay exactly the crossings the forward made (it counted them).
        left = torch.where(scale != 0, count, torch.zeros_like(count))
        for _ in range(nc):
            active = left > 0
            if not bool(active.any()):
                break
            _, _, v, xc, dx, w, t_hit, next_cell, _ = _crossing(x, t, c, coeff, base, nc)
            q = dx / (v * v * (1 + w))
            d_a = q * (dx * log1p_curvature(w) - x)  # exact, also in the a → 0 limit
            zero = torch.zeros_like(scale)
            idx = base + 2 * c
            grad_coeff.index_add_(0, idx, torch.where(active, scale * d_a, zero))
            grad_coeff.index_add_(0, idx + 1, torch.where(active, -scale * q, zero))
            x = torch.where(active, xc, x)
            t = torch.where(active, t - t_hit, t)
            c = torch.where(active, next_cell, c)
            left = left - active.long()
        return grad_coeff, None, None, None, None


def integrate_displacement(coeff: torch.Tensor, x0: torch.Tensor, base: torch.Tensor, nc: int,
                           T: float = 1.0) -> torch.Tensor:
    """φ(x0, T) − x0 for a batch of lanes with their own velocity fields (the low-level entry).

    Args:
        coeff: flat coefficients; lane p reads cell c at ``coeff[base[p] + 2c]`` (slope) and
            ``coeff[base[p] + 2c + 1]`` (intercept). Differentiable (analytic gradient).
        x0: (P,) start points in [0, 1] (not differentiated).
        base: (P,) int64 offsets into ``coeff``.
        nc: cells of every lane's field.
        T: integration time.

    Returns:
        (P,) displacements, in ``coeff``'s dtype.
    """
    return _CPAIntegrate.apply(coeff, x0.detach().to(coeff.dtype), base.long(), int(nc), float(T))


def cpa_transform(x: torch.Tensor, theta: torch.Tensor, nc: int, T: float = 1.0,
                  zero_boundary: bool = True) -> torch.Tensor:
    """Integrate L CPA velocity fields on [0, 1] in closed form: φ_θ(x, T).

    Args:
        x: (n,) points in [0, 1] (the grid; not differentiated).
        theta: (L, d) or (d,) parameters in the :func:`cpa_basis` of ``nc`` cells.
        nc: number of cells.
        T: integration time (DiTASK: 1).
        zero_boundary: the basis's boundary constraint (DiTASK: True).

    Returns:
        (L, n) transformed points (or (n,) for a 1-D ``theta``), differentiable in θ.
    """
    squeeze = theta.ndim == 1
    theta2 = theta.unsqueeze(0) if squeeze else theta
    coeff = theta_to_coefficients(theta2, nc, zero_boundary).reshape(-1)
    n, L = x.numel(), theta2.shape[0]
    x0 = x.detach().reshape(-1).to(theta.dtype).repeat(L)
    base = torch.arange(L, device=theta.device).repeat_interleave(n) * (2 * nc)
    phi = (x0 + integrate_displacement(coeff, x0, base, nc, T)).reshape(L, n)
    return phi[0] if squeeze else phi


# ----------------------------------------------------------------------------------------------
# Singular-value warp (docs/ditask.md 2.3), packed over many spectra
# ----------------------------------------------------------------------------------------------
def resample(s: torch.Tensor, s_base: torch.Tensor, index: torch.Tensor, length: torch.Tensor,
             disp: torch.Tensor) -> torch.Tensor:
    """Re-sample spectra at warped fractional indices (difw's ``interpolate``).

    Point p of a spectrum of length k stored at ``s[s_base[p]:s_base[p]+k]`` has grid position
    i/(k−1) (``index[p] = i``) and moves by ``disp[p]``; its fractional index is
    u = i + (k−1)·disp, and the result is (1−ω)·s_j + ω·s_{j+1} with j = clamp(⌊u⌋, 0, k−1),
    j+1 clamped too, ω = u − j.
    """
    km1 = (length - 1).to(disp.dtype)
    u = index.to(disp.dtype) + km1 * disp
    j0 = torch.clamp(torch.floor(u), min=0)
    j0 = torch.minimum(j0, km1)
    omega = u - j0
    j0 = j0.long()
    j1 = torch.minimum(j0 + 1, length - 1)
    return (1 - omega) * s[s_base + j0] + omega * s[s_base + j1]


class SpectrumPack(nn.Module):
    """The layout of many singular-value warps evaluated in one call.

    Warp ``j`` reads the spectrum ``s[s_offset_j : s_offset_j + k_j]`` (several warps may read the
    same spectrum), uses row ``row_j`` of the θ group with ``cells_j`` cells, and writes its k_j
    outputs at ``out[out_offset_j : ...]``; outputs are laid out in the order the warps are given.
    The coefficients of all groups are packed into one flat vector (see :meth:`coefficients`).

    Args:
        warps: ``(s_offset, length, cells, row)`` per warp.
        zero_boundary: the basis of every group.

    All index tensors are non-persistent buffers, so the pack follows the model's device.
    """

    def __init__(self, warps: Sequence[tuple[int, int, int, int]], zero_boundary: bool = True):
        super().__init__()
        if not warps:
            raise ValueError("a SpectrumPack needs at least one warp")
        self.zero_boundary = zero_boundary
        self.cells = tuple(sorted({int(w[2]) for w in warps}))
        self.rows = {nc: 1 + max(int(w[3]) for w in warps if int(w[2]) == nc) for nc in self.cells}
        # Offsets of each group's coefficients in the flat vector.
        self.coeff_offset, offset = {}, 0
        for nc in self.cells:
            self.coeff_offset[nc] = offset
            offset += self.rows[nc] * 2 * nc
        self.coeff_numel = offset
        self.lengths = [int(w[1]) for w in warps]
        if min(self.lengths) < 2:
            raise ValueError("every spectrum needs at least 2 values")
        out_offsets = [0]
        for k in self.lengths[:-1]:
            out_offsets.append(out_offsets[-1] + k)
        self.numel = out_offsets[-1] + self.lengths[-1]
        self.max_length = max(self.lengths)
        self.max_cells = max(self.cells)
        # Per-warp metadata (the Triton kernel's view).
        meta = [(int(w[0]), int(w[1]), self.coeff_offset[int(w[2])] + int(w[3]) * 2 * int(w[2]), int(w[2]), o)
                for w, o in zip(warps, out_offsets)]
        self.register_buffer("meta", torch.tensor(meta, dtype=torch.int32).reshape(-1, 5), persistent=False)
        # Per-point arrays of each cell-count group (the PyTorch reference's view).
        order = []
        for g, nc in enumerate(self.cells):
            self.register_buffer(f"basis{g}", cpa_basis(nc, zero_boundary, dtype=torch.float64), persistent=False)
            idx, length, s_base, base, out = [], [], [], [], []
            for (s_off, k, a_off, cells, o) in meta:
                if cells != nc:
                    continue
                idx.append(torch.arange(k))
                length.append(torch.full((k,), k))
                s_base.append(torch.full((k,), s_off))
                base.append(torch.full((k,), a_off))
                out.append(torch.arange(o, o + k))
            self.register_buffer(f"index{g}", torch.cat(idx), persistent=False)
            self.register_buffer(f"length{g}", torch.cat(length), persistent=False)
            self.register_buffer(f"s_base{g}", torch.cat(s_base), persistent=False)
            self.register_buffer(f"base{g}", torch.cat(base), persistent=False)
            order.append(torch.cat(out))
        # Position of every output in the concatenation of the groups' results.
        self.register_buffer("gather", torch.argsort(torch.cat(order)), persistent=False)

    @property
    def count(self) -> int:
        return len(self.lengths)

    def coefficients(self, thetas: dict[int, torch.Tensor]) -> torch.Tensor:
        """Flat coefficient vector from ``{cells: θ (rows, d)}`` (differentiable in every θ)."""
        parts = []
        for g, nc in enumerate(self.cells):
            theta = thetas[nc]
            if theta.shape[0] != self.rows[nc]:
                raise ValueError(f"θ group with {nc} cells has {theta.shape[0]} rows, the pack expects {self.rows[nc]}")
            basis = getattr(self, f"basis{g}").to(theta.dtype)
            parts.append((theta @ basis.T).reshape(-1))
        return torch.cat(parts) if len(parts) > 1 else parts[0]

    def grid(self, g: int, dtype: torch.dtype) -> torch.Tensor:
        index, length = getattr(self, f"index{g}"), getattr(self, f"length{g}")
        return index.to(dtype) / (length - 1).to(dtype)


def warp_packed_torch(pack: SpectrumPack, s: torch.Tensor, coeff: torch.Tensor, T: float = 1.0,
                      residual: bool = True) -> torch.Tensor:
    """The PyTorch reference of the packed warp.

    Args:
        pack: the layout.
        s: flat spectra (any length covering every warp's range).
        coeff: flat coefficients from :meth:`SpectrumPack.coefficients`.
        residual: return s' − s (the change of every singular value) instead of s'.

    Returns:
        (pack.numel,) warped spectra (or their change), differentiable in ``coeff`` and ``s``.
    """
    outs = []
    for g, nc in enumerate(pack.cells):
        index, length = getattr(pack, f"index{g}"), getattr(pack, f"length{g}")
        s_base, base = getattr(pack, f"s_base{g}"), getattr(pack, f"base{g}")
        disp = integrate_displacement(coeff, pack.grid(g, coeff.dtype), base, nc, T)
        warped = resample(s, s_base, index, length, disp.to(s.dtype))
        outs.append(warped - s[s_base + index] if residual else warped)
    return torch.cat(outs).index_select(0, pack.gather) if len(outs) > 1 else outs[0].index_select(0, pack.gather)


def warp_spectra(spectra: Sequence[torch.Tensor], theta: torch.Tensor, nc: int, T: float = 1.0,
                 zero_boundary: bool = True) -> list[torch.Tensor]:
    """Warp several spectra of different lengths, spectrum l with ``theta[l]`` (docs/ditask.md 2.3).

    Args:
        spectra: L 1-D tensors (descending singular values; any lengths ≥ 2).
        theta: (L, d).
        nc: cells of every transform.

    Returns:
        L tensors s'_l of the same lengths: s'_i = (1−ω)·s_j + ω·s_{j+1} at the fractional index
        u = (k−1)·φ(i/(k−1)); differentiable in θ and in the spectra.
    """
    if len(spectra) != theta.shape[0]:
        raise ValueError(f"{len(spectra)} spectra but {theta.shape[0]} rows of θ")
    offsets, warps, offset = [], [], 0
    for row, sv in enumerate(spectra):
        warps.append((offset, sv.numel(), nc, row))
        offsets.append(offset)
        offset += sv.numel()
    pack = SpectrumPack(warps, zero_boundary).to(theta.device)
    flat = torch.cat([sv.reshape(-1) for sv in spectra])
    out = warp_packed_torch(pack, flat, pack.coefficients({nc: theta}), T, residual=False)
    return list(torch.split(out, [sv.numel() for sv in spectra]))


def warp_spectrum(s: torch.Tensor, theta: torch.Tensor, nc: int, T: float = 1.0,
                  zero_boundary: bool = True) -> torch.Tensor:
    """Warp L spectra of one length k: s (L, k) or (k,), θ (L, d) or (d,) → (L, k) (or (k,))."""
    squeeze = s.ndim == 1 and theta.ndim == 1
    s2 = s.reshape(1, -1) if s.ndim == 1 else s
    theta2 = theta.reshape(1, -1) if theta.ndim == 1 else theta
    if s2.shape[0] == 1 and theta2.shape[0] > 1:
        s2 = s2.expand(theta2.shape[0], -1)
    out = torch.stack(warp_spectra(list(s2), theta2, nc, T, zero_boundary))
    return out[0] if squeeze else out
