"""Leaderboards and Δm baselines from result records (torch-free code)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from helpers.records import SPECS, record
from mtpeft_bench.report.baselines import compute_delta
from mtpeft_bench.report.rows import leaderboard, render, render_document
from mtpeft_bench.atomic import write_json_atomic
from mtpeft_bench.results import load_results, read_records, write_record


def test_delta_against_suite_baselines():
    st = [record("full", ["semseg"], [50.0]), record("full", ["depth"], [0.5]),
          record("full", ["depth"], [0.7], seed=1)]  # two seeds: baseline 0.6
    mt = record("lora", ["semseg", "depth"], [55.0, 0.54])
    delta = compute_delta(mt, [*st, mt])
    # semseg +10 %, depth (lower is better) (0.6-0.54)/0.6 = +10 % → Δm = +10
    assert delta["value"] == pytest.approx(10.0)
    assert delta["baseline"]["source"] == "suite"
    assert delta["baseline"]["values"] == {"semseg": 50.0, "depth": pytest.approx(0.6)}


def test_baselines_need_the_same_recipe():
    st = [record("full", ["semseg"], [50.0], recipe="OTHER"), record("full", ["depth"], [0.5])]
    mt = record("lora", ["semseg", "depth"], [55.0, 0.54])
    delta = compute_delta(mt, [*st, mt])
    assert delta["value"] is None
    assert "semseg" in delta["baseline"]["reason"]
    assert "runs for semseg exist, but with another recipe" in delta["baseline"]["reason"]


def test_compare_says_why_a_delta_is_missing():
    st = [record("full", ["semseg"], [50.0], recipe="OTHER"), record("full", ["depth"], [0.5])]
    mt = [record("lora", ["semseg", "depth"], [55.0, 0.54]), record("mtlora", ["semseg", "depth"], [56.0, 0.5])]
    text = render_document(leaderboard([*st, *mt]), "md")
    line = next(x for x in text.splitlines() if x.startswith("- Δm — for"))
    assert line.startswith("- Δm — for lora, mtlora: no single-task baseline for semseg:")
    assert "another recipe" in line
    complete = [*st, record("full", ["semseg"], [50.0])]
    assert "Δm — for" not in render_document(leaderboard([*complete, *mt]), "md")


def test_reference_baselines_apply_only_to_their_protocol():
    pascal = {"backbone": "swin_tiny_patch4_window7_224", "image_size": [448, 448]}
    rec = record("mtlora", ["semseg", "depth"], [1, 1], dataset="pascal_mt")
    rec["task_specs"] = {
        "semseg": SPECS["semseg"], "depth": SPECS["depth"]}
    # pascal_mt's reference has no depth: no baseline
    rec["config"] = pascal
    assert compute_delta(rec, [rec])["value"] is None


def test_leaderboard_aggregates_seeds_and_renders():
    runs = [record("full", ["semseg"], [50.0]), record("full", ["depth"], [0.5]),
            record("lora", ["semseg", "depth"], [55.0, 0.45], seed=0),
            record("lora", ["semseg", "depth"], [45.0, 0.55], seed=1)]
    rows = leaderboard(runs)
    lora = next(r for r in rows if r["method"] == "lora")
    assert lora["n"] == 2 and lora["seeds"] == [0, 1]
    text = render(rows, "md")
    # mean ± 95 % interval of 55 and 45: s = 7.071, t_{0.975,1} = 12.706 → 12.706 · 7.071 / √2 = 63.53
    assert "50.00 ± 63.53" in text
    assert "semseg mIoU ↑" in text and "depth rmse ↓ (m)" in text
    # Δm per seed: (+10 + 10)/2 = 10 and (-10 - 10)/2 = -10 → s = 14.14 → 0.00 ± 12.706 · 14.14 / √2 = 127.06
    assert "0.00 ± 127.06" in text
    csv_text = render(rows, "csv")
    assert csv_text.splitlines()[0].startswith("method,variant,tasks,preset,seeds")
    assert "\\toprule" in render(rows, "latex")


def test_atomic_write_and_load(tmp_path):
    rec = record("full", ["semseg"], [50.0])
    path = write_record(tmp_path, rec)
    assert path == tmp_path / "synth" / "full" / f"{rec['run_id']}.json"
    with pytest.raises(FileExistsError):
        write_record(tmp_path, rec)
    (tmp_path / "notes.json").write_text("[1, 2]")  # not a record: skipped
    (tmp_path / "broken.json").write_text("{")
    assert [r["run_id"] for r in read_records(tmp_path)] == [rec["run_id"]]
    assert not list(tmp_path.rglob("*.tmp"))
    frame = load_results(tmp_path)
    assert frame.loc[0, "metric.semseg.mIoU"] == 50.0
    assert frame.loc[0, "params.total_trainable"] == 1_500_000


def test_atomic_write_keeps_old_file_on_failure(tmp_path):
    path = tmp_path / "r.json"
    write_json_atomic(path, {"a": 1})
    with pytest.raises(TypeError):
        write_json_atomic(path, {"a": object()})
    assert json.loads(path.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


def test_compare_does_not_import_torch(tmp_path):
    write_record(tmp_path, record("full", ["semseg"], [50.0]))
    code = textwrap.dedent(f"""
        import sys
        from mtpeft_bench.cli import main
        try:
            main(["compare", "--results", {str(tmp_path)!r}])
        except SystemExit as exc:
            assert exc.code == 0, exc.code
        assert "torch" not in sys.modules
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "| full" in result.stdout


