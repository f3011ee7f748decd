"""TADFormer (Baek et al., CVPR 2025, arXiv:2501.04293): the method plugin and its parts.

The plugin (``mtbench run --method tadformer``) lives in :mod:`.method`; the task filters in
:mod:`.filters`; the prompted Swin block (prompts in every window, TPC, task paths) in
:mod:`.block`; the encoder (prompt stream, stage gates, features) in :mod:`.encoder`.
"""
