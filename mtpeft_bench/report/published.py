"""The published multi-task PEFT tables as data, and the checks run on them. Torch-free.

The numbers live in one package file per dataset, ``tasks/reference/<dataset>.yaml`` (installed as
``mtpeft_bench.tasks/reference``; its header documents every field). Each row is one printed row
of one paper; a row that a later paper copies appears again under that paper, marked
``copied_from``. This module loads and validates the file and checks it:

- **Δm recomputed.** Every row with per-task metrics gets its Δm recomputed (docs/protocol.md 3.1:
  the mean over tasks of ±(M_t − B_t)/B_t × 100) against the single-task row of its own paper (or of
  ``baseline_paper`` for sources that print none). A printed Δm more than :data:`FLAG_TOLERANCE`
  away from the recomputed one is flagged. Example: MTLoRA's full fine-tuning row prints +2.23;
  its four metrics give +2.45.
- **Copies compared.** A copied row whose original is in the file is compared with it, number by
  number (e.g. DiTASK prints MTLoRA r=64 with 6.40M parameters where MTLoRA prints 8.34M).

Rendering lives in :mod:`mtpeft_bench.report.published_view`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Mapping

from mtpeft_bench.report.delta import delta_m

#: A printed Δm further than this (in Δm points) from the recomputed one is flagged.
FLAG_TOLERANCE = 0.05
#: The mark next to a flagged Δm.
FLAG_MARK = "⚠"
#: What a row is in its paper's table.
KINDS = ("single_task", "main", "ablation")
#: Confidence levels whose numbers were read in a primary source (the paper's abstract, an official
#: repository or issue thread); every other level is unverified.
VERIFIED_CONFIDENCE = ("repository", "abstract")

_REQUIRED = ("paper", "method", "kind", "backbone", "metrics", "source", "confidence")


@dataclass(frozen=True)
class Paper:
    """One source of published rows (a paper, a GitHub issue, a README)."""

    key: str
    label: str
    title: str
    authors: str
    venue: str
    url: str
    pretraining: str | None
    training: str


@dataclass(frozen=True)
class PublishedRow:
    """One printed row, as printed (see the header of ``tasks/reference/pascal_mt.yaml``)."""

    paper: str
    method: str
    kind: str
    backbone: str
    pretraining: str | None
    metrics: dict[str, float]
    delta_m_printed: float | None
    params_m_printed: float | None
    params_text: str | None
    params_include_decoder: bool | None
    source: str
    copied_from: str | None
    baseline_paper: str | None
    confidence: str
    caveat: str | None

    @property
    def key(self) -> tuple[str, str]:
        return self.paper, self.method

    @property
    def verified(self) -> bool:
        return self.confidence in VERIFIED_CONFIDENCE


@dataclass(frozen=True)
class Check:
    """What the checks found about one row: the recomputed Δm (or why there is none) and problems."""

    row: PublishedRow
    delta_m: float | None
    baseline: str | None  # label of the paper whose single-task row was used
    why_no_delta: str | None
    flagged: bool
    problems: tuple[str, ...] = ()


@dataclass
class PublishedTable:
    """The published rows of one dataset, validated."""

    dataset: str
    columns: dict[str, dict[str, Any]]
    papers: dict[str, Paper]
    confidence: dict[str, str]
    rows: list[PublishedRow]
    unplaced: list[dict[str, str]] = field(default_factory=list)
    single_task: dict[str, Any] | None = None

    def row(self, paper: str, method: str) -> PublishedRow | None:
        return next((r for r in self.rows if r.key == (paper, method)), None)

    def baseline_row(self, row: PublishedRow) -> PublishedRow | None:
        """The single-task row of ``row``'s paper (or of its ``baseline_paper``)."""
        paper = row.baseline_paper or row.paper
        return next((r for r in self.rows if r.paper == paper and r.kind == "single_task"), None)

    def original(self, row: PublishedRow) -> PublishedRow | None:
        """The row ``row`` was copied from, where that paper's row is in the file."""
        return self.row(row.copied_from, row.method) if row.copied_from else None

    def label(self, paper: str | None) -> str:
        return self.papers[paper].label if paper in self.papers else str(paper)


