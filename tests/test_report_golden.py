"""Golden tests: hand-written result files (tests/fixtures/results) → the exact tables of `mtbench compare`.

Inputs (primary metrics; the single-task baselines are full [semseg] 48.0 and full [depth] 0.50):

    run                      semseg mIoU   depth rmse   trainable   peak MB   train img/s   latency ms
    full seed 0              50.0          0.50         2,145,499   1180      40.0          12.0
    full seed 1              51.6          0.47         2,145,499   1190      42.0          12.4
    lora                     49.0          0.48           726,520   1000      55.0          14.0 (merged 11.9)
    task_proj                47.0          0.52           895,480    950      60.0          13.5
    decoder_only             40.0          0.66           720,440    900      70.0          11.8

Worked out by hand (± is the half-width of the 95 % confidence interval, t · s / √n; with n = 2 seeds
t_{0.975, 1} = 12.7062 from a printed t table, so half-width = 12.7062 · s / √2 = 8.9846 · s):

- Δm = ½ [100 (s − 48)/48 − 100 (d − 0.50)/0.50]
  full s0: ½ [4.1667 + 0] = 2.0833; full s1: ½ [7.5 + 6.0] = 6.75
  → mean 4.4167, sample std s = |6.75 − 2.0833| / √2 = 3.2998, half-width 29.648 → "+4.42 ± 29.65"
  lora: ½ [2.0833 + 4.0] = 3.0417 → "+3.04 ± n/a" (one seed: no interval); task_proj: ½ [−2.0833 − 4.0]
  = −3.0417 → "-3.04 ± n/a"; decoder_only: ½ [−16.6667 − 32.0] = −24.3333 → "-24.33 ± n/a"; the
  baselines themselves: 0 → "+0.00 ± n/a"
- full semseg 50.8, s = 1.6/√2 = 1.1314 → half-width 10.165 → "50.80 ± 10.16"; depth 0.485, s = 0.0212
  → 0.1906 → "0.4850 ± 0.1906"
- full peak 1185, s = 7.071 → 63.53 → "1185 ± 64"; train 41.0, s = 1.414 → 12.71 → "41.0 ± 12.7";
  latency 12.2, s = 0.2828 → 2.541 → "12.2 ± 2.5" (cost figures of one seed show the value alone)
- Paired tests of Δm (only full has seed 1): every other two-task row shares one seed (0) with full, the
  reference and best row, so none can be tested ("untested (1 shared seed)"); the mean paired
  difference on that seed is still shown: lora 3.0417 − 2.0833 = +0.96, task_proj −3.0417 − 2.0833 =
  −5.13, decoder_only −24.3333 − 2.0833 = −26.42. lora, task_proj and decoder_only lack seed 1: named.
- Pareto (fewer parameters ↓, higher Δm ↑) among the four two-task rows: decoder_only (fewest parameters),
  lora (0.727 M, +3.04), full (highest Δm) are on the front; task_proj (0.895 M, −3.04) is dominated by
  lora. The single-task rows are alone in their task sets: no mark.
- Order (Δm descending within the two-task set, then the single-task sets by name): full, lora,
  task_proj, decoder_only, full [depth], full [semseg].
- GFLOPs 113,684,480 / 1e9 → "0.114"; 74,000,000 → "0.0740".
"""

from __future__ import annotations

import csv
import io
import subprocess
import sys
import textwrap
from html.parser import HTMLParser
from pathlib import Path

import pytest

from mtpeft_bench.cli import main
from mtpeft_bench.report.rows import pareto_front
from mtpeft_bench.results import load_history, load_results


FIXTURES = Path(__file__).parent / "fixtures"
RESULTS = FIXTURES / "results"


def compare(capsys, *args):
    with pytest.raises(SystemExit) as info:
        main(["compare", "--results", str(RESULTS), *args])
    out, err = capsys.readouterr()
    return info.value.code, out, err


def test_markdown_matches_the_golden_file(capsys):
    code, out, err = compare(capsys)
    assert code == 0, err
    assert out == (FIXTURES / "expected" / "compare.md").read_text(encoding="utf-8")


def test_csv_matches_the_golden_file(capsys):
    code, out, err = compare(capsys, "--format", "csv")
    assert code == 0, err
    assert out == (FIXTURES / "expected" / "compare.csv").read_text(encoding="utf-8")


def rows_of(text):
    return list(csv.DictReader(io.StringIO(text)))


