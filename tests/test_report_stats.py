"""The leaderboard's statistics: t intervals and paired t-tests against hand-computed values, and what
`mtbench compare` shows of them (n, intervals, tests, missing seeds, variants, the eval split).

Expected values come from printed t tables and the closed forms of Student's t distribution with one
and two degrees of freedom, never from scipy:

    df = 1: F(t) = 1/2 + arctan(t)/π          → two-sided p = 1 − 2·arctan(|t|)/π
    df = 2: F(t) = 1/2 + t / (2·√(2 + t²))    → two-sided p = 1 − |t| / √(2 + t²)
"""

from __future__ import annotations

import csv
import io
import math

import pytest

from helpers import run_cli
from helpers.records import record
from mtpeft_bench.report.stats import ci_bounds, mean_ci, paired_test
from mtpeft_bench.results import write_record

T_975 = {1: 12.7062, 2: 4.3027, 4: 2.7764}  # t_{0.975, df} from a printed table (4 significant decimals)


def sample_sd(values):
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


@pytest.mark.parametrize("values", [[1.0, 2.0, 4.0], [10.0, 10.5], [3.0, 1.0, 4.0, 1.0, 5.0]])
def test_interval_is_t_quantile_times_standard_error(values):
    n = len(values)
    estimate = mean_ci(values)
    assert estimate.n == n and estimate.mean == pytest.approx(sum(values) / n)
    assert estimate.half_width == pytest.approx(T_975[n - 1] * sample_sd(values) / math.sqrt(n), rel=1e-4)
    low, high = ci_bounds(values)
    assert (low, high) == pytest.approx((estimate.mean - estimate.half_width, estimate.mean + estimate.half_width))


def test_one_value_has_no_interval_and_missing_values_are_left_out():
    one = mean_ci([2.5, None, float("nan")])
    assert (one.mean, one.half_width, one.n) == (2.5, None, 1)  # unavailable, not 0
    assert mean_ci([]).mean is None and mean_ci([None]).n == 0
    assert all(math.isnan(b) for b in ci_bounds([2.5]))  # nothing to draw


def test_paired_test_on_shared_seeds_by_hand():
    a = {0: 1.0, 1: 2.0, 2: 4.0, 5: 7.0}
    b = {0: 0.5, 1: 1.0, 2: 2.5, 3: 9.0, 5: None}  # seeds 3 and 5 are not shared (5 has no value)
    result = paired_test(a, b)
    assert result.seeds == (0, 1, 2)
    # differences 0.5, 1.0, 1.5: mean 1.0, sd 0.5, t = 1.0 / (0.5/√3) = 2√3, df = 2
    t = 2 * math.sqrt(3)
    assert result.mean_difference == pytest.approx(1.0)
    assert result.p_value == pytest.approx(1 - t / math.sqrt(2 + t * t), rel=1e-9)
    assert not result.significant  # p = 0.074
    # df = 1: differences 1 and 3: mean 2, sd √2, t = 2 / (√2/√2) = 2
    two = paired_test({0: 3.0, 1: 5.0}, {0: 2.0, 1: 2.0})
    assert two.p_value == pytest.approx(1 - 2 * math.atan(2.0) / math.pi, rel=1e-9)


def test_paired_test_edge_cases():
    single = paired_test({0: 2.0, 1: 3.0}, {1: 1.0})
    assert single.seeds == (1,) and single.mean_difference == 2.0 and single.p_value is None
    assert not single.testable and single.significant is None
    assert paired_test({0: 1.0}, {1: 1.0}).mean_difference is None
    assert paired_test({0: 1.0, 1: 2.0}, {0: 1.0, 1: 2.0}).p_value == 1.0  # identical: no difference
    assert paired_test({0: 2.0, 1: 3.0}, {0: 1.0, 1: 2.0}).p_value == 0.0  # a constant shift: t is infinite


# -- what compare shows ------------------------------------------------------------------------------

FULL = [50.0, 52.0, 51.0]  # semseg mIoU per seed; depth at its baseline 0.5: Δm = (s − 48) · 100/96
LORA4 = [49.9, 51.8, 51.2]
DECODER = [40.0, 41.0, 40.5]


