"""Leaderboard rows (from :mod:`mtpeft_bench.report.rows`) as text: Markdown, CSV, LaTeX, HTML. Torch-free.

Seeds are shown as mean ± the half-width of the 95 % confidence interval of the mean (Student t,
:mod:`mtpeft_bench.report.stats`); with one seed the interval of a task metric or Δm reads ``± n/a``
(unavailable, not zero), a cost figure shows its value alone. Where rows of a task set can be
compared, two columns give the paired tests of Δm (:mod:`mtpeft_bench.report.significance`):
against the reference method and against the best row. Optional columns (GFLOPs, memory, images/s,
model FLOPs utilisation, latency, merged latency, the source of published rows, parameter groups)
appear only when some row has a value. CSV keeps numbers numeric, with means, interval half-widths
and counts in separate columns. The notes under the table are in :mod:`mtpeft_bench.report.document`.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

from mtpeft_bench.report.stats import ALPHA, Estimate, PairedResult, mean_ci


FORMATS = ("md", "csv", "latex", "html")

#: What an interval that cannot be computed (one seed) reads as.
UNAVAILABLE = "n/a"


def _decimals(value: float, significant: int) -> int:
    if value == 0 or not math.isfinite(value):
        return 0
    return max(0, significant - 1 - math.floor(math.log10(abs(value))))


def _fmt(estimate: Estimate, digits: int = 2, sign: bool = False, interval: bool = False) -> str:
    """``mean ± half-width``; ``interval``: a single value reads ``± n/a`` (its interval is unavailable)."""
    mean, half = estimate.mean, estimate.half_width
    if mean is None:
        return "—"
    if abs(mean) < 0.5 * 10 ** -digits:
        mean = 0.0  # no "-0.00" (a lower-is-better task equal to its baseline gives Δm = -0.0)
    text = f"{mean:+.{digits}f}" if sign else f"{mean:.{digits}f}"
    if half is not None:
        return f"{text} ± {half:.{digits}f}"
    return f"{text} ± {UNAVAILABLE}" if interval else text


def _fmt_sig(estimate: Estimate, significant: int = 3) -> str:
    """Mean to ``significant`` digits, the half-width to the same decimals (169.4 → ``169``, 0.2676 → ``0.268``)."""
    if estimate.mean is None:
        return "—"
    return _fmt(estimate, _decimals(estimate.mean, significant))


def _any(rows: Sequence[Mapping[str, Any]], field: str) -> bool:
    return any(mean_ci(r.get(field) or []).mean is not None for r in rows)


def p_text(p_value: float) -> str:
    """A p-value for a table cell: three decimals, ``p<0.001`` below that."""
    return "p<0.001" if p_value < 0.001 else f"p={p_value:.3f}"


def _shared(result: PairedResult) -> str:
    count = len(result.seeds)
    return f"{count} shared seed{'' if count == 1 else 's'}"


def reference_cell(row: Mapping[str, Any]) -> str:
    """The paired test of the row's Δm against the reference row: mean difference (row − reference) and p."""
    test = row.get("vs_reference")
    if test is None:
        return ""
    if test == "reference":
        return "reference"
    if test.mean_difference is None:
        return f"{UNAVAILABLE} (no shared seed)"
    if not test.testable:
        return f"{test.mean_difference:+.2f} ({UNAVAILABLE}: {_shared(test)})"
    return f"{test.mean_difference:+.2f} ({p_text(test.p_value)})"


def best_cell(row: Mapping[str, Any]) -> str:
    """Whether the row's Δm is significantly below the best row's: ``best``, ``≈`` (p ≥ 0.05),
    ``<`` (p < 0.05) or untested (fewer than two shared seeds)."""
    test = row.get("vs_best")
    if test is None:
        return ""
    if test == "best":
        return "best"
    if not test.testable:
        return f"untested ({_shared(test)})"
    return f"{'<' if test.p_value < ALPHA else '≈'} ({p_text(test.p_value)})"