def test_csv_numbers_are_the_hand_computed_ones(capsys):
    _, out, _ = compare(capsys, "--format", "csv")
    rows = {(r["method"], r["tasks"]): r for r in rows_of(out)}
    full = rows[("full", "semseg,depth")]
    assert float(full["delta_m"]) == pytest.approx(4.416667, abs=1e-6)
    t = 12.706204736  # t_{0.975, 1} (printed tables: 12.706)
    assert float(full["delta_m.ci95"]) == pytest.approx(t * 3.299832 / 2 ** 0.5, abs=1e-5)
    assert full["delta_m.n"] == "2"
    assert float(full["semseg.mIoU"]) == pytest.approx(50.8)
    assert float(full["semseg.mIoU.ci95"]) == pytest.approx(t * 1.131371 / 2 ** 0.5, abs=1e-5)
    assert float(full["depth.rmse"]) == pytest.approx(0.485)
    assert float(full["depth.rmse.ci95"]) == pytest.approx(t * 0.021213 / 2 ** 0.5, abs=1e-5)
    assert full["seeds"] == "0;1" and full["n"] == "2"
    assert (full["delta_m.vs_reference"], full["delta_m.vs_best"]) == ("reference", "best")
    lora = rows[("lora", "semseg,depth")]
    assert lora["delta_m.ci95"] == "" and lora["delta_m.n"] == "1"  # one seed: no interval, not 0
    assert float(lora["delta_m.vs_reference"]) == pytest.approx(3.041667 - 2.083333, abs=1e-5)
    assert lora["delta_m.vs_reference.p"] == "" and lora["delta_m.vs_reference.seeds"] == "0"  # one shared seed
    assert float(rows[("lora", "semseg,depth")]["delta_m"]) == pytest.approx(3.041667, abs=1e-6)
    assert float(rows[("task_proj", "semseg,depth")]["delta_m"]) == pytest.approx(-3.041667, abs=1e-6)
    assert float(rows[("decoder_only", "semseg,depth")]["delta_m"]) == pytest.approx(-24.333333, abs=1e-6)
    assert {m: rows[(m, "semseg,depth")]["pareto"] for m in ("full", "lora", "task_proj", "decoder_only")} == {
        "full": "true", "lora": "true", "task_proj": "false", "decoder_only": "true"}
    assert rows[("lora", "semseg,depth")]["merged_latency_ms"] == "11.9"
    assert [r["method"] + ":" + r["tasks"] for r in rows_of(out)] == [
        "full:semseg,depth", "lora:semseg,depth", "task_proj:semseg,depth", "decoder_only:semseg,depth",
        "full:depth", "full:semseg"]


def test_filters_keep_baselines_for_delta_m(capsys):
    code, out, _ = compare(capsys, "--format", "csv", "--method", "lora,decoder_only")
    assert code == 0
    rows = rows_of(out)
    assert [r["method"] for r in rows] == ["lora", "decoder_only"]  # the single-task runs are not shown ...
    assert float(rows[0]["delta_m"]) == pytest.approx(3.041667, abs=1e-6)  # ... but still the baselines
    assert [r["pareto"] for r in rows] == ["true", "true"]
    code, _, err = compare(capsys, "--tag", "nope")
    assert code == 2 and "tags nope" in err


def test_sort_by_parameters(capsys):
    _, out, _ = compare(capsys, "--format", "csv", "--sort", "params")
    two_task = [r["method"] for r in rows_of(out) if r["tasks"] == "semseg,depth"]
    assert two_task == ["decoder_only", "lora", "task_proj", "full"]  # 0.720 < 0.727 < 0.895 < 2.145 M


def test_parameter_groups(capsys):
    _, out, _ = compare(capsys, "--format", "csv", "--param-groups")
    rows = {(r["method"], r["tasks"]): r for r in rows_of(out)}
    # full trains the extras (patch embedding 1,632 + norms 4,224 + rel-pos 611 + reductions 172,032) and linears
    assert rows[("full", "semseg,depth")]["trainable.extras"] == str(1632 + 4224 + 611 + 172032)
    assert rows[("task_proj", "semseg,depth")]["trainable.method"] == "175040"
    assert rows[("decoder_only", "semseg,depth")]["trainable.decoder"] == "720440"


def test_latex_is_escaped(capsys):
    code, out, _ = compare(capsys, "--format", "latex")
    assert code == 0
    table = [line for line in out.splitlines() if line.endswith(r"\\")]
    assert len(table) == 1 + 6  # header and six rows
    assert len({line.count(" & ") for line in table}) == 1
    assert r"decoder\_only" in out and r"$\pm$" in out and r"$\Delta$m \% $\uparrow$" in out
    assert not any(ch in out for ch in "±↑↓Δ★")
    assert out.startswith("% ")  # the notes, as comments above the tabular


def test_html_table(capsys):
    code, out, _ = compare(capsys, "--format", "html")
    assert code == 0

    class Cells(HTMLParser):
        rows = 0

        def handle_starttag(self, tag, attrs):
            if tag == "tr":
                Cells.rows += 1

    Cells().feed(out)
    assert Cells.rows == 1 + 6
    assert "<h2>synth</h2>" in out and "+4.42 ± 29.65" in out


def test_output_file(capsys, tmp_path):
    target = tmp_path / "table.md"
    code, out, _ = compare(capsys, "--output", str(target))
    assert code == 0 and "wrote" in out
    assert target.read_text(encoding="utf-8") == (FIXTURES / "expected" / "compare.md").read_text(encoding="utf-8")


