"""Bad input to the results readers and failures of a run: every damaged record is named in one
line (an error with --strict), failures leave the file tree as it was, and out-of-memory on a CPU
and a non-finite loss get advice that fits the run."""

from __future__ import annotations

import json
import shutil

import pytest

from helpers import run_cli
from mtpeft_bench.errors import UserError
from mtpeft_bench.results import load_results, read_records


FIXTURES = __import__("pathlib").Path(__file__).parent / "fixtures" / "results"
GOOD = "synth/full/20261120-100000-aaaa0000-s0-0001.json"

TINY = ["run", "--method", "full", "--preset", "smoke", "--tasks", "depth", "--set", "data.num_train=8",
        "--set", "data.num_val=2", "--set", "batch_size=4", "--epochs", "1", "--no-progress"]


def results_with(tmp_path, name, text):
    """A copy of the golden results with one more file ``name`` holding ``text``."""
    root = tmp_path / "results"
    shutil.copytree(FIXTURES, root)
    (root / "notes.json").unlink()  # the golden set's non-record; each test adds its own bad file
    (root / name).write_text(text)
    return root, root / name


def good_record():
    return json.loads((FIXTURES / GOOD).read_text())


BAD_RECORDS = {
    "truncated": (lambda: (FIXTURES / GOOD).read_text()[:200], "not valid JSON"),
    "wrong schema": (lambda: json.dumps({**good_record(), "schema_version": 99}), "schema_version 99"),
    "metrics a list": (lambda: json.dumps({**good_record(), "metrics": [1, 2]}), "'metrics' is list"),
    "metric a string": (lambda: json.dumps({**good_record(), "metrics": {"semseg": {"mIoU": "high"}}}),
                        "'metrics.semseg.mIoU' is not a number"),
    "tasks a string": (lambda: json.dumps({**good_record(), "tasks": "semseg"}), "'tasks'"),
    "not a record": (lambda: json.dumps({"comment": "hello"}), "not a result record"),
}


def one_line_without_traceback(err):
    assert "Traceback" not in err
    return [line for line in err.splitlines() if line.strip()]


@pytest.mark.parametrize("case", sorted(BAD_RECORDS))
def test_compare_names_each_invalid_record_in_one_warning_line(case, tmp_path, capsys):
    make, reason = BAD_RECORDS[case]
    root, bad = results_with(tmp_path, "bad.json", make())
    code, out, err = run_cli(["compare", "--results", str(root)], capsys)
    assert code == 0, err
    lines = one_line_without_traceback(err)
    assert len(lines) == 1 and lines[0].startswith("mtbench: warning: skipped")
    assert str(bad) in lines[0] and reason in lines[0]
    assert "| full" in out  # the valid records are still compared


@pytest.mark.parametrize("case", sorted(BAD_RECORDS))
def test_compare_strict_makes_an_invalid_record_an_error(case, tmp_path, capsys):
    make, reason = BAD_RECORDS[case]
    root, bad = results_with(tmp_path, "bad.json", make())
    code, out, err = run_cli(["compare", "--results", str(root), "--strict"], capsys)
    assert code == 2 and out == ""
    lines = one_line_without_traceback(err)
    assert len(lines) == 1 and lines[0].startswith("mtbench: error:") and str(bad) in lines[0] and reason in lines[0]


def test_plot_reads_records_the_same_way(tmp_path, capsys):
    root, bad = results_with(tmp_path, "bad.json", json.dumps({**good_record(), "metrics": [1]}))
    code, _, err = run_cli(["plot", "--results", str(root), "--out", str(tmp_path / "figs"), "--strict"], capsys)
    assert code == 2 and str(bad) in err and "'metrics' is list" in err
    assert not (tmp_path / "figs").exists()
    code, out, err = run_cli(["plot", "--results", str(root), "--out", str(tmp_path / "figs")], capsys)
    assert code == 0, err
    assert [line for line in err.splitlines() if "warning" in line] == [
        f"mtbench: warning: skipped {bad}: 'metrics' is list, not a mapping of task to {{metric: value}}"]


def test_load_results_warns_once_per_file_or_raises_when_strict(tmp_path, caplog):
    root, bad = results_with(tmp_path, "bad.json", '{"schema_version": 1, "run_id": "x"')
    (root / "other.json").write_text(json.dumps({**good_record(), "schema_version": 2}))
    with caplog.at_level("WARNING", logger="mtpeft_bench"):
        frame = load_results(root)
    assert len(frame) == len(read_records(FIXTURES, warn=lambda line: None))
    warnings = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert len(warnings) == 2 and any(str(bad) in w for w in warnings) and any("other.json" in w for w in warnings)
    with pytest.raises(UserError, match="and 1 more invalid file"):
        load_results(root, strict=True)
