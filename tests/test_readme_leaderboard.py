"""README.md's generated blocks equal what `mtbench compare` prints for the committed results/synth,
and its Pareto figure's points equal what the records give.

While results/synth holds no completed validation-split run, compare has no table (it exits with an
error) and each block must hold the fixed sentence of `mtpeft_bench.report.readme`; once runs are
committed, the leaderboard block must be compare's Markdown output byte for byte, the proxy block
`compare --proxy pascal_mt`'s, and the figure's points file the points of the rows with a Δm.
Either way a README that disagrees with the committed records fails here.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest

from helpers import run_cli
from helpers.records import record
from mtpeft_bench.report.readme import (END, START, blocks, empty_text, expected_block, leaderboard_markdown, main,
                                        no_figure_text, no_proxy_text, regenerate, stale_items)
from mtpeft_bench.results import read_records, select_split, write_record

REPO = Path(__file__).resolve().parents[1]
HOW = "regenerate it with `python -m mtpeft_bench.report.readme` (run in the repository root) and commit README.md"


def _has_val_runs(results: Path) -> bool:
    completed = [r for r in (read_records(results) if results.is_dir() else []) if r.get("status") == "completed"]
    return bool(select_split(completed, "val")[0])


def test_readme_block_matches_compare_on_the_committed_results(capsys):
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert START.format(key="leaderboard:synth") in readme, "README.md lost its leaderboard:synth markers"
    block = blocks(readme)["leaderboard:synth"]
    results = REPO / "results" / "synth"
    if not _has_val_runs(results):
        assert block == empty_text("results/synth"), f"results/synth has no completed run, but README.md shows a table; {HOW}"
        code, _, err = run_cli(["compare", "--results", str(results)], capsys)
        assert code == 2 and "no" in err  # compare has nothing to print either
        return
    code, out, err = run_cli(["compare", "--results", str(results), "--format", "md"], capsys)
    assert code == 0, err
    assert block == out, f"README.md's leaderboard:synth block differs from `mtbench compare --results results/synth`; {HOW}"


def test_readme_proxy_block_matches_compare_proxy_on_the_committed_results(capsys):
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    block = blocks(readme)["proxy:synth:pascal_mt"]
    results = REPO / "results" / "synth"
    if not _has_val_runs(results):
        assert block == no_proxy_text("results/synth"), HOW
        return
    code, out, err = run_cli(["compare", "--results", str(results), "--dataset", "synth", "--proxy", "pascal_mt"],
                             capsys)
    assert code == 0, err
    assert block == out, f"README.md's proxy:synth:pascal_mt block differs from `mtbench compare --proxy`; {HOW}"


def test_readme_pareto_figure_is_current_for_the_committed_results():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    block = blocks(readme)["pareto:synth"]
    assert stale_items(readme, REPO) == [], HOW
    expected = expected_block("pareto:synth", REPO)
    if expected.figure is None:
        assert block == no_figure_text("results/synth")
        return
    assert (REPO / expected.figure.png).is_file()
    assert f"]({expected.figure.png.as_posix()})" in block


def test_regenerate_writes_compare_output_and_check_notices_a_stale_block(tmp_path, capsys):
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- leaderboard:synth:start -->\nold table\n<!-- leaderboard:synth:end -->\nend\n")
    assert main(["--readme", str(readme), "--check"]) == 1  # "old table" is not what an empty folder shows
    assert main(["--readme", str(readme)]) == 0
    assert blocks(readme.read_text())["leaderboard:synth"] == empty_text("results/synth")
    assert main(["--readme", str(readme), "--check"]) == 0

    for rec in (record("full", ["semseg"], [48.0]), record("full", ["depth"], [0.5]),
                record("full", ["semseg", "depth"], [50.0, 0.45]), record("lora", ["semseg", "depth"], [49.0, 0.5])):
        write_record(tmp_path / "results" / "synth", rec)
    assert main(["--readme", str(readme), "--check"]) == 1  # runs were added: stale
    assert main(["--readme", str(readme)]) == 0
    text = readme.read_text()
    capsys.readouterr()  # what main printed
    assert text.startswith("intro\n") and text.endswith("<!-- leaderboard:synth:end -->\nend\n")
    code, out, err = run_cli(["compare", "--results", str(tmp_path / "results" / "synth"), "--format", "md"], capsys)
    assert code == 0, err
    assert blocks(text)["leaderboard:synth"] == out
    assert regenerate(text, tmp_path) == text  # stable
    assert leaderboard_markdown(tmp_path / "nothing", "results/x") == empty_text("results/x")


def _two_seed_results(results: Path) -> None:
    """Baselines semseg mIoU 48, depth rmse 0.5; full at (50, 0.45) on both seeds, so Δm
    = (50/48 − 1 + 1 − 0.45/0.5)/2 = +7.0833 %; lora at (49, 0.5) and (49, 0.48), so Δm +1.0417 and
    +3.0417 %: mean +2.0417, 95 % half-width t(0.975, 1) · 1.4142/√2 = 12.7062."""
    for seed in (0, 1):
        write_record(results, record("full", ["semseg"], [48.0], seed=seed))
        write_record(results, record("full", ["depth"], [0.5], seed=seed))
        write_record(results, record("full", ["semseg", "depth"], [50.0, 0.45], seed=seed))
        write_record(results, record("lora", ["semseg", "depth"], [49.0, [0.5, 0.48][seed]], seed=seed,
                                     params={"summary": {"total_trainable": 300_000}}))


def test_the_pareto_block_draws_the_figure_and_writes_the_points_it_plots(tmp_path, capsys):
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{START.format(key='pareto:synth')}\n{END.format(key='pareto:synth')}\n"
                      f"{START.format(key='proxy:synth:pascal_mt')}\n{END.format(key='proxy:synth:pascal_mt')}\n")
    assert main(["--readme", str(readme)]) == 0
    assert blocks(readme.read_text())["pareto:synth"] == no_figure_text("results/synth")
    assert blocks(readme.read_text())["proxy:synth:pascal_mt"] == no_proxy_text("results/synth")
    assert not (tmp_path / "docs").exists()  # no figure without rows

    _two_seed_results(tmp_path / "results" / "synth")
    assert main(["--readme", str(readme), "--check"]) == 1
    assert main(["--readme", str(readme)]) == 0
    text = readme.read_text()
    png, points = tmp_path / "docs/figures/pareto_synth.png", tmp_path / "docs/figures/pareto_synth.csv"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "](docs/figures/pareto_synth.png)" in blocks(text)["pareto:synth"]
    rows = {row["row"]: row for row in csv.DictReader(io.StringIO(points.read_text()))}
    assert set(rows) == {"full", "lora"}  # the single-task baselines are not points of the front
    assert rows["full"]["seeds"] == "2" and rows["full"]["trainable_params"] == "1500000"
    assert float(rows["full"]["delta_m_mean"]) == pytest.approx((50 / 48 - 1 + 1 - 0.45 / 0.5) / 2 * 100, abs=1e-4)
    assert float(rows["full"]["delta_m_ci95"]) == pytest.approx(0.0, abs=1e-4)
    lora_seeds = [(49 / 48 - 1 + 1 - depth / 0.5) / 2 * 100 for depth in (0.5, 0.48)]
    assert float(rows["lora"]["delta_m_mean"]) == pytest.approx(sum(lora_seeds) / 2, abs=1e-4)
    assert float(rows["lora"]["delta_m_ci95"]) == pytest.approx(12.7062, abs=1e-3)
    assert rows["full"]["pareto"] == rows["lora"]["pareto"] == "yes"  # fewer parameters or more Δm

    capsys.readouterr()
    code, out, err = run_cli(["compare", "--results", str(tmp_path / "results" / "synth"), "--dataset", "synth",
                              "--proxy", "pascal_mt"], capsys)
    assert code == 0, err
    assert blocks(text)["proxy:synth:pascal_mt"] == out
    assert main(["--readme", str(readme), "--check"]) == 0

    png.unlink()  # a lost figure is stale
    assert stale_items(text, tmp_path) == ["figure docs/figures/pareto_synth.png"]
    assert main(["--readme", str(readme)]) == 0 and png.is_file()
    write_record(tmp_path / "results" / "synth", record("lora", ["semseg", "depth"], [52.0, 0.4], seed=2,
                                                         params={"summary": {"total_trainable": 300_000}}))
    assert "figure docs/figures/pareto_synth.png" in stale_items(readme.read_text(), tmp_path)  # a third seed
