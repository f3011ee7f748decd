"""Single-task baselines for Δm: the suite's own single-task runs, else a published reference.

Δm (docs/protocol.md 3.1) compares a multi-task run with one single-task model per task trained under
the same recipe. The suite's own baselines are runs of the baseline method (``full`` by default)
on one task with the same ``recipe_key`` (same dataset and version, data options, backbone,
weights, image size and schedule); several seeds are averaged. Where none exist, a reference file
in ``tasks/reference/<dataset>.yaml`` may supply published numbers, but only for runs whose
protocol matches what the file says it applies to. The result always says which was used.
Torch-free.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Iterable, Mapping

from mtpeft_bench.report.delta import delta_m


def _primary(record: Mapping[str, Any], task: str) -> tuple[str, bool]:
    spec = record["task_specs"][task]
    name = spec["primary"]
    return name, bool(spec["metrics"][name]["higher_is_better"])


def suite_baselines(records: Iterable[Mapping[str, Any]], dataset: str, recipe_key: str, tasks: Iterable[str],
                    baseline_method: str = "full") -> dict[str, dict[str, Any]]:
    """``{task: {"value": mean primary metric, "runs": [run ids]}}`` from single-task runs."""
    found: dict[str, dict[str, Any]] = {}
    wanted = set(tasks)
    for rec in records:
        if (rec.get("status") != "completed" or rec.get("dataset") != dataset or rec.get("method") != baseline_method
                or rec.get("recipe_key") != recipe_key or len(rec.get("tasks", [])) != 1):
            continue
        task = rec["tasks"][0]
        if task not in wanted:
            continue
        name, _ = _primary(rec, task)
        value = (rec.get("metrics") or {}).get(task, {}).get(name)
        if value is None:
            continue
        entry = found.setdefault(task, {"values": [], "runs": []})
        entry["values"].append(float(value))
        entry["runs"].append(rec["run_id"])
    return {t: {"value": sum(e["values"]) / len(e["values"]), "runs": e["runs"]} for t, e in found.items()}


@lru_cache(maxsize=None)
def load_reference(dataset: str) -> dict[str, Any] | None:
    """The reference file of ``dataset`` (``tasks/reference/<dataset>.yaml``), or None."""
    from importlib import resources

    import yaml

    try:
        text = resources.files("mtpeft_bench.tasks").joinpath("reference", f"{dataset}.yaml").read_text("utf-8")
    except (FileNotFoundError, ModuleNotFoundError, OSError):
        return None
    return yaml.safe_load(text)


def reference_applies(reference: Mapping[str, Any], config: Mapping[str, Any],
                      data_config: Mapping[str, Any] | None = None) -> bool:
    """Whether the run's protocol matches what the reference baselines were measured under.

    ``applies_to`` keys name run settings (``backbone``, ``image_size``) or dataset options with a
    ``data.`` prefix (``data.protocol``).
    """
    conditions = (reference.get("single_task") or {}).get("applies_to") or {}
    for key, expected in conditions.items():
        if key.startswith("data."):
            actual = (data_config or {}).get(key[5:])
        else:
            actual = config.get(key)
        if isinstance(expected, list):
            actual = list(actual) if isinstance(actual, (list, tuple)) else actual
        if key == "backbone" and isinstance(actual, str):
            actual = actual.split(".")[0]
        if actual != expected:
            return False
    return True


def reference_baselines(record: Mapping[str, Any]) -> dict[str, Any] | None:
    """Published single-task numbers that apply to ``record``'s protocol, or None."""
    reference = load_reference(record["dataset"])
    if not reference or "single_task" not in reference:
        return None
    if not reference_applies(reference, record.get("config") or {}, record.get("data_config") or {}):
        return None
    section = dict(reference["single_task"])
    if "values" not in section:  # the numbers are those of a published row of the same file (one copy)
        from mtpeft_bench.report.published import single_task_values

        section["values"] = single_task_values(record["dataset"]) or {}
    return section


def compute_delta(record: Mapping[str, Any], records: Iterable[Mapping[str, Any]],
                  baseline_method: str = "full") -> dict[str, Any]:
    """Δm of ``record`` and where its baseline came from.

    Returns:
        ``{"value": float | None, "baseline": {...}}``; ``value`` is None (with a ``reason``) when
        no baseline covers every task, and for single-task baseline runs themselves it is 0 by
        definition only if the run is its own baseline (then the value is still computed).
    """
    records = list(records)
    tasks = list(record.get("tasks", []))
    metrics = record.get("metrics") or {}
    primary = {t: _primary(record, t) for t in tasks}
    values = {t: (metrics.get(t) or {}).get(primary[t][0]) for t in tasks}
    higher = {t: primary[t][1] for t in tasks}
    if any(v is None for v in values.values()):
        return {"value": None, "baseline": {"source": None, "reason": "the run has no value for some task"}}

    suite = suite_baselines(records, record["dataset"], record.get("recipe_key"), tasks, baseline_method)
    if all(t in suite for t in tasks):
        base = {t: suite[t]["value"] for t in tasks}
        return {"value": delta_m(values, base, higher),
                "baseline": {"source": "suite", "method": baseline_method, "values": base,
                             "runs": {t: suite[t]["runs"] for t in tasks}}}
    reference = reference_baselines(record)
    if reference is not None:
        ref_values = reference.get("values", {})
        if all(t in ref_values for t in tasks):
            base = {t: float(ref_values[t]) for t in tasks}
            return {"value": delta_m(values, base, higher),
                    "baseline": {"source": "reference", "values": base, "citation": reference.get("citation")}}
    missing = [t for t in tasks if t not in suite]
    reason = (f"no single-task baseline for {', '.join(missing)}: run "
              f"`mtbench run --method {baseline_method} --tasks <task>` with the same recipe")
    # Single-task runs that only differ in the recipe are the usual surprise (e.g. other weights).
    elsewhere = sorted({rec["tasks"][0] for rec in records
                        if rec.get("status") == "completed" and rec.get("dataset") == record["dataset"]
                        and rec.get("method") == baseline_method and len(rec.get("tasks", [])) == 1
                        and rec["tasks"][0] in missing and rec.get("recipe_key") != record.get("recipe_key")})
    if elsewhere:
        reason += (f" (runs for {', '.join(elsewhere)} exist, but with another recipe: backbone, weights, "
                   "image size or schedule differ)")
    return {"value": None, "baseline": {"source": None, "reason": reason}}
