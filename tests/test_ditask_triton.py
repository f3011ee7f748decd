"""The fused Triton kernel against the PyTorch reference, forward and backward.

Without a GPU the kernels run in Triton's interpreter (TRITON_INTERPRET=1, set before the kernel
module is imported) on tiny ragged cases; the ``gpu`` tests run the real kernels on Swin-T sizes.
"""

from __future__ import annotations

import importlib
import os

import pytest
import torch

from mtpeft_bench.methods.ditask.cpa import SpectrumPack, warp_packed_torch


CUDA = torch.cuda.is_available()
if not CUDA:
    os.environ["TRITON_INTERPRET"] = "1"  # read when the kernels are decorated and launched

triton = pytest.importorskip("triton")


@pytest.fixture(scope="module")
def kernels():
    module = importlib.import_module("mtpeft_bench.methods.ditask.triton_kernel")
    if not CUDA and type(module._warp_fwd).__name__ != "InterpretedFunction":
        module = importlib.reload(module)  # imported earlier without the interpreter
    return module


@pytest.fixture(autouse=True)
def _interpreter(monkeypatch):
    if not CUDA:
        monkeypatch.setenv("TRITON_INTERPRET", "1")


DEVICE = "cuda" if CUDA else "cpu"


def ragged_case(lengths, warps, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    s = torch.cat([torch.sort(torch.rand(k, generator=g) * 4 + 0.1, descending=True).values for k in lengths])
    pack = SpectrumPack(warps).to(DEVICE)
    thetas = {nc: ((torch.rand(rows, nc - 1, generator=g) * 2 - 1) * scale).to(DEVICE).requires_grad_()
              for nc, rows in pack.rows.items()}
    return s.to(DEVICE), pack, thetas


def compare(kernels, s, pack, thetas, residual=True, atol=2e-6, grad_tol=2e-5):
    ref = warp_packed_torch(pack, s, pack.coefficients(thetas), residual=residual)
    out = kernels.warp_packed_triton(pack, s, pack.coefficients(thetas), residual=residual)
    torch.testing.assert_close(out, ref, atol=atol, rtol=1e-5)
    weights = torch.randn(ref.shape, generator=torch.Generator().manual_seed(1)).to(DEVICE)
    keys = sorted(thetas)
    g_ref = torch.autograd.grad((ref * weights).sum(), [thetas[k] for k in keys])
    g_out = torch.autograd.grad((out * weights).sum(), [thetas[k] for k in keys])
    for a, b in zip(g_out, g_ref):
        torch.testing.assert_close(a, b, atol=grad_tol, rtol=1e-4)
    return ref


# Spectra of lengths 5, 9, 17, 6 at offsets 0, 5, 14, 31; a warp is (s_offset, length, cells, θ row).
SMALL = ([5, 9, 17, 6], [(0, 5, 4, 0), (5, 9, 8, 0), (14, 17, 4, 1), (31, 6, 8, 1), (14, 17, 8, 2)])


@pytest.mark.parametrize("scale", [0.3, 2.0])
@pytest.mark.parametrize("residual", [True, False])
def test_kernel_matches_reference_on_ragged_mixed_cells(kernels, scale, residual):
    s, pack, thetas = ragged_case(*SMALL, scale=scale)
    ref = compare(kernels, s, pack, thetas, residual=residual)
    assert ref.abs().max() > 0


def test_kernel_handles_spectra_longer_than_a_block(kernels):
    k = kernels.BLOCK + 44  # two programs along the points of one warp
    s, pack, thetas = ragged_case([k, 7], [(0, k, 4, 0), (k, 7, 4, 1), (0, k, 16, 0)], scale=1.5)
    compare(kernels, s, pack, thetas)


def test_identity_warp_is_exact_in_the_kernel(kernels):
    s, pack, thetas = ragged_case(*SMALL)
    zeros = {nc: torch.zeros_like(t) for nc, t in thetas.items()}
    assert not kernels.warp_packed_triton(pack, s, pack.coefficients(zeros)).any()


def test_kernel_refuses_spectra_that_need_a_gradient(kernels):
    s, pack, thetas = ragged_case(*SMALL)
    with pytest.raises(ValueError, match="does not differentiate"):
        kernels.warp_packed_triton(pack, s.requires_grad_(), pack.coefficients(thetas))


@pytest.mark.slow  # about 30 s in the interpreter (54 warps of the micro Swin, forward and backward)
def test_method_with_the_kernel_matches_the_reference(kernels):
    from helpers import micro_backbone
    from mtpeft_bench.registry import get_method
    from mtpeft_bench.tasks.base import config_from_mapping

    cls = get_method("ditask")
    results = {}
    for kernel in ("torch", "triton"):
        torch.manual_seed(0)
        backbone = micro_backbone()
        torch.manual_seed(1)
        encoder = cls().build(backbone, ("a", "b"), config_from_mapping(cls.Config, {"kernel": kernel, "dropout": 0.0},
                                                                         "ditask")).to(DEVICE)
        x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2)).to(DEVICE)
        feats = encoder(x)
        sum(f.square().mean() for t in ("a", "b") for f in feats[t]).backward()
        results[kernel] = (feats, {n: p.grad for n, p in encoder.named_parameters() if "ditask_" in n
                                   and p.grad is not None}, encoder.method_info()["kernel"])
    assert results["triton"][2] == "triton" and results["torch"][2] == "torch"
    for t in ("a", "b"):
        for a, b in zip(results["triton"][0][t], results["torch"][0][t]):
            torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    assert results["triton"][1].keys() == results["torch"][1].keys()
    for n, g in results["torch"][1].items():
        torch.testing.assert_close(results["triton"][1][n], g, atol=1e-4, rtol=1e-3)


@pytest.mark.gpu
def test_kernel_on_swin_t_sized_pack_matches_reference(kernels):
    if not CUDA:
        pytest.skip("needs CUDA")
    # Swin-T layout: per block q, k, v, proj (C×C), fc1, fc2 (k = C), shared 64 cells; plus 4 tasks
    # on proj/fc1/fc2 of each stage's last block with 4 cells.
    warps, lengths, offset, shared_row, task_row = [], [], 0, 0, 0
    for c, depth in zip((96, 192, 384, 768), (2, 2, 6, 2)):
        for block in range(depth):
            for role in range(4):
                starts = []
                for _ in range(3 if role == 0 else 1):
                    lengths.append(c)
                    starts.append(offset)
                    warps.append((offset, c, 64, shared_row))
                    offset += c
                shared_row += 1
                if block == depth - 1 and role > 0:
                    for _ in range(4):
                        warps.append((starts[0], c, 4, task_row))
                        task_row += 1
    s, pack, thetas = ragged_case(lengths, warps, scale=0.13)
    compare(kernels, s, pack, thetas, atol=1e-5, grad_tol=1e-3)


@pytest.mark.gpu
def test_method_picks_the_kernel_on_cuda():
    if not CUDA:
        pytest.skip("needs CUDA")
    from helpers import micro_backbone
    from mtpeft_bench.registry import get_method

    cls = get_method("ditask")
    encoder = cls().build(micro_backbone(), ("a",), cls.Config()).cuda()
    with torch.no_grad():
        encoder(torch.randn(1, 3, 64, 64, device="cuda"))
    assert encoder.method_info()["kernel"] == "triton"
