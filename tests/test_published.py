"""The published tables (tasks/reference/<dataset>.yaml): validation, Δm recomputed and flagged, copies
compared, and the `mtbench compare --published` views."""

from __future__ import annotations

import csv
import io
from importlib import resources

import pytest
import yaml

from helpers import one_error_line, run_cli
from mtpeft_bench.report.published import (FLAG_MARK, FLAG_TOLERANCE, check_row, check_table, load_table,
                                           parse_table, shown_rows, single_task_values)


def delta_by_hand(metrics, baseline, higher):
    """Δm (%) written out: the mean over tasks of ±(M − B)/B × 100 (docs/protocol.md 3.1)."""
    terms = [(1 if higher[t] else -1) * (metrics[t] - baseline[t]) / baseline[t] * 100 for t in baseline]
    return sum(terms) / len(terms)


def tiny_table(printed, **row_extra):
    """A two-task table: a single-task row (50 mIoU, 0.5 rmse) and one method row printing ``printed``."""
    return {
        "dataset": "toy",
        "columns": {"semseg": {"metric": "mIoU", "higher_is_better": True},
                    "depth": {"metric": "rmse", "higher_is_better": False}},
        "confidence": {"note": "a note"},
        "papers": {"a": {"label": "Paper A"}, "b": {"label": "Paper B"}},
        "rows": [
            {"paper": "a", "method": "ST", "kind": "single_task", "backbone": "Swin-T", "metrics":
             {"semseg": 50.0, "depth": 0.5}, "delta_m_printed": 0, "source": "s", "confidence": "note"},
            # Δm = ½ [100 (52 − 50)/50 − 100 (0.49 − 0.5)/0.5] = ½ [4 + 2] = +3.00
            {"paper": "a", "method": "M", "kind": "main", "backbone": "Swin-T", "metrics":
             {"semseg": 52.0, "depth": 0.49}, "delta_m_printed": printed, "params_m_printed": 2.0, "source": "s",
             "confidence": "note", **row_extra},
        ],
    }


def test_the_full_fine_tuning_row_is_flagged_from_its_own_metrics():
    table = load_table("pascal_mt")
    row = table.row("mtlora", "MTL full fine-tuning")
    base = table.row("mtlora", "Single-task (4 models)")
    higher = {t: c["higher_is_better"] for t, c in table.columns.items()}
    # ¼ [0.5208 − 2.7289 + 4.5870 + 7.4012] = +2.4450 from 67.56 / 60.24 / 65.21 / 16.64
    expected = delta_by_hand(row.metrics, base.metrics, higher)
    assert expected == pytest.approx(2.445, abs=1e-3)
    assert row.delta_m_printed == 2.23
    check = check_row(table, row)
    assert check.delta_m == pytest.approx(expected, abs=1e-9)
    assert check.flagged and check.problems[0].startswith(FLAG_MARK)
    assert "+2.23" in check.problems[0] and "+2.45" in check.problems[0]


def test_every_row_is_recomputed_and_flagged_by_the_formula():
    for dataset in ("pascal_mt", "nyud"):
        table = load_table(dataset)
        higher = {t: c["higher_is_better"] for t, c in table.columns.items()}
        for check in check_table(table):
            row = check.row
            base = table.baseline_row(row)
            computable = (base is not None and base.backbone == row.backbone
                          and all(t in row.metrics for t in base.metrics))
            if not computable:
                assert check.delta_m is None and check.why_no_delta and not check.flagged, row.key
                continue
            expected = delta_by_hand(row.metrics, base.metrics, higher)
            assert check.delta_m == pytest.approx(expected, abs=1e-9), row.key
            printed = row.delta_m_printed
            assert check.flagged == (printed is not None and abs(printed - expected) > FLAG_TOLERANCE), row.key


def test_flag_threshold_and_rows_without_a_printed_value():
    assert not check_row(parse_table(tiny_table(3.04)), parse_table(tiny_table(3.04)).rows[1]).flagged
    table = parse_table(tiny_table(3.06))
    assert check_row(table, table.rows[1]).flagged
    table = parse_table(tiny_table(None))
    check = check_row(table, table.rows[1])
    assert check.delta_m == pytest.approx(3.0) and not check.flagged


def test_a_copy_is_compared_with_its_original():
    data = tiny_table(3.0)
    copy = dict(data["rows"][1], paper="b", params_m_printed=1.5, copied_from="a")
    data["rows"] += [dict(data["rows"][0], paper="b", copied_from="a"), copy]
    table = parse_table(data)
    problems = check_row(table, table.row("b", "M")).problems
    assert problems == ("Paper B prints 1.50M trainable parameters where Paper A prints 2.00M",)
    assert [r.key for r in shown_rows(table)] == [("a", "ST"), ("a", "M")]  # copies fold into their original
    # the real table: DiTASK prints MTLoRA r=64 with 6.40M, MTLoRA 8.34M
    pascal = load_table("pascal_mt")
    assert any("6.40M" in p and "8.34M" in p for p in check_row(pascal, pascal.row("ditask", "MTLoRA r=64")).problems)