def _task_columns(rows: Sequence[Mapping[str, Any]]) -> list[tuple[str, str, bool, str]]:
    cols: list[tuple[str, str, bool, str]] = []
    for row in rows:
        for task, m in row["metrics"].items():
            col = (task, m["name"], m["higher_is_better"], m["unit"])
            if col not in cols:
                cols.append(col)
    return cols


def _memory_header(rows: Sequence[Mapping[str, Any]]) -> str:
    kinds = {r["memory_kind"] for r in rows if r.get("memory_kind")}
    name = {"cuda_max_allocated": "peak CUDA mem", "cpu_peak_rss": "peak RSS"}.get(kinds.pop(), "peak mem") \
        if len(kinds) == 1 else "peak mem"
    return f"{name} (MB) ↓"


def method_label(row: Mapping[str, Any]) -> str:
    """The row's name in the table: method, its variant (options or recipe that differ), tag, published mark."""
    text = row["method"] + (f" ({row['variant']})" if row.get("variant") else "") \
        + (f" [{row['tag']}]" if row.get("tag") else "")
    if row.get("source") == "published":
        text += " (published)" if row.get("verified") else " (published, unverified)"
    return text


def _delta_cell(row: Mapping[str, Any]) -> str:
    estimate = mean_ci(row["delta_m"])
    text = _fmt(estimate, sign=True, interval=row.get("source") == "suite")
    if text != "—" and row.get("delta_m_baseline") == "reference":
        text += " (ref)"
    published = row.get("delta_m_published")
    mean = estimate.mean
    if published is not None and (mean is None or abs(round(mean, 2) - float(published)) >= 0.005):
        text += f" (paper {float(published):+.2f})"
    if row.get("delta_m_flag"):  # a published row whose printed Δm disagrees with its metrics (note below)
        text += f" {row['delta_m_flag']}"
    return text


def _trainable_cell(row: Mapping[str, Any]) -> str:
    mean = mean_ci(row["trainable"]).mean
    if mean is None:
        return "—"
    return f"{mean / 1e6:.2f}" if row.get("source") == "published" else f"{mean / 1e6:.3f}"


#: The mark on speed cells measured on a busy machine (explained by a line of :func:`notes`).
BUSY_MARK = "†"


def measured_busy(row: Mapping[str, Any]) -> bool:
    """Was any seed of ``row`` timed on a busy machine (its record's ``efficiency.load.busy``)?"""
    return any(flag is True for flag in row.get("busy") or [])


def _speed(text: str, busy: bool) -> str:
    return f"{text} {BUSY_MARK}" if busy and text != "—" else text


#: The speed columns of the table, in order: (header, row field). The MFU columns appear only when
#: some row's records know their device's peak (never for CPU runs without ``MTBENCH_PEAK_TFLOPS``).
SPEED_COLUMNS = (("train img/s ↑", "train_images_per_s"), ("train MFU % ↑", "train_mfu"),
                 ("infer img/s ↑", "inference_images_per_s"), ("infer MFU % ↑", "inference_mfu"))


def _speed_cell(row: Mapping[str, Any], field: str) -> str:
    """Images/s to one decimal; MFU as a percentage to three significant digits."""
    values = row.get(field) or []
    if field.endswith("_mfu"):
        return _fmt_sig(mean_ci([None if v is None else 100 * v for v in values]))
    return _fmt(mean_ci(values), digits=1)


def _tested(rows: Sequence[Mapping[str, Any]], field: str) -> bool:
    return any(r.get(field) is not None for r in rows)


