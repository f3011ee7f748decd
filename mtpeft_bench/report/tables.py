"""Leaderboard rows (from :mod:`mtpeft_bench.report.rows`) as text: Markdown, CSV, LaTeX, HTML. Torch-free.

Seeds are shown as mean ± sample standard deviation; optional columns (GFLOPs, memory, images/s,
latency, merged latency, the source of published rows, parameter groups) appear only when some
row has a value. CSV keeps numbers numeric, with means and standard deviations in separate columns.
"""

from __future__ import annotations

import math
import statistics
from typing import Any, Mapping, Sequence


FORMATS = ("md", "csv", "latex", "html")


def mean_std(values: Sequence[float | None]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (n − 1) of the values that are not None/NaN; std is None for
    fewer than two values."""
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not values:
        return None, None
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else None
    return mean, std


def _decimals(value: float, significant: int) -> int:
    if value == 0 or not math.isfinite(value):
        return 0
    return max(0, significant - 1 - math.floor(math.log10(abs(value))))


def _fmt(mean: float | None, std: float | None, digits: int = 2, sign: bool = False) -> str:
    if mean is None:
        return "—"
    if abs(mean) < 0.5 * 10 ** -digits:
        mean = 0.0  # no "-0.00" (a lower-is-better task equal to its baseline gives Δm = -0.0)
    text = f"{mean:+.{digits}f}" if sign else f"{mean:.{digits}f}"
    return f"{text} ± {std:.{digits}f}" if std is not None else text


def _fmt_sig(mean: float | None, std: float | None, significant: int = 3) -> str:
    """Mean to ``significant`` digits, the std to the same decimals (169.4 → ``169``, 0.2676 → ``0.268``)."""
    if mean is None:
        return "—"
    return _fmt(mean, std, _decimals(mean, significant))


def _any(rows: Sequence[Mapping[str, Any]], field: str) -> bool:
    return any(mean_std(r.get(field) or [])[0] is not None for r in rows)


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


def _method_cell(row: Mapping[str, Any]) -> str:
    text = row["method"] + (f" ({row['variant']})" if row.get("variant") else "") \
        + (f" [{row['tag']}]" if row.get("tag") else "")
    if row.get("source") == "published":
        text += " (published)" if row.get("verified") else " (published, unverified)"
    return text


def _delta_cell(row: Mapping[str, Any]) -> str:
    text = _fmt(*mean_std(row["delta_m"]), sign=True)
    if text != "—" and row.get("delta_m_baseline") == "reference":
        text += " (ref)"
    published = row.get("delta_m_published")
    mean = mean_std(row["delta_m"])[0]
    if published is not None and (mean is None or abs(round(mean, 2) - float(published)) >= 0.005):
        text += f" (paper {float(published):+.2f})"
    if row.get("delta_m_flag"):  # a published row whose printed Δm disagrees with its metrics (note below)
        text += f" {row['delta_m_flag']}"
    return text


def _trainable_cell(row: Mapping[str, Any]) -> str:
    mean = mean_std(row["trainable"])[0]
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


def table(rows: Sequence[Mapping[str, Any]], param_groups: bool = False) -> tuple[list[str], list[list[str]]]:
    """Header and string cells of the leaderboard (the Markdown, LaTeX and HTML tables).

    Optional columns appear only when some row has a value: preset and seeds (suite runs), GFLOPs,
    memory, images/s, latency, merged latency, the source of published rows; ``param_groups`` adds
    the trainable parameters of each group.
    """
    task_cols = _task_columns(rows)
    multi_dataset = len({r["dataset"] for r in rows}) > 1
    has_published = any(r.get("source") == "published" for r in rows)
    show = {f: _any(rows, f) for f in ("flops", "latency_ms", "merged_latency_ms", "peak_memory_mb",
                                       "train_images_per_s", "inference_images_per_s")}
    suite = any(r.get("source") == "suite" for r in rows)
    header = (["dataset"] if multi_dataset else []) + ["method", "tasks"] + (["preset", "seeds"] if suite else [])
    header += [f"{t} {n} {'↑' if hib else '↓'}" + (f" ({u})" if u and u != "%" else "") for t, n, hib, u in task_cols]
    header += ["Δm % ↑", "Pareto", "trainable (M) ↓"]
    if param_groups:
        header += ["method (M)", "extras (M)", "linears (M)", "decoder (M)"]
    if show["flops"]:
        header.append("GFLOPs/img ↓")
    header += [name for name, field in ((_memory_header(rows), "peak_memory_mb"),
                                        ("train img/s ↑", "train_images_per_s"),
                                        ("infer img/s ↑", "inference_images_per_s")) if show[field]]
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
            _method_cell(row),
            ",".join(row["tasks"]) if len(row["tasks"]) < 4 else f"{len(row['tasks'])} tasks",
        ] + ([row["preset"] or "", ",".join(str(s) for s in row["seeds"])] if suite else [])
        for task, name, _, unit in task_cols:
            m = row["metrics"].get(task)
            line.append("" if m is None or m["name"] != name else
                        _fmt(*mean_std(m["values"]), digits=4 if unit == "m" else 2))
        line.append(_delta_cell(row))
        line.append({True: "★", False: "", None: ""}[row.get("pareto")])
        line.append(_trainable_cell(row))
        if param_groups:
            for group in ("method", "extras", "linears", "decoder"):
                mean = mean_std(row["param_groups"].get(group) or [])[0]
                line.append("—" if mean is None else f"{mean / 1e6:.3f}")
        if show["flops"]:
            flops = mean_std(row["flops"])[0]
            line.append("—" if flops is None else _fmt_sig(flops / 1e9, None))
        if show["peak_memory_mb"]:
            memory = _fmt(*mean_std(row["peak_memory_mb"]), digits=0)
            if mixed_memory and memory != "—":
                memory += {"cpu_peak_rss": " (RSS)", "cuda_max_allocated": " (CUDA)"}.get(row.get("memory_kind"), "")
            line.append(memory)
        busy = measured_busy(row)
        for field in ("train_images_per_s", "inference_images_per_s"):
            if show[field]:
                line.append(_speed(_fmt(*mean_std(row[field]), digits=1), busy))
        if show["latency_ms"]:
            line.append(_speed(_fmt_sig(*mean_std(row["latency_ms"])), busy))
        if show["merged_latency_ms"]:
            line.append(_speed(_fmt_sig(*mean_std(row["merged_latency_ms"])), busy))
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


def csv_table(rows: Sequence[Mapping[str, Any]], param_groups: bool = False) -> tuple[list[str], list[list[Any]]]:
    """Header and numeric cells for CSV: means and standard deviations in separate columns, full
    parameter counts and FLOPs, no formatting."""
    task_cols = _task_columns(rows)
    header = ["method", "variant", "tasks", "preset", "seeds", "n", "tag", "dataset", "source", "verified"]
    for task, name, _, _ in task_cols:
        header += [f"{task}.{name}", f"{task}.{name}.std"]
    header += ["delta_m", "delta_m.std", "delta_m_baseline", "delta_m_published", "pareto", "trainable"]
    if param_groups:
        header += [f"trainable.{g}" for g in ("method", "extras", "linears", "decoder")]
    header += ["flops_per_image", "peak_memory_mb", "peak_memory_mb.std", "memory_kind"]
    timed = ("train_images_per_s", "inference_images_per_s", "latency_ms", "merged_latency_ms",
             "unmerged_images_per_s", "merged_images_per_s")
    for field in timed:
        header += [field, f"{field}.std"]
    # Only where some record carries the reading, so tables of older records keep their columns.
    with_load = any(flag is not None for row in rows for flag in row.get("busy") or [])
    if with_load:
        header.append("busy_machine")
    cells = []
    for row in rows:
        published = row.get("source") == "published"
        line: list[Any] = [row["method"], row.get("variant", ""), ",".join(row["tasks"]), row["preset"] or "",
                           ";".join(str(s) for s in row["seeds"]), row["n"], row.get("tag", ""), row["dataset"],
                           row.get("source_label", "published") if published else "suite",
                           ("true" if row.get("verified") else "false") if published else ""]
        for task, name, _, _ in task_cols:
            m = row["metrics"].get(task)
            line += ["", ""] if m is None or m["name"] != name else [_number(v) for v in mean_std(m["values"])]
        line += [_number(v) for v in mean_std(row["delta_m"])]
        line += [row.get("delta_m_baseline") or "", _number(row.get("delta_m_published")),
                 {True: "true", False: "false", None: ""}[row.get("pareto")]]
        trainable = mean_std(row["trainable"])[0]
        line.append("" if trainable is None else int(round(trainable)))
        if param_groups:
            for group in ("method", "extras", "linears", "decoder"):
                mean = mean_std(row["param_groups"].get(group) or [])[0]
                line.append("" if mean is None else int(round(mean)))
        flops = mean_std(row["flops"])[0]
        line.append("" if flops is None else int(round(flops)))
        line += [_number(v) for v in mean_std(row["peak_memory_mb"])] + [row.get("memory_kind") or ""]
        for field in timed:
            line += [_number(v) for v in mean_std(row[field])]
        if with_load:
            flags = [flag for flag in row.get("busy") or [] if flag is not None]
            line.append(("true" if any(flags) else "false") if flags else "")
        cells.append(line)
    return header, cells


_LATEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}
_LATEX_SYMBOLS = {"±": r"$\pm$", "↑": r"$\uparrow$", "↓": r"$\downarrow$", "Δ": r"$\Delta$", "★": r"$\star$",
                  "—": "--", "²": r"$^2$",
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


def render(rows: Sequence[Mapping[str, Any]], fmt: str = "md", param_groups: bool = False) -> str:
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
    header, cells = table(rows, param_groups)
    if fmt == "latex":
        return _latex(header, cells)
    if fmt == "html":
        return _html(header, cells)
    if fmt != "md":
        raise ValueError(f"unknown format {fmt!r}; use one of {FORMATS}")
    from tabulate import tabulate

    return tabulate(cells, headers=header, tablefmt="github", disable_numparse=True) + "\n"


def notes(rows: Sequence[Mapping[str, Any]], baseline_method: str) -> list[str]:
    """What a reader needs to read the table: Δm, Pareto, the measurements, and each published source."""
    out = [f"Δm: mean relative change of each task's primary metric vs single-task runs of '{baseline_method}' "
           "with the same recipe; '(ref)': vs published single-task baselines. Mean ± sample std over seeds.",
           "Pareto ★: no other run of the same dataset and task set has fewer trainable parameters and a higher Δm "
           "(published rows excluded).",
           "GFLOPs: forward FLOPs per image at batch 1 (torch FlopCounterMode: matmuls and convolutions only). "
           "Images/s: model compute after warm-up. Latency: median forward at batch 1."]
    # Why a Δm cell is empty, once per reason (the methods it concerns first).
    missing: dict[str, list[str]] = {}
    for row in rows:
        if row.get("delta_m_missing") and all(v is None for v in row.get("delta_m") or [None]):
            name = _method_cell(row)
            missing.setdefault(row["delta_m_missing"], [])
            if name not in missing[row["delta_m_missing"]]:
                missing[row["delta_m_missing"]].append(name)
    out += [f"Δm — for {', '.join(names)}: {reason}." for reason, names in missing.items()]
    busy = [_method_cell(row) for row in rows if measured_busy(row)]
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
                    param_groups: bool = False) -> str:
    """What ``mtbench compare`` prints: Markdown and HTML get a section per dataset and the notes;
    CSV one table; LaTeX one table with the notes as comments."""
    if fmt == "csv":
        return render(rows, "csv", param_groups)
    if fmt == "latex":
        comments = "".join(f"% {latex_escape(line)}\n" for line in notes(rows, baseline_method))
        return comments + render(rows, "latex", param_groups)
    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    parts = []
    for name in datasets:
        sub = [r for r in rows if r["dataset"] == name]
        if fmt == "html":
            from html import escape

            parts.append(f"<h2>{escape(name)}</h2>\n" + render(sub, "html", param_groups))
        else:
            parts.append(f"## {name}\n\n" + render(sub, "md", param_groups))
    if fmt == "html":
        from html import escape

        parts.append("".join(f"<p>{escape(line)}</p>\n" for line in notes(rows, baseline_method)))
        return "\n".join(parts)
    parts.append("".join(f"- {line}\n" for line in notes(rows, baseline_method)))
    return "\n".join(parts)
