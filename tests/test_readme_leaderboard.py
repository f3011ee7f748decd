"""README.md's leaderboard block equals what `mtbench compare` prints for the committed results/synth.

While results/synth holds no completed run, compare has no table (it exits with an error) and the
block must hold the fixed sentence of `mtpeft_bench.report.readme.empty_text`; once runs are
committed, the block must be compare's Markdown output, byte for byte. Either way a README that
disagrees with the committed records fails here.
"""

from __future__ import annotations

from pathlib import Path

from helpers import run_cli
from helpers.records import record
from mtpeft_bench.report.readme import START, blocks, empty_text, leaderboard_markdown, main, regenerate
from mtpeft_bench.results import read_records, select_split, write_record

REPO = Path(__file__).resolve().parents[1]
HOW = "regenerate it with `python -m mtpeft_bench.report.readme` (run in the repository root) and commit README.md"


def test_readme_block_matches_compare_on_the_committed_results(capsys):
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert START.format(name="synth") in readme, "README.md lost its leaderboard:synth markers"
    block = blocks(readme)["synth"]
    results = REPO / "results" / "synth"
    completed = [r for r in (read_records(results) if results.is_dir() else []) if r.get("status") == "completed"]
    if not select_split(completed, "val")[0]:
        assert block == empty_text("results/synth"), f"results/synth has no completed run, but README.md shows a table; {HOW}"
        code, _, err = run_cli(["compare", "--results", str(results)], capsys)
        assert code == 2 and "no" in err  # compare has nothing to print either
        return
    code, out, err = run_cli(["compare", "--results", str(results), "--format", "md"], capsys)
    assert code == 0, err
    assert block == out, f"README.md's leaderboard:synth block differs from `mtbench compare --results results/synth`; {HOW}"


def test_regenerate_writes_compare_output_and_check_notices_a_stale_block(tmp_path, capsys):
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- leaderboard:synth:start -->\nold table\n<!-- leaderboard:synth:end -->\nend\n")
    assert main(["--readme", str(readme), "--check"]) == 1  # "old table" is not what an empty folder shows
    assert main(["--readme", str(readme)]) == 0
    assert blocks(readme.read_text())["synth"] == empty_text("results/synth")
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
    assert blocks(text)["synth"] == out
    assert regenerate(text, tmp_path) == text  # stable
    assert leaderboard_markdown(tmp_path / "nothing", "results/x") == empty_text("results/x")
