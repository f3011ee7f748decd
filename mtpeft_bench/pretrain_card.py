"""The evidence of the built-in weights' model card: tables from result files, loss curves, spectra.

``python -m mtpeft_bench.pretrain_card --results DIR --plots DIR`` prints the Markdown tables of
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

    from mtpeft_bench.pretrain import TERM_WEIGHTS

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

    from mtpeft_bench.builtin_weights import CARD_FILE, WEIGHTS_DIR, card
    from mtpeft_bench.pretrain import card_entry
    from mtpeft_bench.results import write_json_atomic

    models = dict(card()["models"])
    for log in logs:
        record = json.loads(Path(log).read_text(encoding="utf-8"))
        if record.get("status") != "completed":
            raise SystemExit(f"{log}: the run did not complete")
        entry = card_entry(record)
        WEIGHTS_DIR.mkdir(exist_ok=True)
        shutil.copyfile(record["weights"], WEIGHTS_DIR / entry["file"])
        models[entry["backbone"]] = entry
    write_json_atomic(CARD_FILE, {"models": dict(sorted(models.items()))})
    CARD_FILE.chmod(0o644)  # package data: readable by everyone (the temporary file was private)
    return sorted(models)


def main() -> None:
    from mtpeft_bench.builtin_weights import card
    from mtpeft_bench.results import read_records

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
        print(plot_loss_curves(card(), args.plots / "loss_curves.png"))
        path, summary = plot_spectra(args.plots / "spectra.png")
        print(path)
        for row in summary:
            print(row)


if __name__ == "__main__":
    main()