def delta(semseg):
    return (semseg - 48.0) * 100 / 96


def study(tmp_path, holdout=False):
    out = tmp_path / "results"
    runs = [record("full", ["semseg"], [48.0]), record("full", ["depth"], [0.5])]
    for seed in range(3):
        runs.append(record("full", ["semseg", "depth"], [FULL[seed], 0.5], seed=seed))
        runs.append(record("full", ["semseg", "depth"], [FULL[seed] - 1, 0.5], seed=seed, tag="default-lr",
                           run_id=f"full-default-lr-{seed}"))
        runs.append(record("lora", ["semseg", "depth"], [LORA4[seed], 0.5], seed=seed, method_config={"rank": 4},
                           run_id=f"lora-r4-{seed}"))
        runs.append(record("decoder_only", ["semseg", "depth"], [DECODER[seed], 0.5], seed=seed))
    for seed in range(2):  # seed 2 missing
        runs.append(record("lora", ["semseg", "depth"], [49.0 + seed, 0.5], seed=seed, method_config={"rank": 8},
                           run_id=f"lora-r8-{seed}"))
    if holdout:
        runs.append(record("lora", ["semseg", "depth"], [60.0, 0.4], seed=0, method_config={"rank": 4},
                           run_id="lora-holdout", eval_split="holdout", tag="lr-0.001"))
    for rec in runs:
        write_record(out, rec)
    return out


def csv_rows(out):
    return {r["method"] + (f" ({r['variant']})" if r["variant"] else "") + (f" [{r['tag']}]" if r["tag"] else ""): r
            for r in csv.DictReader(io.StringIO(out)) if r["tasks"] == "semseg,depth"}


def test_compare_tests_every_row_against_the_reference_and_the_best(tmp_path, capsys):
    out_dir = study(tmp_path)
    code, out, err = run_cli(["compare", "--results", str(out_dir), "--format", "csv"], capsys)
    assert code == 0, err
    rows = csv_rows(out)
    # Variants are separate, labelled rows.
    assert set(rows) == {"full", "full [default-lr]", "lora (rank=4)", "lora (rank=8)", "decoder_only"}
    full, lora4, decoder = rows["full"], rows["lora (rank=4)"], rows["decoder_only"]
    assert (full["delta_m.vs_reference"], full["delta_m.vs_best"]) == ("reference", "best")
    assert full["delta_m.n"] == "3"
    full_deltas = [delta(s) for s in FULL]
    assert float(full["delta_m.ci95"]) == pytest.approx(T_975[2] * sample_sd(full_deltas) / math.sqrt(3), rel=1e-4)
    for row, values in ((lora4, LORA4), (decoder, DECODER)):
        diffs = [delta(v) - delta(f) for v, f in zip(values, FULL)]
        mean = sum(diffs) / 3
        t = mean / (sample_sd(diffs) / math.sqrt(3))
        p = 1 - abs(t) / math.sqrt(2 + t * t)
        assert float(row["delta_m.vs_reference"]) == pytest.approx(mean, abs=1e-5)
        assert float(row["delta_m.vs_reference.p"]) == pytest.approx(p, rel=1e-4, abs=1e-6)
        assert row["delta_m.vs_reference.seeds"] == "0;1;2"
        assert float(row["delta_m.vs_best.p"]) == pytest.approx(p, rel=1e-4, abs=1e-6)  # full is also the best
    assert float(lora4["delta_m.vs_best.p"]) >= 0.05 > float(decoder["delta_m.vs_best.p"])
    assert rows["lora (rank=8)"]["delta_m.vs_best.seeds"] == "0;1"  # only the seeds it shares
    # A seed missing for one row is named on stderr.
    line = next(line for line in err.splitlines() if "lora (rank=8) (semseg,depth) has no run of seed 2 (run for" in line)
    assert all(name in line for name in ("full,", "full [default-lr]", "lora (rank=4)", "decoder_only"))


