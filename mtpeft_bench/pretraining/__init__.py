"""Pretraining of mtbench's built-in Swin backbones (``mtbench pretrain``).

Objective, on the procedural corpus of :mod:`mtpeft_bench.pretraining.corpus` (disjoint from
``synth``), none of whose targets is one of the benchmark's tasks:

- **Albedo** (intrinsic-image decomposition): the benchmark's own decoder head
  (:class:`~mtpeft_bench.model.heads.HRNetHead`) on the encoder's four features predicts the surfaces'
  colours without shading and shadows (L1, all pixels, normalised like the input); telling
  texture from light needs surface orientation and occlusion, which the dense tasks use too.
- **Scene properties**: a linear head on the average-pooled last stage predicts which primitive
  kinds and object families the image holds (binary cross-entropy), and the number of objects,
  the palette and the sun position (cross-entropy); weighted by ``label_weight``.
- **Masked-image modelling** (Xie et al., "SimMIM: A Simple Framework for Masked Image Modeling",
  CVPR 2022, https://arxiv.org/abs/2111.09886), off by default (``mask_ratio`` 0): a share of
  ``mask_patch``-px squares is replaced by a learnt mask token after the patch embedding and a
  one-layer head (1x1 conv + pixel shuffle) predicts their pixels from the last stage (L1 on the
  masked pixels). It is off because a first pilot (MIM + labels, 200 steps) gave frozen features
  that fitted ``synth`` worse than a random initialisation under decoder-only training.

Determinism: the model is initialised from ``seed``; every step draws its batch, flips and masks
from ``numpy.random.default_rng([seed, step])``; the LR is a function of the step; torch runs
with deterministic algorithms on ``threads`` CPU threads; there is no dropout or drop-path.
Resuming from the checkpoint (model, optimizer state, step) therefore continues exactly where an
uninterrupted run would be.

Files, for ``--output DIR/NAME.safetensors``: ``NAME.safetensors`` (the backbone's state dict, the
format ``--weights PATH`` and ``--weights builtin`` load), ``NAME.json`` (configuration, command,
loss history, time), and the checkpoint ``NAME.ckpt/`` (``state.safetensors`` + ``state.json``,
written atomically every ``checkpoint_every`` steps).

Modules (each depends only on those above it, and on the core package; the files this produces ship
in ``mtpeft_bench/weights/`` and are found by :mod:`mtpeft_bench.model.builtin_weights`):

- :mod:`~mtpeft_bench.pretraining.corpus`: the procedural outdoor corpus (drawn with the ``synth`` renderer);
- :mod:`~mtpeft_bench.pretraining.config`: :class:`~mtpeft_bench.pretraining.config.PretrainConfig`;
- :mod:`~mtpeft_bench.pretraining.model`: the backbone with the pretraining heads;
- :mod:`~mtpeft_bench.pretraining.batches`: the deterministic batches of each step;
- :mod:`~mtpeft_bench.pretraining.losses`: the objective;
- :mod:`~mtpeft_bench.pretraining.checkpoint`: resumable checkpoints and the exported backbone;
- :mod:`~mtpeft_bench.pretraining.loop`: :func:`~mtpeft_bench.pretraining.loop.pretrain`, the run;
- :mod:`~mtpeft_bench.pretraining.card`: the model card's entries, evidence tables and plots
  (``python -m mtpeft_bench.pretraining.card``).

The ``mtbench pretrain`` command lives with the other commands of the CLI.
"""