def table(rows: Sequence[Mapping[str, Any]], param_groups: bool = False,
          reference_method: str = "full") -> tuple[list[str], list[list[str]]]:
    """Header and string cells of the leaderboard (the Markdown, LaTeX and HTML tables).

    Optional columns appear only when some row has a value: preset, seeds and n (suite runs), the
    paired tests of Δm against ``reference_method`` and against the best row, GFLOPs, memory,
    images/s, MFU, latency, merged latency, the source of published rows; ``param_groups`` adds the
    trainable parameters of each group.
    """
    task_cols = _task_columns(rows)
    multi_dataset = len({r["dataset"] for r in rows}) > 1
    has_published = any(r.get("source") == "published" for r in rows)
    show = {f: _any(rows, f) for f in ("flops", "latency_ms", "merged_latency_ms", "peak_memory_mb",
                                       *(field for _, field in SPEED_COLUMNS))}
    suite = any(r.get("source") == "suite" for r in rows)
    header = (["dataset"] if multi_dataset else []) + ["method", "tasks"] + (["preset", "seeds", "n"] if suite else [])
    header += [f"{t} {n} {'↑' if hib else '↓'}" + (f" ({u})" if u and u != "%" else "") for t, n, hib, u in task_cols]
    header += ["Δm % ↑"]
    tests = {field: _tested(rows, field) for field in ("vs_reference", "vs_best")}
    if tests["vs_reference"]:
        header.append(f"Δm − {reference_method} (paired)")
    if tests["vs_best"]:
        header.append("vs best Δm")
    header += ["Pareto", "trainable (M) ↓"]
    if param_groups:
        header += ["method (M)", "extras (M)", "linears (M)", "decoder (M)"]
    if show["flops"]:
        header.append("GFLOPs/img ↓")
    header += [name for name, field in ((_memory_header(rows), "peak_memory_mb"), *SPEED_COLUMNS) if show[field]]
    if show["latency_ms"]:
        header.append("latency b=1 (ms) ↓")
    if show["merged_latency_ms"]:
        header.append("merged latency b=1 (ms) ↓")
    if has_published:
        header.append("source")
    mixed_memory = len({r["memory_kind"] for r in rows if r.get("memory_kind")}) > 1
    cells = []
    for row in rows:
        line = ([row["dataset"]] if multi_dataset else []) + [
            method_label(row),
            ",".join(row["tasks"]) if len(row["tasks"]) < 4 else f"{len(row['tasks'])} tasks",
        ] + ([row["preset"] or "", ",".join(str(s) for s in row["seeds"]), str(row["n"] or "")] if suite else [])
        for task, name, _, unit in task_cols:
            m = row["metrics"].get(task)
            line.append("" if m is None or m["name"] != name else
                        _fmt(mean_ci(m["values"]), digits=4 if unit == "m" else 2,
                             interval=row.get("source") == "suite"))
        line.append(_delta_cell(row))
        if tests["vs_reference"]:
            line.append(reference_cell(row))
        if tests["vs_best"]:
            line.append(best_cell(row))
        line.append({True: "★", False: "", None: ""}[row.get("pareto")])
        line.append(_trainable_cell(row))
        if param_groups:
            for group in ("method", "extras", "linears", "decoder"):
                mean = mean_ci(row["param_groups"].get(group) or []).mean
                line.append("—" if mean is None else f"{mean / 1e6:.3f}")
        if show["flops"]:
            flops = mean_ci(row["flops"]).mean
            line.append("—" if flops is None else _fmt_sig(Estimate(flops / 1e9, None, 1)))
        if show["peak_memory_mb"]:
            memory = _fmt(mean_ci(row["peak_memory_mb"]), digits=0)
            if mixed_memory and memory != "—":
                memory += {"cpu_peak_rss": " (RSS)", "cuda_max_allocated": " (CUDA)"}.get(row.get("memory_kind"), "")
            line.append(memory)
        busy = measured_busy(row)
        for _, field in SPEED_COLUMNS:
            if show[field]:
                line.append(_speed(_speed_cell(row, field), busy))
        if show["latency_ms"]:
            line.append(_speed(_fmt_sig(mean_ci(row["latency_ms"])), busy))
        if show["merged_latency_ms"]:
            line.append(_speed(_fmt_sig(mean_ci(row["merged_latency_ms"])), busy))
        if has_published:
            line.append("suite" if row.get("source") == "suite" else row.get("source_label", "published"))
        cells.append(line)
    return header, cells


