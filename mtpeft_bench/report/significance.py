"""Which leaderboard differences are real: paired tests of Δm between rows, and seeds missing from a row.

Rows are compared inside their comparison group: the suite's rows of one dataset and task set
(published rows carry no seeds and are never tested). In each group with at least two rows with a
Δm:

- every row's Δm is tested against the **reference row** (the row of ``reference_method``, by
  default ``full``; among several, the one without tag and method-option variant, then the one
  with most seeds): ``row["vs_reference"]`` is the :class:`~mtpeft_bench.report.stats.PairedResult`
  of (row − reference), ``"reference"`` on the reference row itself, None where the group has none;
- every row's Δm is tested against the **best row** (highest mean Δm): ``row["vs_best"]`` is the
  result of (row − best), ``"best"`` on the best row. A row whose test gives p ≥ 0.05 is not
  significantly different from the best; one with fewer than two shared seeds cannot be tested.

A seed that some row of a group has and another lacks is never dropped silently:
:func:`missing_seeds` names each such row and seed. Torch-free.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from mtpeft_bench.report.stats import finite, mean_ci, paired_test


def by_seed(row: Mapping[str, Any], field: str = "delta_m") -> dict[Any, float]:
    """Seed → value of ``row[field]`` (lists aligned with ``row["seeds"]``); a seed run twice gets its mean."""
    found: dict[Any, list[float]] = {}
    for seed, value in zip(row.get("seeds") or [], row.get(field) or []):
        if finite([value]):
            found.setdefault(seed, []).append(float(value))
    return {seed: sum(v) / len(v) for seed, v in found.items()}


def groups(rows: Sequence[Mapping[str, Any]]) -> dict[tuple, list[Mapping[str, Any]]]:
    """The suite's rows by (dataset, task set), in table order."""
    out: dict[tuple, list[Mapping[str, Any]]] = {}
    for row in rows:
        if row.get("source") == "suite":
            out.setdefault((row["dataset"], tuple(row["tasks"])), []).append(row)
    return out


def reference_row(members: Sequence[Mapping[str, Any]], reference_method: str) -> Mapping[str, Any] | None:
    """The row the group's paired tests are made against (see the module docstring), or None."""
    candidates = [r for r in members if r["method"] == reference_method and mean_ci(r["delta_m"]).mean is not None]
    if not candidates:
        return None
    return min(candidates, key=lambda r: (bool(r.get("tag")), bool(r.get("variant")), -mean_ci(r["delta_m"]).n))


def best_row(members: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The row with the highest mean Δm (the first in table order among equals), or None."""
    scored = [r for r in members if mean_ci(r["delta_m"]).mean is not None]
    return max(scored, key=lambda r: mean_ci(r["delta_m"]).mean) if scored else None


def annotate(rows: Sequence[dict[str, Any]], reference_method: str = "full") -> None:
    """Set ``vs_reference`` and ``vs_best`` on every row (None where not tested; see the module docstring)."""
    for row in rows:
        row["vs_reference"] = None
        row["vs_best"] = None
    for members in groups(rows).values():
        scored = [r for r in members if mean_ci(r["delta_m"]).mean is not None]
        if len(scored) < 2:
            continue  # nothing to compare a row with
        reference, best = reference_row(scored, reference_method), best_row(scored)
        for row in scored:
            own = by_seed(row)
            if reference is not None:
                row["vs_reference"] = "reference" if row is reference else paired_test(own, by_seed(reference))
            row["vs_best"] = "best" if row is best else paired_test(own, by_seed(best))


def missing_seeds(rows: Sequence[Mapping[str, Any]]) -> list[tuple[Mapping[str, Any], list, list]]:
    """``(row, seeds it lacks, rows of its group that have them)`` for every suite row of a group of
    at least two rows that lacks a seed another row of the group has (groups as in :func:`groups`)."""
    found = []
    for members in groups(rows).values():
        if len(members) < 2:
            continue
        seeds_of = [set(m.get("seeds") or []) for m in members]
        union = set().union(*seeds_of)
        for row, seeds in zip(members, seeds_of):
            lacking = sorted(union - seeds, key=str)
            if lacking:
                holders = [m for m, s in zip(members, seeds_of) if m is not row and s & set(lacking)]
                found.append((row, lacking, holders))
    return found


def repeated_seeds(row: Mapping[str, Any]) -> list:
    """Seeds that ``row`` has more than one run of (each run counts in its mean and interval)."""
    seeds = list(row.get("seeds") or [])
    return sorted({s for s in seeds if seeds.count(s) > 1}, key=str)
