"""Proxy validity: does a measured ranking (e.g. on ``synth``) agree with the published one?

A small benchmark is useful as a proxy only as far as it orders methods the way the real benchmark
does. This module pairs the measured leaderboard rows of one dataset with the published rows of
another (``tasks/reference/<dataset>.yaml``, :mod:`mtpeft_bench.report.published`) through an
explicit mapping table (:data:`MAPPINGS`: mtbench method + options → published row), and measures
the agreement of the two Δm rankings with Kendall's τ-b (``scipy.stats.kendalltau``) over the methods
both have. τ = +1: the same order; 0: unrelated; −1: reversed. With a handful of methods the
p-value is large unless the agreement is near perfect, and the result says so by printing it.

Published Δm is the one recomputed from the row's own metrics (the printed one only where the
row has no metrics), so a misprinted Δm does not move the ranking. Torch-free.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from mtpeft_bench.errors import UserError
from mtpeft_bench.report.published import PublishedRow, PublishedTable, load_table, recompute


@dataclass(frozen=True)
class MappingEntry:
    """One line of the mapping table: runs of ``method`` whose options include ``options`` stand for
    the published row ``row`` of ``paper``."""

    method: str
    options: Mapping[str, Any]
    paper: str
    row: str
    why: str = ""


_MTLORA = {"task_rank": 4, "plus": False, "mode": "matrix"}

#: mtbench method (+ options) → published row, per published dataset. Only rows that are the same
#: method in the same multi-task setting; where the paper leaves a setting open, ``why`` says which
#: mtbench setting stands in for it.
MAPPINGS: dict[str, tuple[MappingEntry, ...]] = {
    "pascal_mt": (
        MappingEntry("full", {}, "mtlora", "MTL full fine-tuning"),
        MappingEntry("decoder_only", {}, "mtlora", "MTL decoders only"),
        MappingEntry("bitfit", {}, "mtlora", "BitFit"),
        MappingEntry("adapter", {}, "mtlora", "Adapter", "the published adapter's size is not stated"),
        MappingEntry("lora", {"r": 4}, "mtlora", "LoRA",
                     "the published LoRA states no rank; mtbench's default rank 4 stands in for it"),
        MappingEntry("mtlora", {"rank": 16, **_MTLORA}, "mtlora", "MTLoRA r=16"),
        MappingEntry("mtlora", {"rank": 32, **_MTLORA}, "mtlora", "MTLoRA r=32"),
        MappingEntry("mtlora", {"rank": 64, **_MTLORA}, "mtlora", "MTLoRA r=64"),
        MappingEntry("ditask", {}, "ditask", "DiTASK", "the published row trained from IN-22K weights"),
        MappingEntry("vpt_shallow", {}, "mtlora", "VPT-shallow"),
        MappingEntry("vpt_deep", {}, "mtlora", "VPT-deep"),
        MappingEntry("compacter", {}, "mtlora", "Compacter"),
        MappingEntry("compacter_pp", {}, "mtlora", "Compacter++"),
        MappingEntry("tadformer", {"rank": 16}, "tadformer", "TADFormer r=16"),
        MappingEntry("tadformer", {"rank": 32}, "tadformer", "TADFormer r=32"),
        MappingEntry("tadformer", {"rank": 64}, "tadformer", "TADFormer r=64"),
    ),
}


@dataclass(frozen=True)
class Pair:
    """A measured row and the published row it stands for, with both Δm values (%)."""

    measured: str  # the measured row's label: method (variant) [tag]
    published: PublishedRow
    measured_delta: float
    published_delta: float
    published_from: str  # "recomputed" or "printed"
    seeds: int


@dataclass(frozen=True)
class Tau:
    """Kendall's τ-b over ``n`` pairs and its two-sided p-value (None below two pairs or without variation)."""

    tau: float | None
    p_value: float | None
    n: int


@dataclass
class ProxyResult:
    """The paired methods, τ over all of them and over those whose published numbers were not recalled."""

    dataset: str
    published_dataset: str
    pairs: list[Pair]
    tau: Tau
    tau_without_recalled: Tau
    unmapped: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    aside: list[str] = field(default_factory=list)


