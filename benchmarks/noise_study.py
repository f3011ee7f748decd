"""The leaderboard protocol's noise study: how much of the seed-to-seed spread of a method's
metrics comes from training (the seed) and how much from the size of the validation split.

Each (method, seed) is trained once on `synth` with a validation split of ``--val-images`` images
(whose first 200 are the standard split: synth draws validation image i from the stream
``[seed, 1, i]`` whatever the split's size). The trained model is then evaluated on ``--parts``
disjoint, equal slices of that split. A two-way layout (seed × slice) separates the variance of
training seeds from the variance that comes from which images were validated on; the second
shrinks as the validation split grows, the first does not (docs/leaderboard.md).

    python benchmarks/noise_study.py --out /tmp/noise --preset bench --seeds 0-4 \\
        --method full,decoder_only --val-images 1000 --parts 5
    python benchmarks/noise_study.py --out /tmp/noise --analyse

Writes ``<out>/slices/<method>-seed<k>.json`` (metrics per slice), atomically, and skips what exists.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

from mtpeft_bench.atomic import write_json_atomic


def train_and_slice(method: str, seed: int, args: argparse.Namespace) -> dict:
    """Train one run (or find it completed), then evaluate its last checkpoint on each slice."""
    import torch
    from torch.utils.data import DataLoader, Subset

    from mtpeft_bench import run
    from mtpeft_bench.model.backbone import create_backbone
    from mtpeft_bench.model.multitask import build_model, task_outputs_of
    from mtpeft_bench.config import parse_sets
    from mtpeft_bench.running.setup import prepare, resolve_config
    from mtpeft_bench.train.checkpoint import load_checkpoint, restore_model
    from mtpeft_bench.train.evaluation import evaluate

    sets = {"seed": seed, "data.num_val": args.val_images, "checkpoint_every": 1, "progress": False,
            "out": str(Path(args.out) / "results"), "runs_dir": str(Path(args.out) / "runs")}
    sets.update(parse_sets(args.set))
    cfg = resolve_config(args.preset, {"method": method, "dataset": "synth"}, sets)
    started = time.time()
    record = run(cfg, resume=True)
    trained_s = time.time() - started
    resolved = prepare(cfg)
    backbone, _ = create_backbone(cfg.backbone, resolved.image_size, "none", cfg.drop_path)
    model, _ = build_model(resolved.method_cls(), resolved.method_cfg, backbone, task_outputs_of(resolved.task_specs))
    restore_model(load_checkpoint(Path(sets["runs_dir"]) / record["run_id"] / "last.safetensors"), model)
    root = resolved.dataset.resolve_root(resolved.data_root)
    val_set = resolved.dataset.build("val", resolved.task_specs, resolved.image_size, root, train=False)
    size = len(val_set) // args.parts
    slices = []
    for part in range(args.parts):
        loader = DataLoader(Subset(val_set, range(part * size, (part + 1) * size)), batch_size=cfg.batch_size)
        metrics, _ = evaluate(model, loader, resolved.task_specs, torch.device("cpu"), progress=False)
        slices.append(metrics)
    primary = {s.name: s.primary.name for s in resolved.task_specs}
    lower = {s.name: not s.primary.higher_is_better for s in resolved.task_specs}
    return {"method": method, "seed": seed, "slice_size": size, "primary": primary, "lower_is_better": lower,
            "slices": slices, "record_metrics": record["metrics"], "train_wall_s": record.get("timing", {}).get("wall_s"),
            "session_s": trained_s, "config_hash": record.get("config_hash")}


def analyse(out: Path) -> dict:
    """Per method and task: the variance components of the primary metric and of Δm (seed × slice)."""
    import numpy as np

    files = sorted((out / "slices").glob("*.json"))
    rows = [json.loads(f.read_text()) for f in files]
    methods = sorted({r["method"] for r in rows})
    tasks = list(rows[0]["primary"])
    # Δm stand-in: relative change against the mean of `full` over every seed and slice (the
    # single-task baselines scale each task the same way, by a constant close to full's value)
    ref = {}
    for t in tasks:
        values = [s[t][rows[0]["primary"][t]] for r in rows if r["method"] == "full" for s in r["slices"]]
        ref[t] = float(np.mean(values))
    report: dict = {"reference": "mean of full", "methods": {}}
    for m in methods:
        runs = sorted((r for r in rows if r["method"] == m), key=lambda r: r["seed"])
        n_seeds, n_parts = len(runs), len(runs[0]["slices"])
        table = {}
        for t in tasks + ["delta_m"]:
            grid = np.zeros((n_seeds, n_parts))
            for i, r in enumerate(runs):
                for j, s in enumerate(r["slices"]):
                    if t == "delta_m":
                        grid[i, j] = 100 * np.mean([(-1 if r["lower_is_better"][u] else 1)
                                                    * (s[u][r["primary"][u]] - ref[u]) / ref[u] for u in tasks])
                    else:
                        grid[i, j] = s[t][r["primary"][t]]
            table[t] = components(grid)
        report["methods"][m] = {"seeds": [r["seed"] for r in runs], "slice_size": runs[0]["slice_size"],
                                "components": table}
    report["detectable_delta_m"] = detectable_differences(report)
    return report


def detectable_differences(report: dict, seeds: tuple[int, ...] = (3, 5), alpha: float = 0.05,
                           power: float = 0.8) -> dict:
    """The smallest Δm difference between two methods that the protocol resolves, per validation size.

    With σ the pooled seed-to-seed standard deviation of Δm (over the methods studied) on a fixed
    validation split of k slices, and n seeds per method:
    - ``disjoint_ci``: the gap at which two 95 % Student-t intervals stop overlapping,
      2 · t(0.975, n−1) · σ/√n;
    - ``two_sample_test``: the gap a two-sided two-sample t-test (α = 0.05) detects with 80 %
      power, (t(1−α/2, 2n−2) + t(power, 2n−2)) · σ · √(2/n).
    """
    from scipy import stats

    methods = report["methods"].values()
    ks = list(next(iter(methods))["components"]["delta_m"]["sd_over_seeds_by_val_slices"])
    out = {}
    for k in ks:
        sigma = math.sqrt(sum(m["components"]["delta_m"]["sd_over_seeds_by_val_slices"][k] ** 2
                              for m in methods) / len(methods))
        out[k] = {"sigma": sigma}
        for n in seeds:
            out[k][f"{n}_seeds"] = {
                "disjoint_ci": 2 * stats.t.ppf(0.975, n - 1) * sigma / math.sqrt(n),
                "two_sample_test": (stats.t.ppf(1 - alpha / 2, 2 * n - 2) + stats.t.ppf(power, 2 * n - 2))
                * sigma * math.sqrt(2 / n)}
    return out


def components(grid) -> dict:
    """Two-way random-effects decomposition of a seeds × slices grid (one value per cell).

    Returns the variance of training seeds (σ²_seed), of slices (σ²_slice) and of their
    interaction (σ²_res, confounded with the cell's own noise), from the ANOVA mean squares, and
    the standard deviation over seeds that a fixed validation split of ``k`` slices would show:
    sqrt(σ²_seed + σ²_res / k) — the slice's own main effect is shared by every seed and method.
    """
    import numpy as np

    a, b = grid.shape
    grand = grid.mean()
    seed_means, slice_means = grid.mean(axis=1), grid.mean(axis=0)
    ms_seed = b * ((seed_means - grand) ** 2).sum() / (a - 1)
    ms_slice = a * ((slice_means - grand) ** 2).sum() / (b - 1)
    resid = grid - seed_means[:, None] - slice_means[None, :] + grand
    ms_res = (resid ** 2).sum() / ((a - 1) * (b - 1))
    var_seed = max((ms_seed - ms_res) / b, 0.0)
    var_slice = max((ms_slice - ms_res) / a, 0.0)
    var_res = ms_res
    return {"mean": float(grand), "sd_seed_first_slice": float(np.std(grid[:, 0], ddof=1)),
            "var_seed": float(var_seed), "var_slice": float(var_slice), "var_interaction": float(var_res),
            "sd_over_seeds_by_val_slices": {k: float(math.sqrt(var_seed + var_res / k)) for k in range(1, b + 1)}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--method", default="full,decoder_only")
    parser.add_argument("--seeds", default="0-4")
    parser.add_argument("--val-images", type=int, default=1000)
    parser.add_argument("--parts", type=int, default=5)
    parser.add_argument("--set", action="append", default=[], help="KEY=VALUE, as mtbench run --set")
    parser.add_argument("--analyse", action="store_true")
    args = parser.parse_args()
    out = Path(args.out)
    if args.analyse:
        report = analyse(out)
        write_json_atomic(out / "noise_study.json", report)
        print(json.dumps(report, indent=1))
        return
    from mtpeft_bench.cli.options import parse_seeds

    for seed in parse_seeds(args.seeds):
        for method in args.method.split(","):
            target = out / "slices" / f"{method}-seed{seed}.json"
            if target.exists():
                continue
            write_json_atomic(target, train_and_slice(method, seed, args))
            print(f"{method} seed {seed}: done ({time.strftime('%H:%M:%S')})", flush=True)


if __name__ == "__main__":
    main()
