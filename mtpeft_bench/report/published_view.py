"""The published tables as text: rows for the leaderboard, and the whole table with its checks.

Two views of :mod:`mtpeft_bench.report.published`:

- :func:`leaderboard_rows` turns the shown rows (no ablations, copies folded into their original)
  into rows of :mod:`mtpeft_bench.report.rows`, so ``mtbench compare --published DATASET`` prints them
  beside the measured ones, each with its recomputed Δm, the printed Δm where it differs, a
  :data:`~mtpeft_bench.report.published.FLAG_MARK` where they disagree by more than 0.05 and a note;
- :func:`render_published` prints every row of the file (copies and ablations included), with the
  printed and recomputed Δm, the parameter-counting convention, provenance and the checks'
  findings (``mtbench compare --published DATASET --only-published``). Torch-free.
"""

from __future__ import annotations

import csv
import io
from typing import Any

from mtpeft_bench.report.published import (FLAG_MARK, FLAG_TOLERANCE, PublishedTable, check_row, check_table,
                                           copies_of, load_table, shown_rows)

#: Row fields of :mod:`mtpeft_bench.report.rows` that published rows have no value for.
_EMPTY_FIELDS = ("peak_memory_mb", "train_images_per_s", "inference_images_per_s", "latency_ms", "flops",
                 "merged_latency_ms", "merged_images_per_s", "unmerged_images_per_s", "train_flops_per_s",
                 "train_mfu", "inference_flops_per_s", "inference_mfu")


def _citation(table: PublishedTable, paper: str) -> str:
    p = table.papers[paper]
    parts = [f'"{p.title}"', p.authors, p.venue, p.url,
             f"pretraining {p.pretraining}" if p.pretraining else "pretraining not stated", p.training]
    return "; ".join(x for x in parts if x)


def leaderboard_rows(dataset: str) -> list[dict[str, Any]]:
    """The published rows of ``dataset`` shown beside measured runs, as leaderboard rows.

    Δm is the one recomputed from the row's metrics (None where it cannot be); the printed Δm travels
    as ``delta_m_published``, ``delta_m_flag`` holds the mark when they disagree, and ``note`` says
    why, with the row's caveat and which other papers print the same row. Empty when the dataset
    has no published table.
    """
    table = load_table(dataset)
    if table is None:
        return []
    rows = []
    for row in shown_rows(table):
        check = check_row(table, row)
        tasks = [t for t in table.columns if t in row.metrics]
        metrics = {t: {"name": table.columns[t]["metric"], "unit": table.columns[t].get("unit", ""),
                       "higher_is_better": bool(table.columns[t]["higher_is_better"]), "values": [row.metrics[t]]}
                   for t in tasks}
        copies = copies_of(table, row)
        problems = [p for c in copies for p in check_row(table, c).problems if not p.startswith(FLAG_MARK)]
        note = ([f"{row.confidence}: {table.confidence[row.confidence]}"] if row.confidence == "recalled" else []) \
            + list(check.problems) + problems
        if copies:
            note.append("also printed by " + ", ".join(table.label(c.paper) for c in copies))
        if row.caveat:
            note.append(row.caveat)
        params = row.params_m_printed
        rows.append({
            "dataset": dataset, "method": row.method, "tasks": tasks, "preset": "", "tag": "", "seeds": [], "n": 0,
            "metrics": metrics, "source": "published", "delta_m": [check.delta_m],
            "delta_m_baseline": "published single-task" if check.delta_m is not None else None,
            "delta_m_published": row.delta_m_printed, "delta_m_flag": FLAG_MARK if check.flagged else "",
            "trainable": [params * 1e6 if params is not None else None], "param_groups": {}, "memory_kind": None,
            **{name: [None] for name in _EMPTY_FIELDS},
            "verified": row.verified, "source_key": row.paper,
            "source_label": table.label(row.paper), "citation": _citation(table, row.paper),
            "note": "; ".join(note),
        })
    return rows


def _signed(value: float | None) -> str:
    return "—" if value is None else f"{value:+.2f}"


