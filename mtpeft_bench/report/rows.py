"""Leaderboards from result records (``mtbench compare``). Reads JSON only; never imports torch.

One row per (dataset, method, task set, preset, tag, recipe): the per-task primary metrics with
↑/↓, Δm against the baseline method's single-task runs, whether the row is on the Pareto front of
(trainable parameters ↓, Δm ↑), trainable parameters (optionally by group), forward FLOPs, peak
memory, training and inference images/s with their model FLOPs utilisation (where the device's
peak is known) and latency at batch 1 (merged too, where the method can merge). Several seeds of a
row are shown as mean ± the half-width of a 95 % confidence interval
(:mod:`mtpeft_bench.report.stats`), and each row's Δm is tested against a reference row and the
best row of its task set (:mod:`mtpeft_bench.report.significance`). Published rows
(``tasks/reference/<dataset>.yaml``, read by :mod:`mtpeft_bench.report.published`) can be shown beside
the suite's runs; they are marked as published and never enter the Pareto front. The rows are
turned into text by :mod:`mtpeft_bench.report.tables` and :mod:`mtpeft_bench.report.document`
(re-exported here: ``render``, ``table``, ``render_document``, ...).
"""

from __future__ import annotations

import json

from typing import Any, Iterable, Mapping, Sequence

from mtpeft_bench.report.baselines import compute_delta
from mtpeft_bench.model.params import EXTRA_GROUPS
from mtpeft_bench.report.significance import annotate
from mtpeft_bench.report.stats import mean_ci
from mtpeft_bench.report.document import notes, render_document, seed_warnings  # noqa: F401
from mtpeft_bench.report.tables import FORMATS, csv_table, latex_escape, render, table  # noqa: F401


#: ``--sort`` keys: the row value they sort by and whether larger is better (sorted first).
SORT_KEYS: dict[str, tuple[str, bool]] = {
    "delta_m": ("delta_m", True), "params": ("trainable", False), "flops": ("flops", False),
    "memory": ("peak_memory_mb", False), "train": ("train_images_per_s", True),
    "infer": ("inference_images_per_s", True), "latency": ("latency_ms", False), "method": ("method", False),
}
_NUMERIC = ("delta_m", "trainable", "flops", "peak_memory_mb", "train_images_per_s", "inference_images_per_s",
            "latency_ms", "merged_latency_ms", "merged_images_per_s", "unmerged_images_per_s",
            "train_flops_per_s", "train_mfu", "inference_flops_per_s", "inference_mfu")


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


def _method_options(rec: Mapping[str, Any]) -> str:
    """The run's method options as canonical JSON (runs that differ in them are different rows)."""
    return json.dumps(rec.get("method_config") or {}, sort_keys=True, default=str)


#: Recipe settings shown to tell apart rows that differ only in their recipe (the rest is in the hash).
RECIPE_FIELDS = ("backbone", "image_size", "epochs", "batch_size", "base_lr", "weight_decay", "drop_path", "amp")


def _recipe_summary(rec: Mapping[str, Any]) -> dict[str, str]:
    """The readable part of a run's recipe: its weights (source and SHA-256 prefix) and main settings."""
    weights = rec.get("weights") or {}
    sha = weights.get("sha256")
    out = {"weights": f"{weights.get('source', '?')}" + (f":{sha[:8]}" if sha else "")}
    config = rec.get("config") or {}
    out.update({k: json.dumps(config.get(k), default=str) for k in RECIPE_FIELDS if k in config})
    out["recipe"] = str(rec.get("recipe_key") or "?")[:8]  # the fallback when what differs is not shown above
    return out


def _row_key(rec: Mapping[str, Any]) -> tuple:
    return (rec["dataset"], rec["method"], tuple(rec.get("tasks", [])), rec.get("preset"), rec.get("tag", ""),
            rec.get("recipe_key"), _method_options(rec))


def _label_variants(rows: Sequence[dict[str, Any]]) -> None:
    """Set ``row["variant"]`` to the method options that tell apart rows of the same method, task
    set, preset and tag (e.g. ``rank=64``); empty where a method has one configuration."""
    families: dict[tuple, list[dict[str, Any]]] = {}
    for row in rows:
        families.setdefault((row["dataset"], row["method"], tuple(row["tasks"]), row["preset"], row["tag"]),
                            []).append(row)
    for family in families.values():
        configs = [json.loads(r.get("_method_options") or "{}") for r in family]
        differing = sorted({k for c in configs for k in c if any(o.get(k) != c.get(k) for o in configs)})
        recipes = [r.get("_recipe") or {} for r in family]
        # Rows with the same options but another recipe (e.g. other weights) say what differs.
        recipe_diff = [k for k in recipes[0] if any(o.get(k) != recipes[0].get(k) for o in recipes)] \
            if len(family) > 1 else []
        if len(recipe_diff) > 1:
            recipe_diff.remove("recipe")
        for row, config, recipe in zip(family, configs, recipes):
            parts = [f"{k}={config.get(k)}" for k in differing] + [f"{k}={recipe.get(k)}" for k in recipe_diff]
            row["variant"] = ",".join(parts) if len(family) > 1 else ""