def kendall_tau(x: Sequence[float], y: Sequence[float]) -> Tau:
    """Kendall's τ-b of two paired samples (``scipy.stats.kendalltau``)."""
    if len(x) < 2:
        return Tau(None, None, len(x))
    from scipy.stats import kendalltau

    result = kendalltau(x, y)
    tau, p = float(result.statistic), float(result.pvalue)
    if math.isnan(tau):  # one side has no variation
        return Tau(None, None, len(x))
    return Tau(tau, p, len(x))


def _options(row: Mapping[str, Any]) -> dict[str, Any]:
    """The run's method options (the leaderboard row keeps them as canonical JSON)."""
    raw = row.get("_method_options")
    if isinstance(raw, str):
        return json.loads(raw or "{}")
    return dict(row.get("method_config") or {})


def _label(row: Mapping[str, Any]) -> str:
    return row["method"] + (f" ({row['variant']})" if row.get("variant") else "") \
        + (f" [{row['tag']}]" if row.get("tag") else "")


def match(row: Mapping[str, Any], mapping: Sequence[MappingEntry]) -> MappingEntry | None:
    """The mapping entry a measured row falls under, or None."""
    options = _options(row)
    for entry in mapping:
        if entry.method == row["method"] and all(options.get(k) == v for k, v in entry.options.items()):
            return entry
    return None


def _published_delta(table: PublishedTable, row: PublishedRow) -> tuple[float | None, str]:
    value, _, _ = recompute(table, row)
    if value is not None:
        return value, "recomputed"
    return row.delta_m_printed, "printed"


def _one_per_published_row(group: list[Mapping[str, Any]], name: str) -> tuple[Mapping[str, Any], list[str]]:
    """The measured row that stands for one published row, and the labels of the others set aside.

    Several rows of one method (another tag, say a learning-rate study) are allowed when exactly one
    of them has no tag: the untagged row is the leaderboard's own.
    """
    if len(group) == 1:
        return group[0], []
    untagged = [r for r in group if not r.get("tag")]
    if len(untagged) != 1:
        raise UserError(f"{len(group)} measured rows stand for the published '{name}': "
                        f"{', '.join(_label(r) for r in group)}; keep one with --tag or --method")
    return untagged[0], [_label(r) for r in group if r is not untagged[0]]


def pair_rows(rows: Sequence[Mapping[str, Any]], published_dataset: str,
              mapping: Sequence[MappingEntry] | None = None
              ) -> tuple[list[Pair], list[str], list[str], list[str]]:
    """Pair measured leaderboard rows with published rows.

    Only the measured rows on the dataset's largest task set count (single-task baseline runs do
    not stand for a multi-task method). Returns ``(pairs, unmapped, skipped, aside)``: the labels of
    rows that no mapping entry covers, of rows left out for lack of a Δm on either side, and of
    tagged rows set aside for the untagged row of the same published counterpart.

    Raises:
        UserError: no published table or mapping for ``published_dataset``, or several measured rows
            fall under one published row and not exactly one of them is untagged (filter them with
            ``--tag`` or ``--method``).
    """
    table = load_table(published_dataset)
    if table is None or (mapping is None and published_dataset not in MAPPINGS):
        raise UserError(f"no published table with a method mapping for '{published_dataset}'; "
                        f"use one of {', '.join(sorted(MAPPINGS))}")
    mapping = MAPPINGS[published_dataset] if mapping is None else mapping
    suite = [r for r in rows if r.get("source", "suite") == "suite"]
    widest = max((len(r["tasks"]) for r in suite), default=0)
    unmapped: list[str] = []
    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for row in suite:
        if len(row["tasks"]) != widest or widest < 2:
            continue
        entry = match(row, mapping)
        if entry is None:
            unmapped.append(_label(row))
            continue
        if table.row(entry.paper, entry.row) is None:
            raise UserError(f"the mapping names '{entry.row}' of '{entry.paper}', which is not in the "
                            f"{published_dataset} table")
        groups.setdefault((entry.paper, entry.row), []).append(row)
    pairs: list[Pair] = []
    skipped: list[str] = []
    aside: list[str] = []
    for key, group in groups.items():
        row, others = _one_per_published_row(group, key[1])
        aside += others
        published = table.row(*key)
        measured = [v for v in row.get("delta_m") or [] if v is not None and not math.isnan(v)]
        value, source = _published_delta(table, published)
        if not measured or value is None:
            skipped.append(_label(row))
            continue
        pairs.append(Pair(_label(row), published, statistics.fmean(measured), value, source, len(measured)))
    return pairs, unmapped, skipped, aside