def _metric(value: float) -> str:
    """As printed: at least two decimals, more where the source gives them (depth 0.606)."""
    text = f"{value:.4f}".rstrip("0")
    return text + "0" * max(0, 2 - len(text.split(".")[1]))


def _decoders(value: bool | None) -> str:
    return {True: "yes", False: "no", None: "?"}[value]


def _cells(table: PublishedTable) -> tuple[list[str], list[list[Any]], list[Any]]:
    """Header, cells and the per-row checks of the full view."""
    tasks = list(table.columns)
    header = ["#", "paper", "method", "kind", "backbone", "pretraining"]
    header += [f"{t} {c['metric']} {'↑' if c['higher_is_better'] else '↓'}" for t, c in table.columns.items()]
    header += ["Δm printed", "Δm recomputed", "check", "params (M) printed", "decoders counted", "copied from",
               "confidence"]
    checks = check_table(table)
    cells = []
    for number, check in enumerate(checks, 1):
        row = check.row
        params = row.params_text or (f"{row.params_m_printed:.2f}" if row.params_m_printed is not None else "—")
        cells.append([number, table.label(row.paper), row.method, row.kind, row.backbone, row.pretraining or "?"]
                     + [_metric(row.metrics[t]) if t in row.metrics else "—" for t in tasks]
                     + [_signed(row.delta_m_printed), _signed(check.delta_m), FLAG_MARK if check.flagged else "",
                        params, _decoders(row.params_include_decoder),
                        table.label(row.copied_from) if row.copied_from else "", row.confidence])
    return header, cells, checks


def _notes(table: PublishedTable, checks: list) -> list[str]:
    out = [f"Δm recomputed: mean over tasks of ±(M − B)/B × 100 against the single-task row of the row's own "
           f"paper; {FLAG_MARK}: the printed Δm is more than {FLAG_TOLERANCE} away from it."]
    for number, check in enumerate(checks, 1):
        for problem in check.problems:
            out.append(f"#{number} {check.row.method} ({table.label(check.row.paper)}): {problem}")
    for number, check in enumerate(checks, 1):
        row = check.row
        why = f" No Δm recomputed: {check.why_no_delta}." if check.why_no_delta and row.delta_m_printed is not None \
            else ""
        out.append(f"#{number} source: {row.source}" + (f"; caveat: {row.caveat}" if row.caveat else "") + f".{why}")
    out += [f"{p.label}: {_citation(table, key)}" for key, p in table.papers.items()]
    out += [f"confidence '{level}': {text}" for level, text in table.confidence.items()]
    out += [f"Not a row ({item.get('method')}): {item.get('value')} — {item.get('source')}; {item.get('why')}"
            for item in table.unplaced]
    return out


def render_published(dataset: str, fmt: str = "md") -> str:
    """Every published row of ``dataset`` with the checks' findings, as Markdown, CSV, LaTeX or HTML.

    Raises:
        ValueError: the dataset has no published table, or ``fmt`` is unknown.
    """
    table = load_table(dataset)
    if table is None:
        raise ValueError(f"no published table for {dataset!r}")
    header, cells, checks = _cells(table)
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(header + ["source", "caveat", "problems"])
        for line, check in zip(cells, checks):
            writer.writerow(line + [check.row.source, check.row.caveat or "", " | ".join(check.problems)])
        return out.getvalue()
    from tabulate import tabulate

    styles = {"md": "github", "latex": "latex_booktabs", "html": "html"}
    if fmt not in styles:
        raise ValueError(f"unknown format {fmt!r}; use one of md, csv, latex, html")
    text = tabulate(cells, headers=header, tablefmt=styles[fmt], disable_numparse=True)
    notes = _notes(table, checks)
    if fmt == "md":
        return f"## {dataset}: published rows\n\n{text}\n\n" + "".join(f"- {line}\n" for line in notes)
    if fmt == "latex":
        return "".join(f"% {line}\n" for line in notes) + text + "\n"
    from html import escape

    return f"<h2>{escape(dataset)}: published rows</h2>\n{text}\n" + "".join(f"<p>{escape(n)}</p>\n" for n in notes)
