"""SEISM/BSDS boundary matching for the edge ``odsF`` (MTI-Net's evaluation), and its process pool.

Per image and threshold, the thinned predicted edge map is matched one-to-one to the thinned GT
edges by the BSDS ``correspondPixels`` (pyEdgeEval's Cython port, with scikit-image's ``thin``);
the counts summed over a dataset give SEISM's ODS F (:func:`ods_from_counts`). Definitions: the
``edge`` entry of :mod:`mtpeft_bench.metrics`. The matching is slow (seconds per image and
threshold at 448 px for noisy maps), so :class:`BoundaryMatcher` can spread it over processes.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import torch
from torch import Tensor


def edge_thresholds(count: int = 99) -> tuple[float, ...]:
    """``count`` evenly spaced thresholds in (0, 1): 1/(count+1), ..., count/(count+1) (99 → 0.01 ... 0.99)."""
    return tuple(round((i + 1) / (count + 1), 10) for i in range(count))


def edge_backend() -> str | None:
    """None when odsF can be computed, else why not (one line)."""
    try:
        from pyEdgeEval._lib import correspond_pixels  # noqa: F401
        from skimage.morphology import thin  # noqa: F401
    except ImportError as exc:
        return (f"odsF is not computed: {exc.name or exc} is not installed (pip install 'mtpeft-bench[edge]' "
                "brings pyEdgeEval and scikit-image); F_tol is a tolerance-based approximation, not odsF")
    return None


def boundary_counts(prob, gt, max_dist: float, thresholds) -> "Any":
    """SEISM/BSDS boundary counts of one image (numpy in, numpy out).

    Args:
        prob: float64[H, W] edge probability (ignored pixels set to 0).
        gt: bool[H, W] ground-truth edges (thinned here, as SEISM's edgesEvalImg thins its GT).
        max_dist: match tolerance as a fraction of the image diagonal.
        thresholds: ascending thresholds; a pixel is an edge at t when prob >= t.

    Returns:
        int64[4, T]: matched GT pixels, GT pixels, matched predicted pixels, predicted pixels.
    """
    import numpy as np
    from pyEdgeEval._lib import correspond_pixels
    from skimage.morphology import thin

    thresholds = np.asarray(thresholds, dtype=np.float64)
    out = np.zeros((4, thresholds.size), dtype=np.int64)
    gt = thin(np.asarray(gt, dtype=bool))
    n_gt = int(gt.sum())
    # k = number of thresholds <= p: the map at threshold j is k > j, so thresholds with no pixel
    # in [t_j, t_j+1) give the same map as the one before and reuse its counts.
    k = np.searchsorted(thresholds, prob, side="right")
    present = np.bincount(k.reshape(-1), minlength=thresholds.size + 1)
    previous = None
    for j in range(thresholds.size):
        if previous is not None and present[j] == 0:
            out[:, j] = previous
            continue
        edges = thin(k > j)
        n_pred = int(edges.sum())
        if n_gt == 0 or n_pred == 0:
            counts = (0, n_gt, 0, n_pred)
        else:
            match_pred, match_gt, _, _ = correspond_pixels(edges.astype(np.float64), gt.astype(np.float64),
                                                           max_dist=max_dist)
            counts = (int((match_gt > 0).sum()), n_gt, int((match_pred > 0).sum()), n_pred)
        out[:, j] = counts
        previous = out[:, j].copy()
    return out


def _boundary_counts_job(args: tuple) -> "Any":
    return boundary_counts(*args)


def ods_from_counts(counts: Tensor) -> float:
    """SEISM's ODS F (%) from dataset-summed counts int64[4, T] (gather_measure.m, general_ods.m)."""
    cnt_r, sum_r, cnt_p, sum_p = (c.double() for c in counts)
    rec = torch.zeros_like(cnt_r)
    prec = torch.zeros_like(cnt_r)
    normal = (sum_p != 0) & (cnt_r != 0)
    rec[normal] = cnt_r[normal] / sum_r[normal]
    prec[normal] = cnt_p[normal] / sum_p[normal]
    no_gt = (sum_r == 0) & (cnt_p == 0)  # nothing to find: recall 1, precision 0
    rec[no_gt], prec[no_gt] = 1.0, 0.0
    no_pred = (sum_p == 0) & (cnt_r == 0)  # nothing predicted: recall 0, precision 1
    rec[no_pred], prec[no_pred] = 0.0, 1.0
    total = prec + rec
    f = torch.where(total > 0, 2 * prec * rec / total.clamp(min=1e-300), torch.zeros_like(total))
    return 100.0 * float(f.max())


class BoundaryMatcher:
    """The odsF boundary matching of one meter's images: in this process, or spread over
    ``MTBENCH_EDGE_WORKERS=N`` worker processes (read at every :meth:`submit`; 0 or unset: here).

    Args:
        max_dist: match tolerance as a fraction of the image diagonal.
        thresholds: ascending edge thresholds (p >= t).
    """

    def __init__(self, max_dist: float, thresholds: Sequence[float]) -> None:
        self.max_dist = max_dist
        self.thresholds = thresholds
        self._pending: list[Any] = []
        self._pool: Any = None

    def submit(self, prob: Tensor, gt: Tensor) -> list["Any"]:
        """Match every image of a batch: ``prob`` float64[B, 1, H, W] (ignored pixels 0), ``gt``
        bool[B, 1, H, W].

        Returns:
            the int64[4, T] counts (:func:`boundary_counts`) of the images matched in this process;
            those sent to worker processes come back from :meth:`collect`.
        """
        workers = int(os.environ.get("MTBENCH_EDGE_WORKERS", "0") or 0)
        done = []
        for p, g in zip(prob[:, 0].cpu().numpy(), gt[:, 0].cpu().numpy()):
            job = (p, g, self.max_dist, self.thresholds)
            if workers <= 0:
                done.append(boundary_counts(*job))
                continue
            if self._pool is None:
                import concurrent.futures
                import multiprocessing

                # spawn: the evaluating process may hold CUDA state, which must not be forked
                self._pool = concurrent.futures.ProcessPoolExecutor(
                    workers, mp_context=multiprocessing.get_context("spawn"))
            self._pending.append(self._pool.submit(_boundary_counts_job, job))
        return done

    def collect(self) -> list["Any"]:
        """Wait for the images sent to worker processes and return their counts (in submission
        order); the workers are shut down (a later :meth:`submit` starts new ones)."""
        pending, self._pending = self._pending, []
        counts = [future.result() for future in pending]
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None
        return counts
