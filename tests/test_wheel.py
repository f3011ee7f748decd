"""The built wheel is a complete benchmark: installed without the source tree, it lists every plugin,
counts DiTASK's parameters and trains a DiTASK step (slow; CI runs it).

Every other test runs from an editable install, which finds modules in the source tree whether or
not the packaging declares them; only a wheel shows a sub-package or data file left out.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _run(args, cwd, env, timeout=600):
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(map(str, args))} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


@pytest.mark.slow
def test_wheel_installs_a_working_benchmark(tmp_path):
    wheels = tmp_path / "wheels"
    _run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(wheels), str(REPO)], tmp_path,
         dict(os.environ))
    (wheel,) = wheels.glob("mtpeft_bench-*.whl")

    # A fresh environment that sees this interpreter's dependencies (torch, timm, ...) through a path
    # line, but not the source tree: a .pth in an added directory is not executed, so the editable
    # install of the tests' own environment stays invisible.
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], tmp_path, dict(os.environ))
    python = venv / "bin" / "python"
    site = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp_path,
                     dict(os.environ)).strip())
    (site / "shared_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-deps",
          "--no-index", str(wheel)], tmp_path, dict(os.environ))

    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "MTBENCH_CACHE": str(tmp_path / "cache"), "PYTHONNOUSERSITE": "1"}
    env.pop("PYTHONPATH", None)
    located = _run([str(python), "-c", "import mtpeft_bench, mtpeft_bench.methods.ditask as d; "
                                       "print(mtpeft_bench.__file__); print(d.__file__)"], work, env)
    assert str(REPO) not in located and str(site) in located

    mtbench = [str(venv / "bin" / "mtbench")]
    listing = _run(mtbench + ["ls"], work, env)
    for name in ("ditask", "mtlora", "lora", "full", "decoder_only", "synth", "pascal_mt", "nyud"):
        assert name in listing
    params = _run(mtbench + ["params", "--method", "ditask", "--dataset", "pascal_mt"], work, env)
    assert "1,602,858" in params  # DiTASK's encoder parameters on Swin-T with PASCAL's tasks
    out = _run(mtbench + ["run", "--method", "ditask", "--dataset", "synth", "--preset", "smoke",
                          "--tasks", "semseg,depth", "--set", "data.num_train=8", "--set", "data.num_val=2",
                          "--set", "batch_size=4", "--epochs", "1", "--no-progress", "--out", str(tmp_path / "out")],
               work, env)
    assert "result:" in out
    assert list((tmp_path / "out").rglob("*.json"))