def _number(value: Any, where: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{where}: expected a number, got {value!r}")
    return float(value)


def _row(item: Mapping[str, Any], table: PublishedTable, index: int) -> PublishedRow:
    where = f"{table.dataset} row {index + 1} ({item.get('paper')} / {item.get('method')})"
    missing = [k for k in _REQUIRED if k not in item]
    if missing:
        raise ValueError(f"{where}: missing {', '.join(missing)}")
    if item["kind"] not in KINDS:
        raise ValueError(f"{where}: kind {item['kind']!r} is not one of {', '.join(KINDS)}")
    for name in ("paper", "copied_from", "baseline_paper"):
        if item.get(name) is not None and item[name] not in table.papers:
            raise ValueError(f"{where}: {name} {item[name]!r} is not a key of `papers`")
    if item["confidence"] not in table.confidence:
        raise ValueError(f"{where}: confidence {item['confidence']!r} is not a key of `confidence`")
    metrics = item.get("metrics") or {}
    unknown = [t for t in metrics if t not in table.columns]
    if unknown:
        raise ValueError(f"{where}: metrics for {', '.join(unknown)}, which are not in `columns`")
    include = item.get("params_include_decoder")
    if include not in (True, False, None):
        raise ValueError(f"{where}: params_include_decoder must be true, false or null")
    return PublishedRow(
        paper=item["paper"], method=str(item["method"]), kind=item["kind"], backbone=str(item["backbone"]),
        pretraining=item.get("pretraining"), metrics={t: _number(v, where) for t, v in metrics.items()},
        delta_m_printed=_number(item.get("delta_m_printed"), where),
        params_m_printed=_number(item.get("params_m_printed"), where), params_text=item.get("params_text"),
        params_include_decoder=include, source=str(item["source"]), copied_from=item.get("copied_from"),
        baseline_paper=item.get("baseline_paper"), confidence=item["confidence"], caveat=item.get("caveat"))


def parse_table(data: Mapping[str, Any]) -> PublishedTable:
    """Validate the content of a reference file and build the table.

    Raises:
        ValueError: a field is missing or inconsistent (the message names the row).
    """
    dataset = str(data.get("dataset", "?"))
    papers = {key: Paper(key=key, label=p.get("label", key), title=p.get("title", ""), authors=p.get("authors", ""),
                         venue=p.get("venue", ""), url=p.get("url", ""), pretraining=p.get("pretraining"),
                         training=p.get("training", ""))
              for key, p in (data.get("papers") or {}).items()}
    table = PublishedTable(dataset=dataset, columns=dict(data.get("columns") or {}), papers=papers,
                           confidence=dict(data.get("confidence") or {}), rows=[],
                           unplaced=list(data.get("unplaced") or []), single_task=data.get("single_task"))
    for index, item in enumerate(data.get("rows") or []):
        row = _row(item, table, index)
        if table.row(*row.key):
            raise ValueError(f"{dataset}: two rows named {row.method!r} in {row.paper!r}")
        if row.kind == "single_task" and any(r.paper == row.paper and r.kind == "single_task" for r in table.rows):
            raise ValueError(f"{dataset}: {row.paper!r} has two single-task rows")
        table.rows.append(row)
    if table.single_task and "row" in table.single_task:
        ref = table.single_task["row"]
        target = table.row(ref.get("paper"), ref.get("method"))
        if target is None or target.kind != "single_task":
            raise ValueError(f"{dataset}: single_task.row {ref} is not a single-task row of the file")
    return table


@lru_cache(maxsize=None)
def load_table(dataset: str) -> PublishedTable | None:
    """The published table of ``dataset``, or None when the package has no reference file with rows."""
    from importlib import resources

    import yaml

    try:
        text = resources.files("mtpeft_bench.tasks").joinpath("reference", f"{dataset}.yaml").read_text("utf-8")
    except (FileNotFoundError, ModuleNotFoundError, OSError):
        return None
    data = yaml.safe_load(text) or {}
    if not data.get("rows"):
        return None
    return parse_table(data)


def published_datasets() -> list[str]:
    """The datasets that have a published table."""
    from importlib import resources

    folder = resources.files("mtpeft_bench.tasks").joinpath("reference")
    names = sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))
    return [name for name in names if load_table(name) is not None]


