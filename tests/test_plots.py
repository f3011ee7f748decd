"""`mtbench plot`: the figures are written, are real images, and say what they show."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import matplotlib
import pytest

from mtpeft_bench.cli import main
from mtpeft_bench.results import write_record


RESULTS = Path(__file__).parent / "fixtures" / "results"
FIGURES = ["pareto_synth_semseg-depth", "metrics_synth", "efficiency_synth", "curves_synth"]


def plot(capsys, *args):
    with pytest.raises(SystemExit) as info:
        main(["plot", *args])
    out, err = capsys.readouterr()
    return info.value.code, out, err


def test_png_files_are_written_and_not_blank(capsys, tmp_path):
    import matplotlib.image

    code, out, err = plot(capsys, "--results", str(RESULTS), "--out", str(tmp_path))
    assert code == 0, err
    assert sorted(p.stem for p in tmp_path.glob("*.png")) == sorted(FIGURES)
    for path in tmp_path.glob("*.png"):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        image = matplotlib.image.imread(path)
        assert image.shape[0] > 300 and image.shape[1] > 600
        assert image[..., :3].std() > 0.05  # not a blank canvas
        assert f"wrote {path}" in out


@pytest.fixture
def svg_text(monkeypatch):
    monkeypatch.setitem(matplotlib.rcParams, "svg.fonttype", "none")  # keep text as text in the SVG

    def read(path: Path) -> str:
        return path.read_text(encoding="utf-8")

    return read


def test_figures_say_what_they_show(capsys, tmp_path, svg_text):
    code, _, err = plot(capsys, "--results", str(RESULTS), "--out", str(tmp_path), "--format", "svg")
    assert code == 0, err
    pareto = svg_text(tmp_path / "pareto_synth_semseg-depth.svg")
    for text in ("synth: Δm vs trainable parameters (semseg, depth)", "trainable parameters (M) ↓",
                 "Δm vs single-task baselines (%) ↑", "Pareto front (black-edged points)", "lora", "task_proj",
                 "decoder_only", "full (mean ± 95% CI, 2 seeds)", "lora (1 seed, no interval)"):
        assert text in pareto, text
    metrics = svg_text(tmp_path / "metrics_synth.svg")
    for text in ("semseg: mIoU ↑", "depth: rmse ↓", "rmse (m)", "mIoU (%)", "full (semseg only)", "50.8"):
        assert text in metrics, text
    efficiency = svg_text(tmp_path / "efficiency_synth.svg")
    for text in ("trainable parameters ↓", "forward FLOPs per image (batch 1) ↓", "peak RSS of the process ↓",
                 "training throughput ↑", "inference throughput ↑", "latency at batch 1 ↓", "merged for inference",
                 "1185", "0.727"):
        assert text in efficiency, text
    curves = svg_text(tmp_path / "curves_synth.svg")
    for text in ("training loss ↓", "validation semseg: mIoU ↑", "validation depth: rmse ↓", "epoch"):
        assert text in curves, text


def pascal_record(method, metrics, trainable, seed=0):
    """A PASCAL-protocol record (Swin-T, 448 px): Δm against the published single-task baselines."""
    rec = json.loads(next((RESULTS / "synth" / "lora").glob("*.json")).read_text())
    rec = copy.deepcopy(rec)
    tasks = ["semseg", "human_parts", "sal", "normals"]
    seg = {"primary": "mIoU", "metrics": {"mIoU": {"higher_is_better": True, "unit": "%"}}}
    rec.update(method=method, dataset="pascal_mt", tasks=tasks, seed=seed, run_id=f"pascal-{method}-{seed}",
               preset="paper", task_specs={"semseg": seg, "human_parts": seg, "sal": seg, "normals": {
                   "primary": "mean", "metrics": {"mean": {"higher_is_better": False, "unit": "deg"}}}},
               metrics={t: {("mean" if t == "normals" else "mIoU"): v} for t, v in zip(tasks, metrics)})
    rec["config"] = {**rec["config"], "backbone": "swin_tiny_patch4_window7_224", "image_size": [448, 448]}
    rec["params"]["summary"]["total_trainable"] = trainable
    return rec


def test_reference_rows_on_the_pareto_plot(capsys, tmp_path, svg_text):
    results = tmp_path / "results"
    write_record(results, pascal_record("full", [67.0, 60.0, 64.0, 17.0], 29_464_442))
    write_record(results, pascal_record("decoder_only", [64.0, 52.0, 57.0, 21.0], 1_946_624))
    code, _, err = plot(capsys, "--results", str(results), "--out", str(tmp_path / "figs"), "--format", "svg",
                        "--reference")
    assert code == 0, err
    pareto = svg_text(tmp_path / "figs" / "pareto_pascal_mt_4tasks.svg")
    for text in ("published (not run here)", "MTLoRA r=64", "DiTASK", "trainable parameters (M, log scale) ↓"):
        assert text in pareto, text
    # compare marks Δm against published single-task numbers with "(ref)"
    with pytest.raises(SystemExit):
        main(["compare", "--results", str(results)])
    assert "(ref)" in capsys.readouterr().out


def test_bad_input(capsys, tmp_path):
    code, _, err = plot(capsys, "--results", str(tmp_path / "none"), "--out", str(tmp_path))
    assert code == 2 and "no results folder" in err
    code, _, err = plot(capsys, "--results", str(RESULTS), "--out", str(tmp_path), "--method", "nothing")
    assert code == 2 and "match the filters" in err


def test_pareto_error_bars_are_t_intervals(monkeypatch, tmp_path):
    """The vertical error bar of a row is mean ± t(0.975, n−1)·s/√n of its seeds' Δm (by hand below);
    a row of one seed gets none."""
    import math

    from mtpeft_bench.report import plots
    from mtpeft_bench.report.rows import leaderboard
    from helpers.records import record

    records = [record("full", ["semseg"], [48.0], seed=0), record("full", ["depth"], [0.5], seed=0)]
    # Δm of (s, d) against 48 / 0.5: ½[100(s−48)/48 − 100(d−0.5)/0.5]
    records += [record("lora", ["semseg", "depth"], [s, 0.5], seed=i) for i, s in enumerate([48.0, 52.8, 50.4])]
    records += [record("full", ["semseg", "depth"], [48.0, 0.5], seed=0)]
    deltas = [0.0, 5.0, 2.5]  # ½·100·(0, 4.8, 2.4)/48
    mean = sum(deltas) / 3
    sd = math.sqrt(sum((d - mean) ** 2 for d in deltas) / 2)
    half = 4.302652729749462 * sd / math.sqrt(3)  # t_{0.975, 2} from a printed table

    figures = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: figures.append(fig) or path)
    rows = [r for r in leaderboard(records) if len(r["tasks"]) == 2]
    plots.plot_pareto(rows, tmp_path / "p.png", "t")
    bars = {}
    for collection in figures[0].axes[0].collections:
        for segment in collection.get_segments() if hasattr(collection, "get_segments") else []:
            (x0, y0), (x1, y1) = segment
            if x0 == x1 and y0 != y1:
                bars[round(x0, 6)] = (min(y0, y1), max(y0, y1))
    assert len(bars) == 1  # lora only: the full row has one seed
    (low, high), = bars.values()
    assert low == pytest.approx(mean - half) and high == pytest.approx(mean + half)


def test_a_pareto_figure_of_many_rows_names_its_points_and_keeps_a_short_legend(tmp_path, svg_text):
    """Beyond 8 rows the legend would cover the points: each point is named beside it instead, the
    legend says once what a point and its bar are, and no two rows share a colour."""
    from helpers.records import record
    from mtpeft_bench.report.plots import _palette, plot_pareto, row_label
    from mtpeft_bench.report.rows import leaderboard

    methods = [f"method{i}" for i in range(12)]
    records = [record("full", [task], [value], seed=seed) for seed in range(3)
               for task, value in (("semseg", 48.0), ("depth", 0.5))]
    records += [record(name, ["semseg", "depth"], [48.0 + i + seed * 0.5, 0.5], seed=seed,
                       params={"summary": {"total_trainable": 1_000_000 + 10_000 * i}})
                for i, name in enumerate(methods) for seed in range(3)]
    rows = [r for r in leaderboard(records) if len(r["tasks"]) == 2]
    path = plot_pareto(rows, tmp_path / "pareto.svg", "many rows")
    text = svg_text(path)
    assert "a row: mean ± 95% CI over 3 seeds" in text
    assert all(name in text for name in methods)  # each point named beside it
    assert "(mean ± 95% CI, 3 seeds)" not in text  # no entry per row
    colors = _palette(row_label(r) for r in rows)
    assert len({tuple(c) for c in colors.values()}) == len(rows)
