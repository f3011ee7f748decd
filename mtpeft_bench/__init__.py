"""mtbench: multi-task parameter-efficient fine-tuning of vision transformers on dense prediction.

The public Python API (imported lazily, so ``import mtpeft_bench`` does not import torch):

- :func:`run` — train and evaluate one method on one dataset, return the result record (a thin
  wrapper of :func:`mtpeft_bench.running.pipeline.run`, which returns a ``RunResult``).
- :func:`load_results` — every result JSON under a folder as a ``pandas.DataFrame``;
  :func:`load_history` — their per-epoch training curves, one row per run and epoch.
- :data:`method_registry`, :data:`dataset_registry`, :func:`register_method`,
  :func:`register_dataset`, :func:`get_method`, :func:`get_dataset`.
- :mod:`mtpeft_bench.metrics` — the streaming meters and :func:`delta_m`.
"""

from __future__ import annotations

import importlib
from typing import Any


__version__ = "0.1.0"

_LAZY = {
    "RunConfig": "mtpeft_bench.config",
    "load_results": "mtpeft_bench.results",
    "load_history": "mtpeft_bench.results",
    "delta_m": "mtpeft_bench.report.delta",
    "method_registry": "mtpeft_bench.registry",
    "dataset_registry": "mtpeft_bench.registry",
    "register_method": "mtpeft_bench.registry",
    "register_dataset": "mtpeft_bench.registry",
    "get_method": "mtpeft_bench.registry",
    "get_dataset": "mtpeft_bench.registry",
    "UserError": "mtpeft_bench.errors",
}

__all__ = ["__version__", "run", *_LAZY]


def run(cfg: Any = None, /, *, resume: bool | str | None = None, **options: Any) -> dict[str, Any]:
    """Train and evaluate one method on one dataset; write the result record and return it.

    A thin wrapper of :func:`mtpeft_bench.running.pipeline.run` (same arguments) that returns its
    ``RunResult.record``: the record written, the earlier record when ``resume=True`` found the
    configuration done, ``{}`` on processes other than rank 0. Nothing is printed; progress goes
    to the ``mtpeft_bench`` logger at INFO.
    """
    from mtpeft_bench.running.pipeline import run as run_pipeline

    return run_pipeline(cfg, resume=resume, **options).record


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'mtpeft_bench' has no attribute {name!r}")