def _get(mapping: Mapping[str, Any] | None, *path: str) -> Any:
    for key in path:
        if not isinstance(mapping, Mapping):
            return None
        mapping = mapping.get(key)
    return mapping


def _suite_row(key: tuple, recs: Sequence[Mapping[str, Any]], records: Sequence[Mapping[str, Any]],
               baseline_method: str) -> dict[str, Any]:
    recs = sorted(recs, key=lambda r: (r.get("seed") is None, r.get("seed") or 0, r.get("run_id", "")))
    first = recs[0]
    row: dict[str, Any] = {  # every per-seed list below is aligned with "seeds"
        "dataset": key[0], "method": key[1], "tasks": list(key[2]), "preset": key[3], "tag": key[4],
        "seeds": [r.get("seed") for r in recs], "n": len(recs), "metrics": {}, "source": "suite",
        "_method_options": key[6], "_recipe": _recipe_summary(first),
    }
    for task in first.get("tasks", []):
        spec = first["task_specs"][task]
        name = spec["primary"]
        meta = spec["metrics"][name]
        row["metrics"][task] = {"name": name, "higher_is_better": meta["higher_is_better"],
                                "unit": meta.get("unit", ""), "values": [_get(r, "metrics", task, name) for r in recs]}
    deltas = [compute_delta(r, records, baseline_method) for r in recs]
    row["delta_m"] = [d["value"] for d in deltas]
    reasons = [d["baseline"].get("reason") for d in deltas if d["value"] is None and d["baseline"].get("reason")]
    row["delta_m_missing"] = reasons[0] if reasons else None
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
    # Per seed: achieved model FLOP/s and MFU (None: no known peak, or an older record without the block).
    for key in ("train", "inference"):
        row[f"{key}_flops_per_s"] = [_get(e, "utilization", key, "achieved_flops_per_s") for e in eff]
        row[f"{key}_mfu"] = [_get(e, "utilization", key, "mfu") for e in eff]
    # Per seed: was the machine busy while speed was measured (None: an older record without the reading).
    row["busy"] = [_get(e, "load", "busy") for e in eff]
    return row


def leaderboard(records: Iterable[Mapping[str, Any]], dataset: str | None = None, baseline_method: str = "full",
                methods: Sequence[str] | None = None, tags: Sequence[str] | None = None,
                sort: str = "delta_m", reference_method: str = "full") -> list[dict[str, Any]]:
    """Aggregate completed runs into leaderboard rows (dicts of raw per-seed numbers).

    Args:
        records: run records (see :mod:`mtpeft_bench.results`).
        dataset: keep only this dataset.
        baseline_method: the method whose single-task runs are the Δm baselines (they are found
            among all records of the dataset, also when ``methods`` leaves them out of the table).
        methods, tags: keep only rows of these methods / tags.
        sort: a key of :data:`SORT_KEYS`.
        reference_method: the method each row's Δm is tested against (paired on shared seeds).

    Returns:
        Rows sorted by dataset, then task set (more tasks first), then ``sort``; each row carries
        ``pareto`` (on the front of its dataset and task set, or None without Δm) and the paired
        tests ``vs_reference`` and ``vs_best`` of :func:`~mtpeft_bench.report.significance.annotate`
        (among the rows shown).
    """
    records = [r for r in records if r.get("status") == "completed"]
    if dataset:
        records = [r for r in records if r.get("dataset") == dataset]
    groups: dict[tuple, list[Mapping[str, Any]]] = {}
    for rec in records:
        groups.setdefault(_row_key(rec), []).append(rec)
    rows = [_suite_row(key, recs, records, baseline_method) for key, recs in groups.items()]
    _label_variants(rows)
    if methods:
        rows = [r for r in rows if r["method"] in methods]
    if tags:
        rows = [r for r in rows if r["tag"] in tags]
    mark_pareto(rows)
    annotate(rows, reference_method)
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
        points = [(mean_ci(r["trainable"]).mean, mean_ci(r["delta_m"]).mean) for r in members]
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
            mean = mean_ci(row[field]).mean
            value, missing = (0.0, 1) if mean is None else ((-mean if larger_first else mean), 0)
        return (row["dataset"], row.get("source") != "suite", -len(row["tasks"]), tuple(row["tasks"]), missing,
                value, row["method"], row.get("tag", ""))

    return sorted(rows, key=key)


# -- published rows ----------------------------------------------------------------------------


def published_rows(dataset: str) -> list[dict[str, Any]]:
    """The published rows of ``tasks/reference/<dataset>.yaml`` as leaderboard rows (no ablations;
    copies folded into their original), with Δm recomputed from each row's own metrics and the
    printed Δm beside it; see :func:`mtpeft_bench.report.published_view.leaderboard_rows`."""
    from mtpeft_bench.report.published_view import leaderboard_rows

    return leaderboard_rows(dataset)


def with_published(rows: Sequence[dict[str, Any]], datasets: Iterable[str], sort: str = "delta_m"
                   ) -> list[dict[str, Any]]:
    """``rows`` plus the published rows of ``datasets``, sorted."""
    extra = [row for name in sorted(set(datasets)) for row in published_rows(name)]
    out = list(rows) + extra
    mark_pareto(out)
    return sort_rows(out, sort)
