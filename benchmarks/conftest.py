"""Settings of the benchmarks (not part of the default test run: ``python -m pytest benchmarks``).

On a CPU the training-step benchmarks use Swin-T at 224 px and batch 8; on CUDA, 448 px, batch 32
and AMP (the paper's setting). ``MTBENCH_BENCH_ROUNDS`` sets the timed rounds (default 3 on a CPU,
10 on a GPU).
"""

from __future__ import annotations

import os

import pytest
import torch


os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.fixture(scope="session")
def setting(device) -> dict:
    cuda = device.type == "cuda"
    rounds = int(os.environ.get("MTBENCH_BENCH_ROUNDS", 10 if cuda else 3))
    return {"image": 448 if cuda else 224, "batch": 32 if cuda else 8, "amp": cuda, "rounds": rounds}
