"""The built-in weights' model card: its entries, and the evidence: tables from result files, loss curves, spectra.

A completed pretraining run becomes a ``card.json`` entry (:func:`card_entry`: SHA-256, configuration,
objective, command, first losses, loss curve); ``mtbench pretrain --check-card`` compares a rerun's
first losses with it (:func:`compare_first_losses`).

``python -m mtpeft_bench.pretraining.card --results DIR --plots DIR`` prints the Markdown tables of
``mtpeft_bench/weights/README.md`` (per-task primary metrics of runs that differ only in their
weights, mean ± std over seeds) and draws ``loss_curves.png`` (from ``card.json``) and
``spectra.png`` (singular values of every block linear of the shipped backbones and of timm's
random initialisation). No torch is needed for the tables. ``--install LOG.json ...`` copies the
weights of finished ``mtbench pretrain`` runs into ``mtpeft_bench/weights/`` and writes their
entries (SHA-256, configuration, command, first losses, loss curve) into ``card.json``.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path
from typing import Any

from mtpeft_bench.pretraining.config import PretrainConfig
from mtpeft_bench.model import builtin_weights as weights
from mtpeft_bench.atomic import write_json_atomic
from mtpeft_bench.results import read_records


def objective_text(cfg: PretrainConfig) -> str:
    parts = [f"{cfg.albedo_weight} x albedo L1 (the benchmark's HRNet head on the four encoder features)",
             f"{cfg.label_weight} x image-level scene-property classification (primitive kinds, object families, "
             "object count, palette, sun position)"]
    if cfg.head == "linear":
        parts[0] = parts[0].replace("the benchmark's HRNet head",
                                    "a linear head (the decoder's reducers and a 1x1 conv)")
    if cfg.shading_weight > 0:
        parts.insert(1, f"{cfg.shading_weight} x shading L1 (same head)")
    if cfg.recon_weight > 0:
        parts.insert(1, f"{cfg.recon_weight} x RGB reconstruction L1 (same head)")
    if cfg.height_weight > 0:
        parts.insert(1, f"{cfg.height_weight} x height-above-ground L1 (same head)")
    if cfg.group_weight > 0:
        parts.insert(1, f"{cfg.group_weight} x supervised-contrastive object grouping of the feature-grid cells "
                        f"({cfg.group_dim}-d linear embedding, temperature {cfg.group_temperature})")
    if cfg.mask_ratio > 0:
        parts.insert(0, f"SimMIM masked-image modelling ({cfg.mask_ratio:.0%} of {cfg.mask_patch}-px squares)")
    return " + ".join(parts)


#: The loss terms a card's loss curve records (terms whose weight is 0 stay 0).
LOSS_TERMS = ("loss", "mim", "albedo", "shading", "recon", "height", "group", "labels")

#: The setting that switches each optional loss term on (the term is drawn only where it is > 0).
TERM_WEIGHTS = {"mim": "mask_ratio", "shading": "shading_weight", "recon": "recon_weight",
                "height": "height_weight", "group": "group_weight"}


def card_entry(record: dict[str, Any], curve_every: int = 25, first: int = 20) -> dict[str, Any]:
    """The card.json entry of a completed pretraining run (its log record)."""
    cfg = PretrainConfig(**record["config"])
    history = record["history"]
    return {
        "file": f"{cfg.backbone}.safetensors",
        "sha256": record["sha256"],
        "stored_dtype": cfg.store_dtype,
        "backbone": cfg.backbone,
        "image_size": record["image_size"],
        "pretrain_config": record["config"],
        "objective": objective_text(cfg),
        "corpus": record["corpus"],
        "command": record["command"],
        "train_seconds": record["train_seconds"],
        "environment": record["environment"],
        "first_losses": [h["loss"] for h in history[:first]],
        "loss_curve_columns": ["step", *LOSS_TERMS],
        "loss_curve": [[h["step"], *(round(h.get(k, 0.0), 5) for k in LOSS_TERMS)]
                       for h in history if h["step"] % curve_every == 0 or h["step"] == 1],
    }


def compare_first_losses(history: list[dict[str, Any]], expected: list[float], rtol: float = 1e-4) -> dict[str, Any]:
    """Compare a run's first losses with a card's: ``{"steps", "max_rel_diff", "match"}``."""
    n = min(len(history), len(expected))
    diffs = [abs(history[i]["loss"] - expected[i]) / max(abs(expected[i]), 1e-12) for i in range(n)]
    worst = max(diffs, default=float("nan"))
    return {"steps": n, "max_rel_diff": worst, "match": n > 0 and worst <= rtol}


def evidence_rows(records: list[dict[str, Any]]) -> tuple[list[str], list[dict[str, Any]]]:
    """Per (method, weights source): each task's primary metric as mean ± std over seeds, the number
    of seeds, and the mean signed relative change (%) vs the same method from random initialisation
    (a Δm-style figure whose reference is the ``none`` runs, not the single-task baselines)."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in records:
        if r.get("status") == "completed":
            groups.setdefault((r["method"], r["weights"]["source"]), []).append(r)
    tasks = sorted({t for r in records for t in r["tasks"]}, key=lambda t: records[0]["tasks"].index(t))
    spec = records[0]["task_specs"]

    def primary(r: dict[str, Any], t: str) -> float:
        return r["metrics"][t][spec[t]["primary"]]

    rows = []
    for (method, source), runs in sorted(groups.items()):
        row: dict[str, Any] = {"method": method, "weights": source, "seeds": sorted(r["seed"] for r in runs)}
        for t in tasks:
            values = [primary(r, t) for r in runs]
            row[t] = (statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0)
        reference = groups.get((method, "none"))
        if reference and source != "none":
            changes = []
            for t in tasks:
                ref = statistics.mean(primary(r, t) for r in reference)
                higher = spec[t]["metrics"][spec[t]["primary"]]["higher_is_better"]
                changes.append((1 if higher else -1) * (row[t][0] - ref) / ref * 100)
            row["rel_vs_none"] = statistics.mean(changes)
            row["tasks_better"] = sum(c > 0 for c in changes)
        rows.append(row)
    return tasks, rows


