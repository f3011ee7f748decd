"""DiTASK (Mantri et al., CVPR 2025, arXiv:2502.06029): the method plugin and its CPA core.

The plugin (``mtbench run --method ditask``) lives in :mod:`.method`; the CPA diffeomorphisms and
the singular-value warp, usable on their own, in :mod:`.cpa`; the fused Triton kernel in
:mod:`.triton_kernel` (imported only when it runs).
"""

from mtpeft_bench.methods.ditask.cpa import (
    SpectrumPack,
    cpa_basis,
    cpa_transform,
    theta_dim,
    theta_to_coefficients,
    warp_packed_torch,
    warp_spectra,
    warp_spectrum,
)


__all__ = [
    "SpectrumPack",
    "cpa_basis",
    "cpa_transform",
    "theta_dim",
    "theta_to_coefficients",
    "warp_packed_torch",
    "warp_spectra",
    "warp_spectrum",
]
