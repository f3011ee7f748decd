"""Determinism for the BSDS edge matcher that the odsF meter uses (pyEdgeEval's ``correspondPixels``).

The matcher links every edge pixel to a few random "outlier" nodes drawn from a C++ generator
(``Random::rand`` in pyEdgeEval's ``_lib``: ``erand48`` state seeded once from the clock when the
extension loads), not from numpy or torch, so neither ``np.random.seed`` nor ``torch.manual_seed``
reaches it. With some draws an exact match loses a pixel or two (60 of 60 GT pixels usually, 59 or
58 now and then). The extension exports ``Random::reseed``; calling it through ctypes fixes the
draws of every later match in this process.
"""

from __future__ import annotations

import ctypes
import sys


def seed_bsds_matching(seed: int) -> None:
    """Reseed pyEdgeEval's matcher generator in this process (``seed`` > 0; 0 would mean the clock).

    Only matching done in this process is affected: leave ``MTBENCH_EDGE_WORKERS`` unset.

    Raises:
        RuntimeError: the installed pyEdgeEval no longer exports the generator's symbols.
    """
    if seed <= 0:
        raise ValueError("seed must be positive (0 reseeds from the clock)")
    from pyEdgeEval._lib import correspond_pixels

    extension = sys.modules[correspond_pixels.__module__].__file__
    library = ctypes.CDLL(extension)  # the already loaded extension: dlopen returns the same handle
    try:
        generator = ctypes.addressof(ctypes.c_char.in_dll(library, "_ZN6Random4randE"))  # Random::rand
        reseed = library._ZN6Random6reseedEm  # void Random::reseed(u_int64_t), `this` first
    except (AttributeError, ValueError) as exc:
        raise RuntimeError(f"{extension} does not export Random::rand / Random::reseed: {exc}") from None
    reseed.argtypes, reseed.restype = [ctypes.c_void_p, ctypes.c_uint64], None
    reseed(generator, seed)