def evidence_markdown(records: list[dict[str, Any]]) -> str:
    tasks, rows = evidence_rows(records)
    spec = records[0]["task_specs"]
    arrows = {t: "↑" if spec[t]["metrics"][spec[t]["primary"]]["higher_is_better"] else "↓" for t in tasks}
    head = ["method", "weights", *[f"{t} {spec[t]['primary']} {arrows[t]}" for t in tasks], "Δ vs none %", "tasks better"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [row["method"], row["weights"], *[f"{row[t][0]:.3f} ± {row[t][1]:.3f}" for t in tasks],
                 f"{row['rel_vs_none']:+.2f}" if "rel_vs_none" in row else "—",
                 f"{row['tasks_better']}/{len(tasks)}" if "tasks_better" in row else "—"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_loss_curves(card: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import pandas as pd
    import seaborn as sns

    frames = []
    for name, entry in card["models"].items():
        columns = entry["loss_curve_columns"]
        for point in entry["loss_curve"]:
            values = dict(zip(columns, point))
            for term in columns[1:]:
                weight = TERM_WEIGHTS.get(term)
                if weight is None or entry["pretrain_config"].get(weight, 0) > 0:
                    frames.append({"backbone": name, "step": values["step"], "loss": values[term], "term": term})
    grid = sns.relplot(pd.DataFrame(frames), x="step", y="loss", hue="term", col="backbone", kind="line",
                       height=3, aspect=1.3, facet_kws={"sharex": False})
    grid.figure.suptitle("pretraining losses (every 25 steps)", y=1.03)
    grid.savefig(path, dpi=90, bbox_inches="tight")
    return path


def spectra(name: str, image_size: tuple[int, int]) -> list[dict[str, Any]]:
    """Normalised singular values (σ_i / σ_1) of every block linear, for the built-in and random weights."""
    import torch

    from mtpeft_bench.model.backbone import create_backbone

    rows = []
    for source in ("builtin", "none"):
        torch.manual_seed(0)
        backbone, _ = create_backbone(name, image_size, source)
        for key, weight in backbone.state_dict().items():
            if key.endswith(("qkv.weight", "proj.weight", "fc1.weight", "fc2.weight")) and "patch_embed" not in key:
                s = torch.linalg.svdvals(weight.double())
                role = key.split(".")[-2]
                for i, value in enumerate((s / s[0]).tolist()):
                    rows.append({"backbone": name, "weights": source, "layer": key, "role": role,
                                 "index": i / (len(s) - 1), "sigma": value})
    return rows


def plot_spectra(path: Path) -> tuple[Path, list[dict[str, Any]]]:
    import matplotlib

    matplotlib.use("Agg")
    import pandas as pd
    import seaborn as sns

    frame = pd.DataFrame([*spectra("swin_micro", (64, 64)), *spectra("swin_mini", (96, 128))])
    grid = sns.relplot(frame, x="index", y="sigma", hue="weights", units="layer", estimator=None, col="role",
                       row="backbone", kind="line", height=2.4, aspect=1.1, alpha=0.6, linewidth=0.8)
    grid.set(yscale="log", xlabel="rank / (n - 1)", ylabel="σ_i / σ_1")
    grid.set_titles("{row_name} · {col_name}")
    grid.figure.suptitle("singular values of every block linear: built-in weights vs timm's random init", y=1.02)
    grid.savefig(path, dpi=80, bbox_inches="tight")
    # one number per (backbone, weights): the mean effective rank (Roy & Vetterli, 2007),
    # exp(entropy of σ / Σσ), as a share of the full rank
    import numpy as np

    summary = []
    for (backbone, source), sub in frame.groupby(["backbone", "weights"]):
        ranks = []
        for _, layer in sub.groupby("layer"):
            p = layer["sigma"].to_numpy() / layer["sigma"].sum()
            ranks.append(float(np.exp(-(p * np.log(p)).sum()) / len(p)))
        summary.append({"backbone": backbone, "weights": source, "effective_rank_share": round(statistics.mean(ranks), 4)})
    return path, summary


def install(logs: list[Path]) -> list[str]:
    """Copy the weights of completed pretraining runs (their ``.json`` logs) into the package and
    write their entries into ``card.json``; returns the backbones installed."""
    import json
    import shutil

    models = dict(weights.card()["models"])
    for log in logs:
        record = json.loads(Path(log).read_text(encoding="utf-8"))
        if record.get("status") != "completed":
            raise SystemExit(f"{log}: the run did not complete")
        entry = card_entry(record)
        weights.WEIGHTS_DIR.mkdir(exist_ok=True)
        shutil.copyfile(record["weights"], weights.WEIGHTS_DIR / entry["file"])
        models[entry["backbone"]] = entry
    write_json_atomic(weights.CARD_FILE, {"models": dict(sorted(models.items()))})
    weights.CARD_FILE.chmod(0o644)  # package data: readable by everyone, whatever the umask
    return sorted(models)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, help="folder of the evidence runs' result files")
    parser.add_argument("--plots", type=Path, help="folder to draw loss_curves.png and spectra.png into")
    parser.add_argument("--install", type=Path, nargs="+", help="pretraining logs (.json) whose weights to ship")
    args = parser.parse_args()
    if args.install:
        print("installed:", ", ".join(install(args.install)))
    if args.results:
        print(evidence_markdown(read_records(args.results)))
    if args.plots:
        print(plot_loss_curves(weights.card(), args.plots / "loss_curves.png"))
        path, summary = plot_spectra(args.plots / "spectra.png")
        print(path)
        for row in summary:
            print(row)


if __name__ == "__main__":
    main()