def single_task_values(dataset: str) -> dict[str, float] | None:
    """The metrics of the row that the file's ``single_task`` section names (the Δm baselines of runs)."""
    table = load_table(dataset)
    ref = (table.single_task or {}).get("row") if table else None
    row = table.row(ref["paper"], ref["method"]) if ref else None
    return dict(row.metrics) if row else None


def recompute(table: PublishedTable, row: PublishedRow) -> tuple[float | None, str | None, str | None]:
    """``(Δm, baseline paper label, why there is none)`` for one row, from its own metrics."""
    base = table.baseline_row(row)
    if base is None:
        return None, None, f"the file has no single-task row of {table.label(row.baseline_paper or row.paper)}"
    if row.backbone != base.backbone:
        return None, None, f"no {row.backbone} single-task row to compare with"
    if not base.metrics or any(t not in row.metrics for t in base.metrics):
        return None, None, "not every task's metric is printed"
    tasks = list(base.metrics)
    value = delta_m({t: row.metrics[t] for t in tasks}, {t: base.metrics[t] for t in tasks},
                    {t: bool(table.columns[t]["higher_is_better"]) for t in tasks})
    return value, table.label(base.paper), None


def _fmt(value: float | None, unit: str = "") -> str:
    return "none" if value is None else f"{value:.2f}{unit}"


def copy_problems(table: PublishedTable, row: PublishedRow) -> list[str]:
    """How a copied row differs from its original (empty when it matches or the original is absent)."""
    original = table.original(row)
    if original is None:
        return []
    here, there = table.label(row.paper), table.label(original.paper)
    out = []
    for task in sorted(set(row.metrics) | set(original.metrics)):
        a, b = row.metrics.get(task), original.metrics.get(task)
        if a != b:
            out.append(f"{here} prints {task} {_fmt(a)} where {there} prints {_fmt(b)}")
    if row.delta_m_printed != original.delta_m_printed:
        out.append(f"{here} prints Δm {_fmt(row.delta_m_printed)} where {there} prints "
                   f"{_fmt(original.delta_m_printed)}")
    if row.params_m_printed != original.params_m_printed:
        out.append(f"{here} prints {_fmt(row.params_m_printed, 'M')} trainable parameters where {there} prints "
                   f"{_fmt(original.params_m_printed, 'M')}")
    return out


def check_row(table: PublishedTable, row: PublishedRow) -> Check:
    """Recompute ``row``'s Δm, flag a printed Δm that disagrees, compare a copy with its original."""
    value, baseline, why = recompute(table, row)
    flagged = value is not None and row.delta_m_printed is not None \
        and abs(row.delta_m_printed - value) > FLAG_TOLERANCE
    problems = []
    if flagged:
        problems.append(f"{FLAG_MARK} printed Δm {row.delta_m_printed:+.2f}, recomputed {value:+.2f} from the row's "
                        f"own metrics against the single-task row of {baseline} (more than {FLAG_TOLERANCE} apart)")
    problems += copy_problems(table, row)
    return Check(row=row, delta_m=value, baseline=baseline, why_no_delta=why, flagged=flagged,
                 problems=tuple(problems))


def check_table(table: PublishedTable) -> list[Check]:
    """:func:`check_row` for every row, in file order."""
    return [check_row(table, row) for row in table.rows]


def shown_rows(table: PublishedTable) -> list[PublishedRow]:
    """The rows shown beside measured ones: no ablations, and each copy folded into its original
    (a copy stays where its original is not in the file)."""
    return [r for r in table.rows if r.kind != "ablation" and table.original(r) is None]


def copies_of(table: PublishedTable, row: PublishedRow) -> list[PublishedRow]:
    """The rows of other papers that copy ``row``."""
    return [r for r in table.rows if r.copied_from == row.paper and r.method == row.method]