@pytest.mark.parametrize("change, message", [
    ({"paper": "zz"}, "paper 'zz' is not a key of `papers`"),
    ({"kind": "best"}, "kind 'best' is not one of"),
    ({"confidence": "sure"}, "confidence 'sure'"),
    ({"metrics": {"edge": 1.0}}, "metrics for edge"),
    ({"method": "ST"}, "two rows named 'ST'"),
])
def test_a_malformed_file_names_the_row(change, message):
    data = tiny_table(3.0)
    data["rows"][1].update(change)
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        parse_table(data)


def test_the_files_are_complete_and_the_run_baselines_come_from_a_row():
    for dataset in ("pascal_mt", "nyud"):
        table = load_table(dataset)
        for row in table.rows:
            assert row.source and row.confidence in table.confidence, row.key
            assert row.paper in table.papers and (row.copied_from is None or row.copied_from in table.papers)
            assert row.metrics or row.delta_m_printed is not None, row.key  # every row carries a number
    st = load_table("pascal_mt").row("mtlora", "Single-task (4 models)")
    assert single_task_values("pascal_mt") == st.metrics
    assert single_task_values("nyud") is None  # no published NYUD baseline applies to mtbench's recipe
    raw = yaml.safe_load(resources.files("mtpeft_bench.tasks").joinpath("reference", "pascal_mt.yaml").read_text())
    assert "values" not in raw["single_task"]  # one copy of the numbers: the row


def test_compare_published_marks_and_explains_the_flag(capsys, tmp_path):
    code, out, err = run_cli(["compare", "--results", str(tmp_path / "none"), "--published", "pascal_mt"], capsys)
    assert code == 0, err
    line = next(x for x in out.splitlines() if x.startswith("| MTL full fine-tuning"))
    assert f"+2.45 (paper +2.23) {FLAG_MARK}" in line
    assert any(x.startswith(f"- MTL full fine-tuning: {FLAG_MARK} printed Δm +2.23, recomputed +2.45")
               for x in out.splitlines())
    mtlora64 = next(x for x in out.splitlines() if x.startswith("| MTLoRA r=64 (published"))
    assert FLAG_MARK not in mtlora64  # +2.55 printed, +2.54 recomputed: within 0.05


def test_only_published_prints_every_row_with_its_checks(capsys):
    code, out, err = run_cli(["compare", "--published", "pascal_mt", "--only-published", "--format", "csv"], capsys)
    assert code == 0, err
    rows = list(csv.DictReader(io.StringIO(out)))
    table = load_table("pascal_mt")
    assert len(rows) == len(table.rows)
    flagged = {(r["paper"], r["method"]) for r in rows if r["check"] == FLAG_MARK}
    assert ("MTLoRA, CVPR 2024", "MTL full fine-tuning") in flagged
    assert ("TADFormer, CVPR 2025", "MTL full fine-tuning") in flagged  # the copies carry the error along
    code, md, _ = run_cli(["compare", "--published", "nyud", "--only-published"], capsys)
    assert code == 0 and md.startswith("## nyud: published rows") and "FAAR" in md


def test_reference_is_a_deprecated_alias(capsys, tmp_path):
    code, old, err = run_cli(["compare", "--results", str(tmp_path), "--dataset", "pascal_mt", "--reference"], capsys)
    assert code == 0 and "--reference is deprecated; use --published DATASET (here: --published pascal_mt)" in err
    _, new, _ = run_cli(["compare", "--results", str(tmp_path), "--dataset", "pascal_mt", "--published", "pascal_mt"],
                        capsys)
    assert old == new


@pytest.mark.parametrize("args, message", [
    (["--published", "pascal"], "unknown published table 'pascal'; did you mean 'pascal_mt'?"),
    (["--only-published"], "--only-published needs --published DATASET"),
])
def test_bad_published_options(capsys, tmp_path, args, message):
    code, _, err = run_cli(["compare", "--results", str(tmp_path), *args], capsys)
    assert code == 2 and one_error_line(err).startswith(f"mtbench: error: {message}")


def test_the_published_views_do_not_import_torch(tmp_path):
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent(f"""
        import sys
        from mtpeft_bench.cli import main
        for args in (["compare", "--results", {str(tmp_path)!r}, "--published", "pascal_mt"],
                     ["compare", "--published", "nyud", "--only-published"]):
            try:
                main(args)
            except SystemExit as exc:
                assert exc.code == 0, exc.code
        assert "torch" not in sys.modules
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
