"""The network a run trains: backbone, multi-task encoder, decoder heads.

- :mod:`~mtpeft_bench.model.backbone`: the timm Swin backbone and its weights (``create_backbone``);
- :mod:`~mtpeft_bench.model.builtin_weights`: the backbone weights that ship with mtbench (``--weights
  builtin``), found and checked against their model card;
- :mod:`~mtpeft_bench.model.params`: kinds of the backbone's parameters (patch embedding, norms,
  relative-position tables, reductions, linears) and the "extras" the protocol lets train;
- :mod:`~mtpeft_bench.model.branching`: the task-branching block and its stream layers;
- :mod:`~mtpeft_bench.model.encoder`: ``MultiTaskSwinEncoder``, the encoder methods build;
- :mod:`~mtpeft_bench.model.heads`: the per-task HRNet decoder heads;
- :mod:`~mtpeft_bench.model.multitask`: ``MultiTaskModel`` (encoder + heads) and ``build_model``.
"""
