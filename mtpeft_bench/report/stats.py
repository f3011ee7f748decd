"""The statistics of a leaderboard: confidence intervals over seeds and paired tests between rows.

Torch-free (scipy only). Seeds are the unit of replication: a run's metric is one observation, and
runs of two rows that share a seed share its data order and initialisation, so they are compared
pairwise.

- :func:`mean_ci`: mean and the half-width of its two-sided confidence interval (default 95 %),
  ``t_{1-α/2, n-1} · s / √n`` with ``s`` the sample standard deviation (n − 1) and ``t`` Student's
  quantile; unavailable (None) with fewer than two values, never 0.
- :func:`paired_test`: a paired t-test (``scipy.stats.ttest_rel``, two-sided) of two rows' values on
  the seeds both have, with the mean paired difference; untestable (``p`` None) with fewer than
  two shared seeds.
"""

from __future__ import annotations

import math
import statistics
import warnings
from dataclasses import dataclass
from typing import Mapping, Sequence

#: The confidence level of every interval the tables and figures show.
CONFIDENCE = 0.95
#: The significance level of the paired tests: p below it is a significant difference.
ALPHA = 0.05


def finite(values: Sequence[float | None]) -> list[float]:
    """The values that are numbers (None and NaN left out)."""
    return [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]


def t_quantile(n: int, confidence: float = CONFIDENCE) -> float:
    """Student's t quantile ``t_{1-(1-confidence)/2}`` with ``n - 1`` degrees of freedom (n ≥ 2)."""
    from scipy.stats import t

    return float(t.ppf(1.0 - (1.0 - confidence) / 2.0, n - 1))


@dataclass(frozen=True)
class Estimate:
    """A mean over seeds and its confidence interval.

    Attributes:
        mean: the mean of the values (None without any).
        half_width: half-width of the confidence interval (None with fewer than two values).
        n: how many values there were.
    """

    mean: float | None
    half_width: float | None
    n: int


def mean_ci(values: Sequence[float | None], confidence: float = CONFIDENCE) -> Estimate:
    """Mean and confidence-interval half-width of ``values`` (None/NaN entries are left out)."""
    kept = finite(values)
    if not kept:
        return Estimate(None, None, 0)
    mean = statistics.fmean(kept)
    if len(kept) < 2:
        return Estimate(mean, None, 1)
    half = t_quantile(len(kept), confidence) * statistics.stdev(kept) / math.sqrt(len(kept))
    return Estimate(mean, half, len(kept))


def ci_bounds(values: Sequence[float | None], confidence: float = CONFIDENCE) -> tuple[float, float]:
    """``(mean − half-width, mean + half-width)`` of :func:`mean_ci`; NaN bounds (nothing to draw) with
    fewer than two values. The shape seaborn's ``errorbar=`` takes a function of."""
    estimate = mean_ci(values, confidence)
    if estimate.half_width is None:
        return math.nan, math.nan
    return estimate.mean - estimate.half_width, estimate.mean + estimate.half_width


@dataclass(frozen=True)
class PairedResult:
    """A paired comparison of two rows on the seeds both have.

    Attributes:
        seeds: the shared seeds, sorted.
        mean_difference: mean over the shared seeds of (value of the row − value of the other row);
            None without a shared seed.
        p_value: two-sided p of the paired t-test; None when fewer than two seeds are shared.
    """

    seeds: tuple
    mean_difference: float | None
    p_value: float | None

    @property
    def testable(self) -> bool:
        return self.p_value is not None

    @property
    def significant(self) -> bool | None:
        """p < :data:`ALPHA` (None when untestable)."""
        return None if self.p_value is None else self.p_value < ALPHA


def paired_test(values: Mapping[object, float | None], other: Mapping[object, float | None]) -> PairedResult:
    """Paired t-test of ``values`` against ``other`` (both: seed → value) on their shared seeds.

    Seeds with a missing value on either side are not shared. When every paired difference is the
    same, the t statistic is undefined (zero spread): equal values give p = 1, any other constant
    difference p = 0 (scipy's limit for an infinite t).
    """
    seeds = tuple(sorted(s for s in values if s in other and finite([values[s]]) and finite([other[s]])))
    if not seeds:
        return PairedResult((), None, None)
    a = [float(values[s]) for s in seeds]
    b = [float(other[s]) for s in seeds]
    diffs = [x - y for x, y in zip(a, b)]
    mean_difference = statistics.fmean(diffs)
    if len(seeds) < 2:
        return PairedResult(seeds, mean_difference, None)
    if all(d == diffs[0] for d in diffs):
        return PairedResult(seeds, mean_difference, 1.0 if diffs[0] == 0 else 0.0)
    from scipy.stats import ttest_rel

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # nearly equal pairs: scipy warns, the p is still right
        p_value = float(ttest_rel(a, b).pvalue)
    return PairedResult(seeds, mean_difference, p_value)