def _number(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(round(value, 6) + 0.0)  # + 0.0 turns -0.0 into 0.0
    return value


def _estimate_cells(values: Sequence[float | None], counted: bool) -> list[Any]:
    """Mean, interval half-width and (``counted``) the number of values, as CSV cells."""
    estimate = mean_ci(values)
    return [_number(estimate.mean), _number(estimate.half_width)] + ([estimate.n] if counted else [])


def _test_cells(test: Any) -> list[Any]:
    """Mean paired difference, p and shared seeds of a paired test as CSV cells (its role, if it is one)."""
    if test is None:
        return ["", "", ""]
    if isinstance(test, str):
        return [test, "", ""]
    return [_number(test.mean_difference), _number(test.p_value), ";".join(str(s) for s in test.seeds)]


#: CSV columns of achieved model FLOP/s and MFU (a fraction), present when some record has them.
UTILIZATION_FIELDS = ("train_flops_per_s", "train_mfu", "inference_flops_per_s", "inference_mfu")


def csv_table(rows: Sequence[Mapping[str, Any]], param_groups: bool = False) -> tuple[list[str], list[list[Any]]]:
    """Header and numeric cells for CSV: means, 95 % interval half-widths (``.ci95``, empty with one
    value) and, for the task metrics and Δm, the number of values (``.n``) in separate columns; the
    paired tests of Δm (``delta_m.vs_reference``/``delta_m.vs_best``: mean difference, ``.p``,
    ``.seeds``, or the row's role ``reference``/``best``); full parameter counts and FLOPs; where
    some record has them, achieved model FLOP/s and MFU (:data:`UTILIZATION_FIELDS`, MFU a fraction)."""
    task_cols = _task_columns(rows)
    header = ["method", "variant", "tasks", "preset", "seeds", "n", "tag", "dataset", "source", "verified"]
    for task, name, _, _ in task_cols:
        header += [f"{task}.{name}", f"{task}.{name}.ci95", f"{task}.{name}.n"]
    header += ["delta_m", "delta_m.ci95", "delta_m.n"]
    for test in ("vs_reference", "vs_best"):
        header += [f"delta_m.{test}", f"delta_m.{test}.p", f"delta_m.{test}.seeds"]
    header += ["delta_m_baseline", "delta_m_published", "pareto", "trainable"]
    if param_groups:
        header += [f"trainable.{g}" for g in ("method", "extras", "linears", "decoder")]
    header += ["flops_per_image", "peak_memory_mb", "peak_memory_mb.ci95", "memory_kind"]
    timed = ("train_images_per_s", "inference_images_per_s", "latency_ms", "merged_latency_ms",
             "unmerged_images_per_s", "merged_images_per_s")
    for field in timed:
        header += [field, f"{field}.ci95"]
    # Only where some record carries the reading, so tables of older records keep their columns.
    with_load = any(flag is not None for row in rows for flag in row.get("busy") or [])
    if with_load:
        header.append("busy_machine")
    with_utilization = any(_any(rows, field) for field in UTILIZATION_FIELDS)
    if with_utilization:
        for field in UTILIZATION_FIELDS:
            header += [field, f"{field}.ci95"]
    cells = []
    for row in rows:
        published = row.get("source") == "published"
        line: list[Any] = [row["method"], row.get("variant", ""), ",".join(row["tasks"]), row["preset"] or "",
                           ";".join(str(s) for s in row["seeds"]), row["n"], row.get("tag", ""), row["dataset"],
                           row.get("source_label", "published") if published else "suite",
                           ("true" if row.get("verified") else "false") if published else ""]
        for task, name, _, _ in task_cols:
            m = row["metrics"].get(task)
            line += ["", "", ""] if m is None or m["name"] != name else _estimate_cells(m["values"], True)
        line += _estimate_cells(row["delta_m"], True)
        line += _test_cells(row.get("vs_reference")) + _test_cells(row.get("vs_best"))
        line += [row.get("delta_m_baseline") or "", _number(row.get("delta_m_published")),
                 {True: "true", False: "false", None: ""}[row.get("pareto")]]
        trainable = mean_ci(row["trainable"]).mean
        line.append("" if trainable is None else int(round(trainable)))
        if param_groups:
            for group in ("method", "extras", "linears", "decoder"):
                mean = mean_ci(row["param_groups"].get(group) or []).mean
                line.append("" if mean is None else int(round(mean)))
        flops = mean_ci(row["flops"]).mean
        line.append("" if flops is None else int(round(flops)))
        line += _estimate_cells(row["peak_memory_mb"], False) + [row.get("memory_kind") or ""]
        for field in timed:
            line += _estimate_cells(row[field], False)
        if with_load:
            flags = [flag for flag in row.get("busy") or [] if flag is not None]
            line.append(("true" if any(flags) else "false") if flags else "")
        if with_utilization:
            for field in UTILIZATION_FIELDS:
                line += _estimate_cells(row.get(field) or [], False)
        cells.append(line)
    return header, cells


_LATEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}
_LATEX_SYMBOLS = {"±": r"$\pm$", "↑": r"$\uparrow$", "↓": r"$\downarrow$", "Δ": r"$\Delta$", "★": r"$\star$",
                  "—": "--", "²": r"$^2$", "≈": r"$\approx$", "−": r"$-$", "<": r"$<$",
                  BUSY_MARK: r"$^\dagger$"}