def proxy_validity(rows: Sequence[Mapping[str, Any]], dataset: str, published_dataset: str,
                   mapping: Sequence[MappingEntry] | None = None) -> ProxyResult:
    """Kendall's τ-b between the measured and the published Δm ranking of the methods both have."""
    pairs, unmapped, skipped, aside = pair_rows(rows, published_dataset, mapping)
    documented = [p for p in pairs if p.published.confidence != "recalled"]
    return ProxyResult(
        dataset=dataset, published_dataset=published_dataset, pairs=pairs,
        tau=kendall_tau([p.measured_delta for p in pairs], [p.published_delta for p in pairs]),
        tau_without_recalled=kendall_tau([p.measured_delta for p in documented],
                                         [p.published_delta for p in documented]),
        unmapped=unmapped, skipped=skipped, aside=aside)


def _tau_text(tau: Tau) -> str:
    if tau.tau is None:
        return f"τ-b undefined (n = {tau.n}: needs two methods with different Δm on both sides)"
    return f"τ-b = {tau.tau:+.3f} over n = {tau.n} methods (two-sided p = {tau.p_value:.3g})"


def render_proxy(result: ProxyResult, fmt: str = "md") -> str:
    """The paired list (measured Δm order) and the τ lines, as Markdown or CSV."""
    table = load_table(result.published_dataset)
    pairs = sorted(result.pairs, key=lambda p: -p.measured_delta)
    header = ["measured row", "seeds", f"measured Δm % ({result.dataset})", "published row", "paper",
              f"published Δm % ({result.published_dataset})", "published Δm from", "confidence"]
    cells = [[p.measured, p.seeds, f"{p.measured_delta:+.2f}", p.published.method, table.label(p.published.paper),
              f"{p.published_delta:+.2f}", p.published_from, p.published.confidence] for p in pairs]
    if fmt == "csv":
        import csv
        import io

        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(header)
        writer.writerows([[p.measured, p.seeds, round(p.measured_delta, 6), p.published.method,
                           table.label(p.published.paper), round(p.published_delta, 6), p.published_from,
                           p.published.confidence] for p in pairs])
        return out.getvalue()
    if fmt != "md":
        raise UserError(f"--proxy prints md or csv, not {fmt}")
    from tabulate import tabulate

    lines = [f"Kendall's {_tau_text(result.tau)}, measured {result.dataset} vs published {result.published_dataset}.",
             f"Without the published rows known only from recollection (confidence 'recalled'): "
             f"{_tau_text(result.tau_without_recalled)}."]
    if result.unmapped:
        lines.append("No published counterpart in the mapping: " + ", ".join(result.unmapped) + ".")
    if result.aside:
        lines.append("Tagged rows set aside for the untagged row of the same method: " + ", ".join(result.aside) + ".")
    if result.skipped:
        lines.append("Left out (no Δm on one side): " + ", ".join(result.skipped) + ".")
    lines.append("Published Δm: recomputed from the row's own metrics against its paper's single-task row "
                 "('printed' where the row has no metrics). The mapping table and its caveats: docs/published.md.")
    text = tabulate(cells, headers=header, tablefmt="github", disable_numparse=True) if cells else "(no pairs)"
    return (f"## Proxy validity: {result.dataset} vs published {result.published_dataset}\n\n{text}\n\n"
            + "".join(f"- {line}\n" for line in lines))
