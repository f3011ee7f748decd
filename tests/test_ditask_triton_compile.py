"""The fused kernels compile for a real GPU (sm_90, down to a cubin), checked without a GPU.

The interpreter tests check what the kernels compute; this one checks that Triton's compiler
accepts them for CUDA (types of loop-carried values, masks, atomics), in a subprocess so that the
kernels are not the interpreter's.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest


pytest.importorskip("triton")

SCRIPT = textwrap.dedent("""
    import os, sys
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    if "nvidia" not in triton.backends.backends:
        print("NO_BACKEND"); sys.exit(0)
    from mtpeft_bench.methods.ditask import triton_kernel as tk
    fwd = {"s_ptr": "*fp32", "coeff_ptr": "*fp32", "meta_ptr": "*i32", "out_ptr": "*fp32", "T": "fp32",
           "eps": "fp32", "RESIDUAL": "constexpr", "BLOCK": "constexpr"}
    bwd = {"grad_ptr": "*fp32", "s_ptr": "*fp32", "coeff_ptr": "*fp32", "meta_ptr": "*i32", "gcoeff_ptr": "*fp32",
           "T": "fp32", "eps": "fp32", "BLOCK": "constexpr"}
    cases = [(tk._warp_fwd, fwd, {"RESIDUAL": True, "BLOCK": tk.BLOCK}),
             (tk._warp_fwd, fwd, {"RESIDUAL": False, "BLOCK": tk.BLOCK}),
             (tk._warp_bwd, bwd, {"BLOCK": tk.BLOCK})]
    for fn, sig, const in cases:
        names = list(sig)
        src = ASTSource(fn=fn, signature=sig, constexprs={(names.index(k),): v for k, v in const.items()})
        kernel = triton.compile(src, target=GPUTarget("cuda", 90, 32))
        assert "cubin" in kernel.asm, kernel.asm.keys()
        print("compiled", fn.__name__, const)
""")


def test_kernels_compile_for_sm90(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path / "triton-cache")  # compile for real, not from a cache
    proc = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    if "NO_BACKEND" in proc.stdout:
        pytest.skip("this Triton build has no CUDA backend")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("compiled") == 3
