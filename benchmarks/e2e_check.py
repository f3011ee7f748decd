"""What the end-to-end runs of ``benchmarks/gpu_check.sh`` ran on, read from their result records.

For every result JSON under the given folders it prints, and writes with ``--json``, the facts that
show the whole GPU path ran together: device, distributed backend and world size (torchrun), AMP,
DiTASK's warp kernel, training steps and throughput, evaluation at the original image size, and
that every task has finite metrics. ``--expect KEY=VALUE`` (repeatable) names what each record
must show (``device=cuda``, ``backend=nccl``, ``world_size=1``, ``amp=True``, ``kernel=triton``
— the kernel only where the method reports one — ``evaluation=original size``); ``--runs
DATASET:METHOD,...`` names the runs that must have a record. Exits 1 when something is missing or
differs, after printing everything.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any


def facts(record: dict[str, Any]) -> dict[str, Any]:
    """The checked facts of one result record."""
    env = record.get("environment") or {}
    execution = record.get("execution") or {}
    config = record.get("config") or {}
    device = str(env.get("device", ""))
    history = record.get("history") or []
    data_config = record.get("data_config") or {}
    metrics = record.get("metrics") or {}
    finite = bool(metrics) and all(
        isinstance(v, (int, float)) and math.isfinite(v)
        for task in metrics.values() if isinstance(task, dict) for v in task.values() if isinstance(v, (int, float)))
    return {
        "dataset": record.get("dataset"), "method": record.get("method"), "status": record.get("status"),
        "run_id": record.get("run_id"), "device": device.split(":")[0], "device_name": env.get("device_name"),
        "backend": execution.get("backend"), "world_size": execution.get("world_size"),
        # AMP is CUDA-only in mtbench: the setting alone says nothing on a CPU
        "amp": bool(config.get("amp")) and device.startswith("cuda"),
        "kernel": (record.get("method_info") or {}).get("kernel"),
        "steps": sum(int(e.get("steps", 0) or 0) for e in history),
        "epochs": len(history), "wall_time_s": record.get("wall_time_s"),
        "train_images_per_s": (record.get("efficiency") or {}).get("train_images_per_s"),
        "evaluation": "original size" if data_config.get("protocol") == "mtinet" else "training size",
        "metrics_finite": finite, "torch": (env.get("versions") or {}).get("torch"),
        "triton": (env.get("versions") or {}).get("triton"),
    }


def problems(f: dict[str, Any], expect: dict[str, str]) -> list[str]:
    """What in ``f`` differs from ``expect`` (values compared as text); a missing kernel is no problem."""
    out = [] if f["status"] == "completed" else [f"status {f['status']}"]
    for key, want in expect.items():
        have = f.get(key)
        if key == "kernel" and have is None:
            continue
        if str(have) != want:
            out.append(f"{key} {have} (expected {want})")
    if not f["metrics_finite"]:
        out.append("metrics missing or not finite")
    return out


def collect(folders: list[Path], expect: dict[str, str], runs: list[tuple[str, str]]) -> dict[str, Any]:
    found = []
    for folder in folders:
        for path in sorted(folder.rglob("*.json")):
            try:
                record = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            if not isinstance(record, dict) or "schema_version" not in record or "run_id" not in record:
                continue  # not a result record (run state, metrics, ...)
            f = facts(record)
            f["problems"] = problems(f, expect)
            f["path"] = str(path)
            found.append(f)
    have = {(f["dataset"], f["method"]) for f in found}
    missing = [f"{d}:{m}" for d, m in runs if (d, m) not in have]
    return {"expect": expect, "runs": found, "missing": missing,
            "ok": bool(found) and not missing and not any(f["problems"] for f in found)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", type=Path, nargs="+", help="results folders (searched recursively)")
    parser.add_argument("--expect", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--runs", default="", help="comma list of DATASET:METHOD that must have a record")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    expect = {}
    for item in args.expect:
        key, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--expect takes KEY=VALUE, got {item!r}")
        expect[key.strip()] = value.strip()
    runs = []
    for item in (i.strip() for i in args.runs.split(",") if i.strip()):
        dataset, sep, method = item.partition(":")
        if not sep:
            parser.error(f"--runs takes DATASET:METHOD items, got {item!r}")
        runs.append((dataset, method))
    result = collect(args.folders, expect, runs)
    for f in result["runs"]:
        print(f"{f['dataset']}/{f['method']}: {f['status']} on {f['device']} ({f['device_name']}), backend "
              f"{f['backend']}, world size {f['world_size']}, AMP {f['amp']}, kernel {f['kernel']}, {f['steps']} steps "
              f"in {f['epochs']} epochs, {f['train_images_per_s'] or 0:.1f} train img/s, evaluation at {f['evaluation']}, "
              f"metrics finite {f['metrics_finite']}; torch {f['torch']}, triton {f['triton']}"
              + (f" — PROBLEMS: {'; '.join(f['problems'])}" if f["problems"] else " — ok"))
    for m in result["missing"]:
        print(f"{m}: NO RESULT RECORD")
    print("end to end:", "all runs as expected" if result["ok"] else "NOT as expected")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
