"""Training: the one optimisation and evaluation loop every method runs through.

Read top to bottom::

    optim.py        AdamW, weight-decay groups, the warm-up + cosine Schedule (docs/protocol.md 4.4)
    device.py       a batch onto the device; autocast (AMP on CUDA)
    trainer.py      Trainer: one step (loss, clipping, scaler, non-finite check), one epoch
    evaluation.py   evaluate(): streaming meters over the validation split
    fit.py          FitLoop: the epochs, periodic evaluation, checkpoints, how a run ends -> FitResult
    checkpoint.py   the checkpoint file: safetensors + JSON, RNG states, exact restore
    failures.py     Ctrl-C/SIGTERM, divergence, out of memory: RunCancelled, RunFailed
    distributed.py  several processes (torchrun): DistContext, shards, per-sample seeds, DDP

``distributed.py`` lives here, not in ``running/``, because the fit loop needs it (epochs of the
shard samplers, reductions of losses and meters) and the training objects are what it wraps
(DDP, cross-rank BatchNorm): ``running`` depends on ``train``, never the other way round. The fit
loop saves through a :class:`~mtpeft_bench.train.fit.RunRecorder` (the run session in
``running/session.py``) for the same reason.

The names below are the package's public API (:func:`autocast` is also what ``bench`` uses).
"""

from mtpeft_bench.train.device import autocast
from mtpeft_bench.train.evaluation import evaluate
from mtpeft_bench.train.optim import Schedule, make_optimizer
from mtpeft_bench.train.trainer import Trainer, TrainingDiverged

__all__ = ["autocast", "evaluate", "Schedule", "make_optimizer", "Trainer", "TrainingDiverged"]