def test_published_rows_are_marked_and_recomputed(capsys):
    code, out, _ = compare(capsys, "--dataset", "pascal_mt", "--reference", "--format", "csv")
    assert code == 0
    rows = {r["method"]: r for r in rows_of(out)}
    # 53 rows in tasks/reference/pascal_mt.yaml, less 9 ablations and 14 copies whose original is in the file
    assert len(rows) == 30
    assert all(r["source"] != "suite" and r["pareto"] == "" for r in rows.values())
    # Δm against 67.21 / 61.93 / 62.35 / 17.97 (by hand, docs/protocol.md 5.4):
    # decoders only: ¼ [−3.1543 − 13.6444 − 7.8428 − 15.1363] = −9.9445
    # full fine-tuning: ¼ [0.5208 − 2.7289 + 4.5870 + 7.4012] = +2.4450 (the paper's +2.23 disagrees)
    # MTLoRA r=64: ¼ [1.0266 − 3.3748 + 4.8917 + 7.6238] = +2.5419
    # DiTASK: ¼ [3.6453 + 0.1453 + 4.2502 + 4.8414] = +3.2206
    expected = {"MTL decoders only": -9.9445, "MTL full fine-tuning": 2.4450, "MTLoRA r=64": 2.5419, "DiTASK": 3.2206,
                "Single-task (4 models)": 0.0}
    for method, value in expected.items():
        assert float(rows[method]["delta_m"]) == pytest.approx(value, abs=1e-4), method
    assert rows["MTL full fine-tuning"]["delta_m_published"] == "2.23"
    assert rows["Single-task (4 models)"]["verified"] == "true"
    assert rows["DiTASK"]["verified"] == "false" and rows["DiTASK"]["source"] == "DiTASK, CVPR 2025"
    assert rows["Adapter"]["trainable"] == ""  # uncertain in the sources: not shown
    assert rows["MTLoRA r=64"]["trainable"] == "8340000"

    _, md, _ = compare(capsys, "--dataset", "pascal_mt", "--reference")
    assert "| MTL full fine-tuning (published, unverified)" in md
    assert "+2.45 (paper +2.23)" in md and "| Single-task (4 models) (published) " in md
    assert "arxiv.org/abs/2403.20320" in md and "arxiv.org/abs/2502.06029" in md


def test_published_rows_need_the_flag(capsys):
    code, _, err = compare(capsys, "--dataset", "pascal_mt")
    assert code == 2 and "no completed runs" in err


def test_pareto_front_by_hand():
    points = [(1, 1), (2, 2), (2, 1), (3, 3), (3, 3), (None, 5), (0.5, -1), (4, 2)]
    # (2, 1) is dominated by (1, 1) (fewer parameters, same Δm); (4, 2) by (2, 2) and (3, 3); equal points
    # (3, 3) do not dominate each other; (0.5, -1) has the fewest parameters; a missing coordinate: None.
    assert pareto_front(points) == [True, True, False, True, True, None, True, False]
    assert pareto_front([]) == []


def test_load_results_flat_columns():
    frame = load_results(RESULTS)
    assert len(frame) == 8  # seven completed runs and the failed one; notes.json is not a run
    assert set(frame["status"]) == {"completed", "failed"}
    lora = frame[frame["method"] == "lora"].iloc[0]
    assert lora["efficiency.inference.merged.latency_ms"] == 11.9
    assert lora["efficiency.latency_ms"] == 14.0
    assert lora["params.group.method.trainable"] == 6080
    assert lora["params.total_trainable"] == 726520
    assert lora["metric.depth.rmse"] == 0.48


def test_load_history_long_format():
    frame = load_history(RESULTS)
    full = frame[(frame["method"] == "full") & (frame["n_tasks"] == 2)]
    assert sorted(full["epoch"]) == [1, 1, 2, 2, 3, 3]
    assert full[full["epoch"] == 1]["val.semseg.mIoU"].isna().all()  # not evaluated at epoch 1
    assert sorted(full[full["epoch"] == 3]["val.semseg.mIoU"]) == [50.0, 51.6]
    assert "task_loss.depth" in frame


def test_compare_and_plot_never_import_torch(tmp_path):
    code = textwrap.dedent(f"""
        import sys
        from mtpeft_bench.cli import main
        for args in (["compare", "--results", {str(RESULTS)!r}, "--reference", "--format", "html"],
                     ["plot", "--results", {str(RESULTS)!r}, "--out", {str(tmp_path)!r}]):
            try:
                main(args)
            except SystemExit as exc:
                assert exc.code == 0, (args, exc.code)
        assert "torch" not in sys.modules, "torch was imported"
        import mtpeft_bench
        mtpeft_bench.load_results({str(RESULTS)!r}), mtpeft_bench.load_history({str(RESULTS)!r})
        assert "torch" not in sys.modules, "torch was imported"
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert len(list(tmp_path.glob("*.png"))) == 4


def test_written_files_get_the_usual_permissions(tmp_path):
    import os

    from mtpeft_bench.atomic import write_json_atomic, write_text_atomic

    umask = os.umask(0o022)
    try:
        for path in (write_text_atomic(tmp_path / "a.md", "x"), write_json_atomic(tmp_path / "b.json", {"a": 1})):
            assert path.stat().st_mode & 0o777 == 0o644  # not mkstemp's private 0600
    finally:
        os.umask(umask)
