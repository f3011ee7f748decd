"""Leaderboards from result records (``mtbench compare``). Reads JSON only; never imports torch.

One row per (dataset, method, task set, preset, tag, recipe): the per-task primary metrics with
↑/↓, Δm against the baseline method's single-task runs, whether the row is on the Pareto front of
(trainable parameters ↓, Δm ↑), trainable parameters (optionally by group), forward FLOPs, peak
memory, training and inference images/s and latency at batch 1 (merged too, where the method can
merge). Several seeds of a row are shown as mean ± sample standard deviation. Published reference
rows (``tasks/reference/<dataset>.yaml``, section ``published_rows``) can be shown beside the
suite's runs; they are marked as published and never enter the Pareto front.
"""

from __future__ import annotations

import math
import statistics
from typing import Any, Iterable, Mapping, Sequence

from mtpeft_bench.baselines import compute_delta, load_reference
from mtpeft_bench.delta import delta_m


FORMATS = ("md", "csv", "latex", "html")
#: ``--sort`` keys: the row value they sort by and whether larger is better (sorted first).
SORT_KEYS: dict[str, tuple[str, bool]] = {
    "delta_m": ("delta_m", True), "params": ("trainable", False), "flops": ("flops", False),
    "memory": ("peak_memory_mb", False), "train": ("train_images_per_s", True),
    "infer": ("inference_images_per_s", True), "latency": ("latency_ms", False), "method": ("method", False),
}
EXTRA_GROUPS = ("patch_embed", "norms", "rel_pos", "reductions")
_NUMERIC = ("delta_m", "trainable", "flops", "peak_memory_mb", "train_images_per_s", "inference_images_per_s",
            "latency_ms", "merged_latency_ms", "merged_images_per_s", "unmerged_images_per_s")