def latex_escape(text: str) -> str:
    """Escape LaTeX specials and turn the table's Unicode symbols into math-mode commands."""
    return "".join(_LATEX_SYMBOLS.get(ch) or _LATEX_ESCAPES.get(ch, ch) for ch in text)


def _latex(header: Sequence[str], cells: Sequence[Sequence[str]]) -> str:
    align = "".join("l" if i < 4 or h in ("source", "Pareto", "dataset") else "r" for i, h in enumerate(header))
    lines = [f"\\begin{{tabular}}{{{align}}}", "\\toprule", " & ".join(latex_escape(h) for h in header) + r" \\",
             "\\midrule"]
    lines += [" & ".join(latex_escape(str(c)) for c in row) + r" \\" for row in cells]
    lines += ["\\bottomrule", "\\end{tabular}"]
    return "\n".join(lines) + "\n"


def _html(header: Sequence[str], cells: Sequence[Sequence[str]]) -> str:
    from html import escape

    lines = ['<table class="mtbench-leaderboard">', "<thead>", "<tr>" + "".join(f"<th>{escape(h)}</th>" for h in header)
             + "</tr>", "</thead>", "<tbody>"]
    lines += ["<tr>" + "".join(f"<td>{escape(str(c))}</td>" for c in row) + "</tr>" for row in cells]
    lines += ["</tbody>", "</table>"]
    return "\n".join(lines) + "\n"


def render(rows: Sequence[Mapping[str, Any]], fmt: str = "md", param_groups: bool = False,
           reference_method: str = "full") -> str:
    """The leaderboard table alone as Markdown, CSV, LaTeX (booktabs) or HTML."""
    if fmt == "csv":
        import csv
        import io

        header, cells = csv_table(rows, param_groups)
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(cells)
        return buffer.getvalue()
    header, cells = table(rows, param_groups, reference_method)
    if fmt == "latex":
        return _latex(header, cells)
    if fmt == "html":
        return _html(header, cells)
    if fmt != "md":
        raise ValueError(f"unknown format {fmt!r}; use one of {FORMATS}")
    from tabulate import tabulate

    return tabulate(cells, headers=header, tablefmt="github", disable_numparse=True) + "\n"