def test_published_baselines_for_the_matching_protocol_only():
    specs = {
        "semseg": SPECS["semseg"],
        "normals": {"primary": "mean", "metrics": {"mean": {"higher_is_better": False, "unit": "deg"}}},
    }
    rec = record("mtlora", ["semseg"], [67.90], dataset="pascal_mt")
    rec["tasks"] = ["semseg", "normals"]
    rec["task_specs"] = specs
    rec["metrics"] = {"semseg": {"mIoU": 67.90}, "normals": {"mean": 16.60}}
    rec["config"] = {"backbone": "swin_tiny_patch4_window7_224.ms_in22k", "image_size": [448, 448]}
    rec["data_config"] = {"protocol": "mtlora"}
    delta = compute_delta(rec, [rec])
    # (67.90-67.21)/67.21 = +1.0266 %, (17.97-16.60)/17.97 = +7.6238 % → mean +4.3252 %
    assert delta["baseline"]["source"] == "reference"
    assert delta["value"] == pytest.approx(4.3252, abs=1e-3)
    rec["data_config"] = {"protocol": "mtinet"}
    assert compute_delta(rec, [rec])["value"] is None
    rec["data_config"] = {"protocol": "mtlora"}
    rec["config"]["image_size"] = [224, 224]
    assert compute_delta(rec, [rec])["value"] is None


def test_runs_with_different_method_options_are_different_rows():
    runs = [record("mtlora", ["semseg"], [50.0], seed=0, method_config={"rank": 16, "task_rank": 4}),
            record("mtlora", ["semseg"], [52.0], seed=1, method_config={"rank": 16, "task_rank": 4}),
            record("mtlora", ["semseg"], [60.0], seed=0, method_config={"rank": 64, "task_rank": 4}),
            record("full", ["semseg"], [55.0], method_config={})]
    rows = leaderboard(runs)
    mtlora = sorted((r for r in rows if r["method"] == "mtlora"), key=lambda r: r["variant"])
    assert [(r["variant"], r["n"]) for r in mtlora] == [("rank=16", 2), ("rank=64", 1)]
    assert next(r for r in rows if r["method"] == "full")["variant"] == ""
    text = render(rows, "md")
    assert "mtlora (rank=16)" in text and "mtlora (rank=64)" in text


def test_rows_that_differ_only_in_recipe_say_what_differs():
    def with_weights(rec, sha, recipe):
        return {**rec, "recipe_key": recipe, "weights": {"source": "builtin", "sha256": sha}}

    old = with_weights(record("lora", ["semseg", "depth"], [55.0, 0.5]), "aaaaaaaa1111", "R-old")
    new = with_weights(record("lora", ["semseg", "depth"], [57.0, 0.5]), "bbbbbbbb2222", "R-new")
    labels = sorted(r["variant"] for r in leaderboard([old, new]))
    assert labels == ["weights=builtin:aaaaaaaa", "weights=builtin:bbbbbbbb"]
    # A difference the summary does not show: the recipe hash tells the rows apart.
    hidden = {**new, "weights": old["weights"]}
    assert sorted(r["variant"] for r in leaderboard([old, hidden])) == ["recipe=R-new", "recipe=R-old"]
    assert [r["variant"] for r in leaderboard([old])] == [""]
