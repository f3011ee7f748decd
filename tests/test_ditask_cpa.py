"""The CPA core of DiTASK against independent implementations (docs/ditask.md 2.3, 7)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mtpeft_bench.methods.ditask.cpa import (
    SpectrumPack,
    cpa_basis,
    cpa_transform,
    theta_to_coefficients,
    warp_packed_torch,
    warp_spectra,
    warp_spectrum,
)


F32_EPS = float(np.finfo(np.float32).eps)


def constraint_matrix(nc: int, zero_boundary: bool) -> np.ndarray:
    """Continuity at the nc-1 interior vertices (and v(0) = v(1) = 0), on (a_0, b_0, ..., a_{nc-1}, b_{nc-1})."""
    rows = []
    for v in range(1, nc):
        x = v / nc
        r = np.zeros(2 * nc)
        r[2 * (v - 1):2 * v + 2] = [x, 1, -x, -1]
        rows.append(r)
    if zero_boundary:
        r = np.zeros(2 * nc)
        r[1] = 1
        rows.append(r)
        r = np.zeros(2 * nc)
        r[-2:] = [1, 1]
        rows.append(r)
    return np.array(rows)


def velocity(x: np.ndarray, coeff: np.ndarray, nc: int) -> np.ndarray:
    c = np.clip(np.floor(x * nc), 0, nc - 1).astype(int)
    return coeff[2 * c] * x + coeff[2 * c + 1]


def rk4(x: np.ndarray, coeff: np.ndarray, nc: int, T: float = 1.0, steps: int = 1000) -> np.ndarray:
    """Independent numerical integration of dx/dt = v(x)."""
    dt = T / steps
    y = x.astype(np.float64).copy()
    for _ in range(steps):
        k1 = velocity(y, coeff, nc)
        k2 = velocity(y + dt / 2 * k1, coeff, nc)
        k3 = velocity(y + dt / 2 * k2, coeff, nc)
        k4 = velocity(y + dt * k3, coeff, nc)
        y = y + dt / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    return y


def closed_form_scalar(x: float, coeff: np.ndarray, nc: int, T: float = 1.0) -> tuple[float, int]:
    """An independent scalar transcription of difw's closed-form integration (docs/ditask.md 7.2-7.3).

    Returns φ(x) and the number of cells crossed.
    """
    c = min(max(int(math.floor(x * nc)), 0), nc - 1)
    t, crossings = T, 0
    while True:
        a, b = coeff[2 * c], coeff[2 * c + 1]
        psi = x + t * b if abs(a) < F32_EPS else math.exp(t * a) * x + (b / a) * (math.exp(t * a) - 1)
        v = a * x + b
        if abs(v) < F32_EPS:
            return psi, crossings
        cc = c + (1 if v > 0 else -1)
        if cc < 0 or cc >= nc:
            return psi, crossings
        xc = (c + 1) / nc + F32_EPS if v > 0 else c / nc - F32_EPS
        vc = a * xc + b
        if abs(vc) < F32_EPS or (vc > 0) != (v > 0):
            return psi, crossings
        t_hit = (xc - x) / b if abs(a) < F32_EPS else math.log(vc / v) / a
        if t_hit > t:
            return psi, crossings
        x, c, t, crossings = xc, cc, t - t_hit, crossings + 1


def random_theta(rows: int, d: int, scale: float, seed: int, dtype=torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return ((torch.rand(rows, d, generator=g, dtype=dtype) * 2 - 1) * scale)


# -- basis -------------------------------------------------------------------------------------
@pytest.mark.parametrize("nc", [2, 4, 8, 64])
@pytest.mark.parametrize("zero_boundary", [True, False])
def test_basis_spans_the_null_space_of_the_constraints(nc, zero_boundary):
    basis = cpa_basis(nc, zero_boundary, dtype=torch.float64).numpy()
    d = nc - 1 if zero_boundary else nc + 1
    assert basis.shape == (2 * nc, d)
    L = constraint_matrix(nc, zero_boundary)
    assert np.abs(L @ basis).max() < 1e-12
    # Full column rank and the null space's dimension: the columns span all of it.
    assert np.linalg.matrix_rank(basis) == d
    assert 2 * nc - np.linalg.matrix_rank(L) == d


def test_zero_boundary_basis_is_difws_rref_ramps():
    # docs/ditask.md 7.5: column k is x/k on [0, kh], (k+1)h - x on [kh, (k+1)h], 0 beyond.
    nc = 8
    h = 1 / nc
    basis = cpa_basis(nc, dtype=torch.float64).numpy()
    xs = np.linspace(0, 1, 1001)
    for k in range(1, nc):
        expected = np.where(xs <= k * h, xs / k, np.where(xs <= (k + 1) * h, (k + 1) * h - xs, 0.0))
        np.testing.assert_allclose(velocity(xs, basis[:, k - 1], nc), expected, atol=1e-12)
        assert np.abs(basis[:, k - 1]).max() == 1.0  # difw normalises every column to max-abs 1


# -- integration -------------------------------------------------------------------------------
@pytest.mark.parametrize("nc,scale", [(4, 2.0), (8, 3.0), (64, 0.5), (64, 2.0)])
def test_cpa_transform_matches_rk4(nc, scale):
    x = torch.linspace(0, 1, 67, dtype=torch.float64)
    theta = random_theta(3, nc - 1, scale, seed=nc)
    phi = cpa_transform(x, theta, nc)
    coeff = theta_to_coefficients(theta, nc).numpy()
    for row in range(3):
        np.testing.assert_allclose(phi[row].numpy(), rk4(x.numpy(), coeff[row], nc), atol=1e-5, rtol=0)


@pytest.mark.parametrize("nc,scale", [(4, 2.0), (8, 3.0), (64, 1.0)])
def test_cpa_transform_matches_scalar_closed_form(nc, scale):
    x = torch.linspace(0, 1, 53, dtype=torch.float64)
    theta = random_theta(2, nc - 1, scale, seed=10 + nc)
    phi = cpa_transform(x, theta, nc)
    coeff = theta_to_coefficients(theta, nc).numpy()
    crossings = 0
    for row in range(2):
        for i, xi in enumerate(x.tolist()):
            want, n = closed_form_scalar(xi, coeff[row], nc)
            crossings += n
            assert abs(phi[row, i].item() - want) < 1e-5
    assert crossings > 10  # the test exercises the cell-crossing path


def test_cpa_transform_float32_matches_float64():
    x = torch.linspace(0, 1, 97, dtype=torch.float64)
    theta = random_theta(4, 63, 1.0, seed=3)
    phi64 = cpa_transform(x, theta, 64)
    phi32 = cpa_transform(x.float(), theta.float(), 64)
    assert (phi32.double() - phi64).abs().max() < 1e-5


@pytest.mark.parametrize("nc", [4, 16])
def test_cpa_transform_without_zero_boundary_matches_rk4(nc):
    x = torch.linspace(0.05, 0.95, 31, dtype=torch.float64)
    theta = random_theta(2, nc + 1, 0.3, seed=5)
    phi = cpa_transform(x, theta, nc, zero_boundary=False)
    coeff = theta_to_coefficients(theta, nc, zero_boundary=False).numpy()
    for row in range(2):
        # Only points whose trajectory stays inside [0, 1] are defined the same way by both.
        want = rk4(x.numpy(), coeff[row], nc)
        inside = (want > 0) & (want < 1)
        np.testing.assert_allclose(phi[row].numpy()[inside], want[inside], atol=1e-5)


@pytest.mark.parametrize("nc,scale", [(4, 2.0), (8, 3.0), (64, 1.0)])
def test_cpa_transform_is_monotone_with_fixed_endpoints(nc, scale):
    x = torch.linspace(0, 1, 200, dtype=torch.float64)
    phi = cpa_transform(x, random_theta(5, nc - 1, scale, seed=7), nc)
    assert (phi[:, 1:] > phi[:, :-1]).all()
    assert torch.equal(phi[:, 0], torch.zeros(5, dtype=torch.float64))
    assert torch.equal(phi[:, -1], torch.ones(5, dtype=torch.float64))


def test_identity_transform_is_exact():
    x = torch.rand(50)
    assert torch.equal(cpa_transform(x, torch.zeros(2, 7), 8), x.expand(2, -1))


@pytest.mark.parametrize("nc,scale", [(4, 2.0), (8, 3.0), (64, 1.0), (8, 1e-7)])
def test_gradient_matches_finite_differences(nc, scale):
    x = torch.linspace(0, 1, 41, dtype=torch.float64)
    theta = random_theta(2, nc - 1, scale, seed=11 + nc).requires_grad_()
    weights = torch.randn(2, 41, dtype=torch.float64, generator=torch.Generator().manual_seed(0))

    def loss(th):
        return (cpa_transform(x, th, nc) * weights).sum()

    (grad,) = torch.autograd.grad(loss(theta), theta)
    fd = torch.zeros_like(theta)
    h = 1e-6
    with torch.no_grad():
        for i in range(theta.shape[0]):
            for j in range(theta.shape[1]):
                e = torch.zeros_like(theta)
                e[i, j] = h
                fd[i, j] = (loss(theta + e) - loss(theta - e)) / (2 * h)
    torch.testing.assert_close(grad, fd, atol=1e-6, rtol=1e-5)


# -- singular-value warp -----------------------------------------------------------------------
def difw_resample(s: np.ndarray, phi: np.ndarray) -> np.ndarray:
    """docs/ditask.md 2.3 step 3, written from the spec with numpy."""
    k = len(s)
    u = phi * (k - 1)
    j0 = np.clip(np.floor(u).astype(int), 0, k - 1)
    j1 = np.clip(j0 + 1, 0, k - 1)
    w = u - j0
    return (1 - w) * s[j0] + w * s[j1]


def spectrum(k: int, seed: int, dtype=torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.sort(torch.rand(k, generator=g, dtype=dtype) * 5 + 0.1, descending=True).values


def test_warp_is_resampling_at_the_transformed_grid():
    k, nc = 96, 64
    s = spectrum(k, 0)
    theta = random_theta(3, nc - 1, 1.0, seed=1)
    warped = warp_spectrum(s, theta, nc)
    phi = cpa_transform(torch.linspace(0, 1, k, dtype=torch.float64), theta, nc)
    for row in range(3):
        np.testing.assert_allclose(warped[row].numpy(), difw_resample(s.numpy(), phi[row].numpy()), atol=1e-9)


@pytest.mark.parametrize("nc,scale", [(64, 0.13), (4, 0.58), (8, 3.0)])
def test_warp_keeps_extremes_and_order(nc, scale):
    s = spectrum(192, 2)
    warped = warp_spectrum(s, random_theta(4, nc - 1, scale, seed=3), nc)
    assert torch.equal(warped[:, 0], s[0].expand(4))  # largest singular value unchanged
    assert torch.equal(warped[:, -1], s[-1].expand(4))  # smallest unchanged
    assert (warped[:, 1:] <= warped[:, :-1] + 1e-12).all()  # still sorted
    assert (warped <= s[0]).all() and (warped >= s[-1]).all()
    assert not torch.allclose(warped, s.expand(4, -1))  # and it did change


def test_identity_warp_is_exact_in_float32():
    s = spectrum(768, 4, dtype=torch.float32)
    assert torch.equal(warp_spectrum(s, torch.zeros(63), 64), s)


def test_ragged_warp_equals_one_by_one():
    lengths = [96, 5, 192, 17]
    spectra = [spectrum(k, i) for i, k in enumerate(lengths)]
    theta = random_theta(4, 7, 2.0, seed=9).requires_grad_()
    out = warp_spectra(spectra, theta, 8)
    for row, sv in enumerate(spectra):
        torch.testing.assert_close(out[row], warp_spectrum(sv, theta[row], 8), rtol=0, atol=1e-12)
    # Gradients flow to every row.
    (grad,) = torch.autograd.grad(sum(o.sum() for o in out), theta)
    assert (grad.abs().sum(dim=1) > 0).all()


def test_packed_warp_mixes_cell_counts_and_shares_spectra():
    s = torch.cat([spectrum(9, 0, torch.float32), spectrum(6, 1, torch.float32)])
    warps = [(0, 9, 4, 0), (9, 6, 8, 0), (0, 9, 8, 1), (9, 6, 4, 1)]
    pack = SpectrumPack(warps)
    thetas = {4: random_theta(2, 3, 1.0, 0, torch.float32), 8: random_theta(2, 7, 1.0, 1, torch.float32)}
    out = warp_packed_torch(pack, s, pack.coefficients(thetas), residual=False)
    assert out.shape == (30,)
    expected = torch.cat([
        warp_spectrum(s[:9], thetas[4][0], 4), warp_spectrum(s[9:], thetas[8][0], 8),
        warp_spectrum(s[:9], thetas[8][1], 8), warp_spectrum(s[9:], thetas[4][1], 4)])
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)
    delta = warp_packed_torch(pack, s, pack.coefficients(thetas), residual=True)
    torch.testing.assert_close(delta, expected - torch.cat([s[:9], s[9:], s[:9], s[9:]]), rtol=0, atol=1e-6)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="at least 2 cells"):
        cpa_basis(1)
    with pytest.raises(ValueError, match="needs 7"):
        cpa_transform(torch.rand(5), torch.zeros(2, 6), 8)
    with pytest.raises(ValueError, match="at least 2 values"):
        SpectrumPack([(0, 1, 4, 0)])
