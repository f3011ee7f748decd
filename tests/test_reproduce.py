"""`mtbench reproduce` and portable records: a record stores no absolute path, a smoke-sized run rerun
from its record gives the same metrics to 1e-4, a changed metric makes reproduce fail, records with
the absolute paths of earlier versions still load and resume, and bad input gets one line."""

from __future__ import annotations

import json
import shutil

import pytest

from helpers import one_error_line, run_cli
from mtpeft_bench.results import read_records, stored_path

ARGS = ["--method", "full", "--dataset", "synth", "--preset", "smoke", "--tasks", "semseg,depth", "--seed", "3",
        "--set", "data.num_train=8", "--set", "data.num_val=4", "--batch-size", "4", "--epochs", "1",
        "--no-progress"]


@pytest.fixture(scope="module")
def original(tmp_path_factory):
    """One tiny completed run, written to an absolute --out with an absolute runs_dir: its record's path."""
    import torch

    from mtpeft_bench.cli import main

    root = tmp_path_factory.mktemp("original")
    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as patch:  # the autouse environment fixture is per test, this runs once
        patch.setenv("MTBENCH_CACHE", str(tmp_path_factory.mktemp("cache")))
        patch.delenv("MTBENCH_DATA", raising=False)
        patch.setenv("HF_HUB_OFFLINE", "1")
        torch.set_num_threads(1)
        try:
            with pytest.raises(SystemExit) as info:
                main(["run", *ARGS, "--out", str(root / "results"), "--set", f"runs_dir={root / 'elsewhere' / 'runs'}"])
        finally:
            torch.set_num_threads(threads)
    assert info.value.code == 0
    (path,) = (root / "results").rglob("*.json")
    return path


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Reruns use one thread, as the original did (the thread count may change float sums)."""


def strings(value):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield key
            yield from strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from strings(item)


def test_the_record_carries_no_absolute_path(original):
    record = json.loads(original.read_text())
    root = original.parents[3]  # the folder holding results/ and elsewhere/
    found = [s for s in strings(record) if s.startswith("/") or str(root) in s]
    assert found == []
    assert record["config"]["out"] == "."
    assert record["config"]["runs_dir"] == "../elsewhere/runs"
    assert record["execution"]["run_dir"] == f"../elsewhere/runs/{record['run_id']}"
    loaded = read_records(original.parents[2])[0]
    assert stored_path(loaded, record["execution"]["run_dir"]) == root / "elsewhere" / "runs" / record["run_id"]
    assert (root / "elsewhere" / "runs" / record["run_id"] / "run.json").is_file()  # the path points at the folder


def test_reproduce_gives_the_same_metrics(original, tmp_path, capsys):
    before = original.read_bytes()
    code, out, err = run_cli(["reproduce", str(original), "--out", str(tmp_path / "rerun")], capsys)
    assert code == 0, err
    record = json.loads(original.read_text())
    count = sum(len(values) for values in record["metrics"].values())
    assert f"reproduced: all {count} metrics agree within 0.0001" in out
    (rerun,) = (tmp_path / "rerun").rglob("*.json")
    again = json.loads(rerun.read_text())
    assert again["run_id"] != record["run_id"] and again["config_hash"] == record["config_hash"]
    for task, values in record["metrics"].items():
        for name, value in values.items():
            assert again["metrics"][task][name] == pytest.approx(value, abs=1e-4), (task, name)
    assert original.read_bytes() == before and len(list(original.parent.iterdir())) == 1  # the original untouched


def test_a_changed_metric_makes_reproduce_fail(original, tmp_path, capsys):
    record = json.loads(original.read_text())
    record["metrics"]["semseg"]["mIoU"] += 0.01
    changed = tmp_path / "results" / "synth" / "full" / original.name
    changed.parent.mkdir(parents=True)
    changed.write_text(json.dumps(record))
    code, out, err = run_cli(["reproduce", str(changed), "--out", str(tmp_path / "rerun")], capsys)
    assert code == 1
    assert "1 of" in err and "differ by more than 0.0001: semseg.mIoU" in err
    assert "DIFFERS" in out and out.count("DIFFERS") == 1


def test_records_with_absolute_paths_still_load_and_resume(original, tmp_path, capsys):
    """A record written before paths were made relative: compare reads it, --resume finds it done."""
    out_dir = tmp_path / "results"
    shutil.copytree(original.parents[2], out_dir)
    (path,) = out_dir.rglob("*.json")
    record = json.loads(path.read_text())
    record["config"].update(out=str(out_dir), runs_dir=str(tmp_path / "runs"))
    record["execution"]["run_dir"] = str(tmp_path / "runs" / record["run_id"])
    path.write_text(json.dumps(record))
    loaded = read_records(out_dir)[0]
    assert stored_path(loaded, loaded["execution"]["run_dir"]) == tmp_path / "runs" / record["run_id"]
    code, out, err = run_cli(["compare", "--results", str(out_dir)], capsys)
    assert code == 0 and "| full " in out, err
    code, out, err = run_cli(["run", *ARGS, "--out", str(out_dir), "--resume"], capsys)
    assert code == 0, err
    assert "already completed" in err and len(list(out_dir.rglob("*.json"))) == 1


def bad_copy(tmp_path, original, change):
    record = json.loads(original.read_text())
    change(record)
    path = tmp_path / "results" / "synth" / "full" / "bad.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(record))
    return path


@pytest.mark.parametrize("case, change, message", [
    ("other schema", lambda r: r.update(schema_version=7), "schema_version 7, but this mtbench reads version 1"),
    ("unknown setting", lambda r: r["config"].update(new_knob=3), "setting new_knob, which this mtbench does not know"),
    ("unknown dataset", lambda r: r.update(dataset="nowhere") or r["config"].update(dataset="nowhere"),
     "unknown dataset 'nowhere'"),
    ("missing data", lambda r: r["config"].update(dataset="nyud", tasks=["semseg"], data_root="../no-data",
                                                   data_options={}),
     "no-data"),
])
def test_bad_input_is_one_line(case, change, message, original, tmp_path, capsys):
    code, _, err = run_cli(["reproduce", str(bad_copy(tmp_path, original, change)), "--out", str(tmp_path / "o")],
                           capsys)
    assert code == 2, err
    assert message in one_error_line(err)
    assert not (tmp_path / "o").exists()


def test_not_a_record_and_the_records_own_folder(original, tmp_path, capsys):
    (tmp_path / "x.json").write_text("[1, 2]")
    code, _, err = run_cli(["reproduce", str(tmp_path / "x.json")], capsys)
    assert code == 2 and "not a result record" in one_error_line(err)
    code, _, err = run_cli(["reproduce", str(tmp_path / "missing.json")], capsys)
    assert code == 2 and "no file" in one_error_line(err)
    code, _, err = run_cli(["reproduce", str(original), "--out", str(original.parents[2])], capsys)
    assert code == 2 and "is the results folder of the record itself" in one_error_line(err)