def test_markdown_marks_ties_with_the_best_and_names_missing_seeds(tmp_path, capsys):
    out_dir = study(tmp_path)
    code, out, err = run_cli(["compare", "--results", str(out_dir)], capsys)
    assert code == 0, err
    lines = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[1:-1]]
             for line in out.splitlines() if line.startswith("| ") and "semseg,depth" in line}
    header = [c.strip() for c in out.splitlines()[2].split("|")[1:-1]]
    column = {name: header.index(name) for name in ("n", "Δm % ↑", "Δm − full (paired)", "vs best Δm")}
    assert lines["lora (rank=4)"][column["vs best Δm"]].startswith("≈ (p=")
    assert lines["decoder_only"][column["vs best Δm"]].startswith("< (p")
    assert lines["full"][column["vs best Δm"]] == "best" and lines["full"][column["Δm − full (paired)"]] == "reference"
    assert lines["lora (rank=8)"][column["n"]] == "2"
    assert "Missing seeds: lora (rank=8) (semseg,depth) has no run of seed 2" in out
    single = [line for line in out.splitlines() if line.startswith("| full ") and "| semseg " in line]
    assert "+0.00 ± n/a" in single[0]  # one seed: the interval is unavailable, not 0


def test_reference_method_option(tmp_path, capsys):
    out_dir = study(tmp_path)
    code, out, err = run_cli(["compare", "--results", str(out_dir), "--format", "csv",
                              "--reference-method", "decoder_only"], capsys)
    assert code == 0, err
    rows = csv_rows(out)
    assert rows["decoder_only"]["delta_m.vs_reference"] == "reference"
    diffs = [delta(f) - delta(d) for f, d in zip(FULL, DECODER)]
    assert float(rows["full"]["delta_m.vs_reference"]) == pytest.approx(sum(diffs) / 3, abs=1e-5)
    code, out, _ = run_cli(["compare", "--results", str(out_dir), "--reference-method", "nobody"], capsys)
    assert code == 0 and "No 'nobody' row with a Δm among the rows of semseg,depth" in out


def test_holdout_records_are_left_out_unless_asked_for(tmp_path, capsys):
    out_dir = study(tmp_path, holdout=True)
    code, out, err = run_cli(["compare", "--results", str(out_dir), "--format", "csv"], capsys)
    assert code == 0, err
    assert "left out 1 record scored on the holdout split" in err and "--eval-split holdout" in err
    assert rows_tags(out) == {"", "default-lr"}
    code, out, err = run_cli(["compare", "--results", str(out_dir), "--format", "csv", "--eval-split", "holdout"],
                             capsys)
    assert code == 0, err
    assert rows_tags(out) == {"lr-0.001"} and "left out 16 records scored on the val split" in err  # 2 + 4 × 3 + 2
    code, _, err = run_cli(["plot", "--results", str(out_dir), "--out", str(tmp_path / "f"), "--dataset", "synth",
                            "--method", "decoder_only"], capsys)
    assert code == 0 and "left out 1 record scored on the holdout split" in err


def rows_tags(text):
    return {r["tag"] for r in csv.DictReader(io.StringIO(text))}


def test_a_record_gets_its_delta_m_from_baselines_of_its_own_split(tmp_path):
    from mtpeft_bench.running.record import write_result

    out = tmp_path / "results"
    for task, value in (("semseg", 48.0), ("depth", 0.5)):
        write_record(out, record("full", [task], [value], eval_split="holdout", run_id=f"holdout-{task}"))
    run = record("lora", ["semseg", "depth"], [49.0, 0.5], run_id="val-run")
    write_result(out, run)
    assert run["delta_m"]["value"] is None  # the holdout single-task runs are not its baselines
    for task, value in (("semseg", 50.0), ("depth", 0.5)):
        write_record(out, record("full", [task], [value], run_id=f"val-{task}"))
    again = record("lora", ["semseg", "depth"], [49.0, 0.5], run_id="val-run-2")
    write_result(out, again)
    assert again["delta_m"]["value"] == pytest.approx(0.5 * 100 * (49.0 - 50.0) / 50.0)  # vs 50, not 48
