"""Which rows of a leaderboard protocol get more seeds: those within one interval of another row.

Three seeds resolve rows that are far apart; two rows whose Δm differ by less than one 95 %
confidence interval cannot be told apart at three, so the protocol runs both at more seeds
(``close_rows.seeds`` in the protocol file, docs/leaderboard.md). Two rows are *close* when

    |mean_a − mean_b| ≤ max(h_a, h_b),

with ``mean`` and ``h`` the Δm mean and Student-t half-width over the protocol's seeds
(:func:`mtpeft_bench.report.stats.mean_ci`, the same interval ``mtbench compare`` prints). The
decision is taken once, on the protocol's seeds only, so the extra seeds never change which rows
get them. Torch-free.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import combinations
from typing import Mapping, Sequence

from mtpeft_bench.report.stats import mean_ci


@dataclass(frozen=True)
class CloseRows:
    """The decision: ``rows`` (in protocol order) to run at the extra seeds, the pairs that made it,
    and each row's Δm (mean, half-width) it was taken on. ``decided`` is False until every row has
    a Δm at every seed of the protocol; ``waiting_for`` then names what is missing."""

    decided: bool
    rows: tuple[str, ...] = ()
    pairs: tuple[tuple[str, str], ...] = ()
    delta_m: Mapping[str, tuple[float, float | None]] = field(default_factory=dict)
    waiting_for: str = ""


def close_pairs(deltas: Mapping[str, Sequence[float]]) -> list[tuple[str, str]]:
    """The pairs of rows within one interval of each other (see the module docstring).

    Args:
        deltas: row name → its Δm (%) at each seed; a row with fewer than two values has no
            interval and is close to none.
    """
    estimates = {name: mean_ci(values) for name, values in deltas.items()}
    usable = [name for name, e in estimates.items() if e.half_width is not None]
    return [(a, b) for a, b in combinations(usable, 2)
            if abs(estimates[a].mean - estimates[b].mean) <= max(estimates[a].half_width, estimates[b].half_width)]


def decide(deltas: Mapping[str, Sequence[float]]) -> CloseRows:
    """The decision for complete ``deltas`` (row → Δm per seed, rows in protocol order)."""
    pairs = close_pairs(deltas)
    members = {name for pair in pairs for name in pair}
    estimates = {name: mean_ci(values) for name, values in deltas.items()}
    return CloseRows(True, tuple(name for name in deltas if name in members), tuple(pairs),
                     {name: (e.mean, e.half_width) for name, e in estimates.items()})