def mean_std(values: Sequence[float | None]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (n − 1) of the values that are not None/NaN; std is None for
    fewer than two values."""
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not values:
        return None, None
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else None
    return mean, std


_mean_std = mean_std  # the name other modules used before


def pareto_front(points: Sequence[tuple[float | None, float | None]]) -> list[bool | None]:
    """Which (cost, gain) points are on the Pareto front (lower cost and higher gain are better).

    A point is on the front when no other point has cost ≤ and gain ≥ with one of them strict
    (equal points are all on it). Points with a missing coordinate get None.
    """
    marks: list[bool | None] = []
    for i, (cost, gain) in enumerate(points):
        if cost is None or gain is None:
            marks.append(None)
            continue
        dominated = any(
            j != i and c is not None and g is not None and c <= cost and g >= gain and (c < cost or g > gain)
            for j, (c, g) in enumerate(points))
        marks.append(not dominated)
    return marks


def _row_key(rec: Mapping[str, Any]) -> tuple:
    return (rec["dataset"], rec["method"], tuple(rec.get("tasks", [])), rec.get("preset"), rec.get("tag", ""),
            rec.get("recipe_key"))


def _get(mapping: Mapping[str, Any] | None, *path: str) -> Any:
    for key in path:
        if not isinstance(mapping, Mapping):
            return None
        mapping = mapping.get(key)
    return mapping


def _suite_row(key: tuple, recs: Sequence[Mapping[str, Any]], records: Sequence[Mapping[str, Any]],
               baseline_method: str) -> dict[str, Any]:
    first = recs[0]
    row: dict[str, Any] = {
        "dataset": key[0], "method": key[1], "tasks": list(key[2]), "preset": key[3], "tag": key[4],
        "seeds": sorted(r.get("seed") for r in recs), "n": len(recs), "metrics": {}, "source": "suite",
    }
    for task in first.get("tasks", []):
        spec = first["task_specs"][task]
        name = spec["primary"]
        meta = spec["metrics"][name]
        row["metrics"][task] = {"name": name, "higher_is_better": meta["higher_is_better"],
                                "unit": meta.get("unit", ""), "values": [_get(r, "metrics", task, name) for r in recs]}
    deltas = [compute_delta(r, records, baseline_method) for r in recs]
    row["delta_m"] = [d["value"] for d in deltas]
    sources = {d["baseline"].get("source") for d in deltas if d["value"] is not None}
    row["delta_m_baseline"] = ",".join(sorted(s for s in sources if s)) or None
    row["trainable"] = [_get(r, "params", "summary", "total_trainable") for r in recs]
    groups = [_get(r, "params", "groups") or {} for r in recs]
    row["param_groups"] = {
        "method": [_get(g, "method", "trainable") for g in groups],
        "extras": [sum(_get(g, k, "trainable") or 0 for k in EXTRA_GROUPS) if g else None for g in groups],
        "linears": [_get(g, "linears", "trainable") for g in groups],
        "decoder": [_get(g, "decoder", "trainable") for g in groups],
    }
    eff = [r.get("efficiency") or {} for r in recs]
    kinds = {e.get("memory_kind") for e in eff if e.get("memory_kind")}
    row["memory_kind"] = kinds.pop() if len(kinds) == 1 else ("mixed" if kinds else None)
    for field in ("peak_memory_mb", "train_images_per_s", "inference_images_per_s", "latency_ms"):
        row[field] = [e.get(field) for e in eff]
    row["flops"] = [e.get("flops_per_image") for e in eff]
    row["merged_latency_ms"] = [_get(e, "inference", "merged", "latency_ms") for e in eff]
    row["merged_images_per_s"] = [_get(e, "inference", "merged", "images_per_s") for e in eff]
    row["unmerged_images_per_s"] = [_get(e, "inference", "unmerged", "images_per_s") for e in eff]
    return row


def leaderboard(records: Iterable[Mapping[str, Any]], dataset: str | None = None, baseline_method: str = "full",
                methods: Sequence[str] | None = None, tags: Sequence[str] | None = None,
                sort: str = "delta_m") -> list[dict[str, Any]]:
    """Aggregate completed runs into leaderboard rows (dicts of raw per-seed numbers).

    Args:
        records: run records (see :mod:`mtpeft_bench.results`).
        dataset: keep only this dataset.
        baseline_method: the method whose single-task runs are the Δm baselines (they are found
            among all records of the dataset, also when ``methods`` leaves them out of the table).
        methods, tags: keep only rows of these methods / tags.
        sort: a key of :data:`SORT_KEYS`.

    Returns:
        Rows sorted by dataset, then task set (more tasks first), then ``sort``; each row carries
        ``pareto`` (on the front of its dataset and task set, or None without Δm).
    """
    records = [r for r in records if r.get("status") == "completed"]
    if dataset:
        records = [r for r in records if r.get("dataset") == dataset]
    groups: dict[tuple, list[Mapping[str, Any]]] = {}
    for rec in records:
        groups.setdefault(_row_key(rec), []).append(rec)
    rows = [_suite_row(key, recs, records, baseline_method) for key, recs in groups.items()]
    if methods:
        rows = [r for r in rows if r["method"] in methods]
    if tags:
        rows = [r for r in rows if r["tag"] in tags]
    mark_pareto(rows)
    return sort_rows(rows, sort)


def mark_pareto(rows: Sequence[dict[str, Any]]) -> None:
    """Set ``row["pareto"]`` for the suite's rows, per dataset and task set with at least two rows
    (otherwise, and for published rows, None)."""
    sets: dict[tuple, list[dict[str, Any]]] = {}
    for row in rows:
        row["pareto"] = None
        if row.get("source") == "suite":
            sets.setdefault((row["dataset"], tuple(row["tasks"])), []).append(row)
    for members in sets.values():
        if len(members) < 2:
            continue  # a front of one says nothing
        points = [(mean_std(r["trainable"])[0], mean_std(r["delta_m"])[0]) for r in members]
        for row, mark in zip(members, pareto_front(points)):
            row["pareto"] = mark


def sort_rows(rows: Sequence[dict[str, Any]], sort: str = "delta_m") -> list[dict[str, Any]]:
    """Sort by dataset, suite rows before published ones, task set (more tasks first), then ``sort``."""
    if sort not in SORT_KEYS:
        from mtpeft_bench.errors import UserError

        raise UserError(f"unknown sort key '{sort}'; use one of {', '.join(SORT_KEYS)}")
    field, larger_first = SORT_KEYS[sort]

    def key(row: Mapping[str, Any]) -> tuple:
        if field == "method":
            value, missing = 0.0, 0
        else:
            mean = mean_std(row[field])[0]
            value, missing = (0.0, 1) if mean is None else ((-mean if larger_first else mean), 0)
        return (row["dataset"], row.get("source") != "suite", -len(row["tasks"]), tuple(row["tasks"]), missing,
                value, row["method"], row.get("tag", ""))

    return sorted(rows, key=key)


# -- published rows ----------------------------------------------------------------------------


def published_rows(dataset: str) -> list[dict[str, Any]]:
    """The ``published_rows`` of ``tasks/reference/<dataset>.yaml`` as leaderboard rows.

    Their Δm is recomputed from the row's metrics against the file's single-task values (the paper's
    own Δm, where the sources give one, travels as ``delta_m_published``). Empty when the file or
    the section does not exist.
    """
    reference = load_reference(dataset) or {}
    section = reference.get("published_rows") or {}
    columns = section.get("columns") or {}
    sources = section.get("sources") or {}
    baseline = (reference.get("single_task") or {}).get("values") or {}
    rows = []
    for item in section.get("rows") or []:
        values = item.get("metrics") or {}
        tasks = [t for t in columns if t in values]
        metrics = {t: {"name": columns[t]["metric"], "higher_is_better": bool(columns[t]["higher_is_better"]),
                       "unit": columns[t].get("unit", ""), "values": [float(values[t])]} for t in tasks}
        delta = None
        if tasks and all(t in baseline for t in tasks):
            delta = delta_m({t: float(values[t]) for t in tasks}, {t: float(baseline[t]) for t in tasks},
                            {t: metrics[t]["higher_is_better"] for t in tasks})
        source = sources.get(item.get("source"), {})
        params = item.get("params_m")
        rows.append({
            "dataset": dataset, "method": item["method"], "tasks": tasks, "preset": "", "tag": "", "seeds": [],
            "n": 0, "metrics": metrics, "source": "published", "delta_m": [delta],
            "delta_m_baseline": "published single-task" if delta is not None else None,
            "delta_m_published": item.get("delta_m_published"),
            "trainable": [params * 1e6 if params is not None else None], "param_groups": {}, "memory_kind": None,
            **{field: [None] for field in _NUMERIC if field not in ("delta_m", "trainable")},
            "verified": bool(item.get("verified", False)), "source_key": item.get("source"),
            "source_label": source.get("label", item.get("source", "")), "citation": source.get("citation", ""),
            "note": item.get("note", ""),
        })
    return rows


def with_published(rows: Sequence[dict[str, Any]], datasets: Iterable[str], sort: str = "delta_m"
                   ) -> list[dict[str, Any]]:
    """``rows`` plus the published rows of ``datasets``, sorted."""
    extra = [row for name in sorted(set(datasets)) for row in published_rows(name)]
    out = list(rows) + extra
    mark_pareto(out)
    return sort_rows(out, sort)


# -- formatting --------------------------------------------------------------------------------


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
    text = row["method"] + (f" [{row['tag']}]" if row.get("tag") else "")
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
    return text


def _trainable_cell(row: Mapping[str, Any]) -> str:
    mean = mean_std(row["trainable"])[0]
    if mean is None:
        return "—"
    return f"{mean / 1e6:.2f}" if row.get("source") == "published" else f"{mean / 1e6:.3f}"


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
        for field in ("train_images_per_s", "inference_images_per_s"):
            if show[field]:
                line.append(_fmt(*mean_std(row[field]), digits=1))
        if show["latency_ms"]:
            line.append(_fmt_sig(*mean_std(row["latency_ms"])))
        if show["merged_latency_ms"]:
            line.append(_fmt_sig(*mean_std(row["merged_latency_ms"])))
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
    header = ["method", "tasks", "preset", "seeds", "n", "tag", "dataset", "source", "verified"]
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
    cells = []
    for row in rows:
        published = row.get("source") == "published"
        line: list[Any] = [row["method"], ",".join(row["tasks"]), row["preset"] or "",
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
        cells.append(line)
    return header, cells


_LATEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}
_LATEX_SYMBOLS = {"±": r"$\pm$", "↑": r"$\uparrow$", "↓": r"$\downarrow$", "Δ": r"$\Delta$", "★": r"$\star$",
                  "—": "--", "²": r"$^2$"}


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
