"""What ``mtbench compare`` prints around the table: a section per dataset and the notes that say how
to read it (Δm, the intervals and tests, missing seeds, Pareto, the measurements, published sources).

Torch-free. The table itself is :mod:`mtpeft_bench.report.tables`.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from mtpeft_bench.report.significance import groups, missing_seeds, repeated_seeds
from mtpeft_bench.report.stats import ALPHA, CONFIDENCE, mean_ci
from mtpeft_bench.report.tables import BUSY_MARK, latex_escape, measured_busy, method_label, render


def _row_name(row: Mapping[str, Any]) -> str:
    return f"{method_label(row)} ({','.join(row['tasks'])})"


def seed_warnings(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """One line per row that lacks a seed another row of its task set has, and per row with a seed run twice."""
    out = []
    for row, lacking, holders in missing_seeds(rows):
        seeds = ", ".join(str(s) for s in lacking)
        out.append(f"{_row_name(row)} has no run of seed{'s' if len(lacking) > 1 else ''} {seeds} "
                   f"(run for {', '.join(method_label(h) for h in holders)}); paired tests use the shared seeds only")
    for row in rows:
        repeated = repeated_seeds(row)
        if repeated:
            out.append(f"{_row_name(row)} has several runs of seed {', '.join(str(s) for s in repeated)}: each run "
                       "counts in its mean and interval, the paired tests use their mean")
    return out


def _test_notes(rows: Sequence[Mapping[str, Any]], reference_method: str) -> list[str]:
    if not any(r.get("vs_best") is not None for r in rows):
        return []
    level = f"{ALPHA:g}"
    out = [f"Δm − {reference_method} (paired): the mean over the seeds both rows share of (the row's Δm − the "
           f"'{reference_method}' row's Δm), with the p-value of a two-sided paired t-test over those seeds; n/a with "
           "fewer than two shared seeds. vs best Δm: the same test against the row with the highest mean Δm of the "
           f"task set; ≈: not significantly different from it (p ≥ {level}), <: significantly lower (p < {level}); "
           "untested: fewer than two shared seeds. Each task set is tested on its own, among the rows shown, "
           "without a correction for multiple comparisons."]
    for (dataset, tasks), members in groups(rows).items():
        tested = [m for m in members if m.get("vs_best") is not None]
        reference = [m for m in tested if m.get("vs_reference") == "reference"]
        where = f"{dataset} ({','.join(tasks)})" if len({r['dataset'] for r in rows}) > 1 else ','.join(tasks)
        if tested and not reference:
            out.append(f"No '{reference_method}' row with a Δm among the rows of {where}: no reference test there.")
        elif reference and (reference[0].get("tag") or reference[0].get("variant")):
            out.append(f"Reference row of {where}: {method_label(reference[0])}.")
    return out


def notes(rows: Sequence[Mapping[str, Any]], baseline_method: str, reference_method: str = "full") -> list[str]:
    """What a reader needs to read the table: Δm, intervals, tests, missing seeds, Pareto, the
    measurements, and each published source."""
    out = [f"Δm: mean relative change of each task's primary metric vs single-task runs of '{baseline_method}' "
           "with the same recipe; '(ref)': vs published single-task baselines.",
           f"±: half-width of the {CONFIDENCE:.0%} confidence interval of the mean over the row's seeds (Student t "
           "with n − 1 degrees of freedom × sample standard deviation / √n); n/a: one seed, no interval. "
           "n: runs in the row."]
    out += _test_notes(rows, reference_method)
    out += [f"Missing seeds: {line}." for line in seed_warnings(rows)]
    out += ["Pareto ★: no other run of the same dataset and task set has fewer trainable parameters and a higher Δm "
            "(published rows excluded).",
            "GFLOPs: forward FLOPs per image at batch 1 (torch FlopCounterMode: matmuls and convolutions only). "
            "Images/s: model compute after warm-up. Latency: median forward at batch 1."]
    if any(mean_ci(row.get(field) or []).mean is not None for row in rows for field in ("train_mfu", "inference_mfu")):
        out.append("MFU: model FLOPs utilisation, forward FLOPs per image × images/s (× 3 for training: forward and "
                   "backward, whatever the method freezes, so methods that skip weight gradients compute less than "
                   "counted) over the device's dense peak at the run's precision (vendor figure or "
                   "MTBENCH_PEAK_TFLOPS); — where the peak is unknown.")
    # Why a Δm cell is empty, once per reason (the methods it concerns first).
    missing: dict[str, list[str]] = {}
    for row in rows:
        if row.get("delta_m_missing") and all(v is None for v in row.get("delta_m") or [None]):
            name = method_label(row)
            missing.setdefault(row["delta_m_missing"], [])
            if name not in missing[row["delta_m_missing"]]:
                missing[row["delta_m_missing"]].append(name)
    out += [f"Δm — for {', '.join(names)}: {reason}." for reason, names in missing.items()]
    busy = [method_label(row) for row in rows if measured_busy(row)]
    if busy:
        out.append(f"{BUSY_MARK} speed measured on a busy machine (other jobs' load, or a low CPU share of the run; "
                   f"see efficiency.load in the result files): {', '.join(busy)}.")
    published = [r for r in rows if r.get("source") == "published"]
    if published:
        out.append("Published rows: numbers as given by the sources below (not run by this suite; their protocol "
                   "may differ); Δm recomputed from their metrics against the published single-task baselines, "
                   "'(paper x)' where the source states another Δm; 'unverified': the numbers could not be checked "
                   "against the paper.")
        seen = []
        for row in published:
            if row.get("source_label") not in [s for s, _ in seen]:
                seen.append((row.get("source_label"), row.get("citation")))
        out += [f"{label}: {citation}" for label, citation in seen]
        out += [f"{r['method']}: {r['note']}" for r in published if r.get("note")]
    return out


def render_document(rows: Sequence[Mapping[str, Any]], fmt: str = "md", baseline_method: str = "full",
                    param_groups: bool = False, reference_method: str = "full") -> str:
    """What ``mtbench compare`` prints: Markdown and HTML get a section per dataset and the notes;
    CSV one table; LaTeX one table with the notes as comments."""
    if fmt == "csv":
        return render(rows, "csv", param_groups, reference_method)
    lines = notes(rows, baseline_method, reference_method)
    if fmt == "latex":
        comments = "".join(f"% {latex_escape(line)}\n" for line in lines)
        return comments + render(rows, "latex", param_groups, reference_method)
    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    parts = []
    for name in datasets:
        sub = [r for r in rows if r["dataset"] == name]
        if fmt == "html":
            from html import escape

            parts.append(f"<h2>{escape(name)}</h2>\n" + render(sub, "html", param_groups, reference_method))
        else:
            parts.append(f"## {name}\n\n" + render(sub, "md", param_groups, reference_method))
    if fmt == "html":
        from html import escape

        parts.append("".join(f"<p>{escape(line)}</p>\n" for line in lines))
        return "\n".join(parts)
    parts.append("".join(f"- {line}\n" for line in lines))
    return "\n".join(parts)
