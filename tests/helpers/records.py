"""Hand-made result records for the leaderboard tests (the fields compare and the Δm code read)."""

from __future__ import annotations

SPECS = {
    "semseg": {"primary": "mIoU", "metrics": {"mIoU": {"higher_is_better": True, "unit": "%"}}},
    "depth": {"primary": "rmse", "metrics": {"rmse": {"higher_is_better": False, "unit": "m"}}},
}


def record(method, tasks, metrics, seed=0, recipe="R1", run_id=None, dataset="synth", **extra):
    return {
        "schema_version": 1, "run_id": run_id or f"{method}-{'-'.join(tasks)}-{seed}", "status": "completed",
        "method": method, "dataset": dataset, "tasks": list(tasks), "seed": seed, "preset": "smoke", "tag": "",
        "recipe_key": recipe, "config": {"backbone": "swin_micro", "image_size": [64, 64]},
        "task_specs": {t: SPECS[t] for t in tasks},
        "metrics": {t: {SPECS[t]["primary"]: v} for t, v in zip(tasks, metrics)},
        "params": {"summary": {"total_trainable": 1_500_000}},
        "efficiency": {"peak_memory_mb": 500.0, "train_images_per_s": 100.0, "inference_images_per_s": 300.0},
        **extra,
    }
