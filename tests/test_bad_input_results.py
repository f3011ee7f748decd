"""Bad input to the results readers and failures of a run: every damaged record is named in one
line (an error with --strict), failures leave the file tree as it was, and out-of-memory on a CPU
and a non-finite loss get advice that fits the run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from helpers import error_lines, run_cli
from mtpeft_bench.errors import UserError
from mtpeft_bench.results import load_results


FIXTURES = Path(__file__).parent / "fixtures" / "results"
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


@pytest.mark.parametrize("case", sorted(BAD_RECORDS))
def test_compare_names_each_invalid_record_in_one_warning_line(case, tmp_path, capsys):
    make, reason = BAD_RECORDS[case]
    root, bad = results_with(tmp_path, "bad.json", make())
    code, out, err = run_cli(["compare", "--results", str(root)], capsys)
    assert code == 0, err
    lines = error_lines(err)
    assert len(lines) == 1 and lines[0].startswith("mtbench: warning: skipped")
    assert str(bad) in lines[0] and reason in lines[0]
    assert "| full" in out  # the valid records are still compared


@pytest.mark.parametrize("case", sorted(BAD_RECORDS))
def test_compare_strict_makes_an_invalid_record_an_error(case, tmp_path, capsys):
    make, reason = BAD_RECORDS[case]
    root, bad = results_with(tmp_path, "bad.json", make())
    code, out, err = run_cli(["compare", "--results", str(root), "--strict"], capsys)
    assert code == 2 and out == ""
    lines = error_lines(err)
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
    assert len(frame) == 8  # the golden set's eight records; the two bad files are skipped
    warnings = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert len(warnings) == 2 and any(str(bad) in w for w in warnings) and any("other.json" in w for w in warnings)
    with pytest.raises(UserError, match="and 1 more invalid file"):
        load_results(root, strict=True)


# -- failures leave the file tree as it was ---------------------------------------------------------------------

def tree(root):
    """Every path under ``root`` with the bytes of each file: equal before and after a failure."""
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


def corrupt_nyud(parent, split):
    """A miniature NYUD_MT folder whose ``split`` images are truncated JPEGs."""
    from mtpeft_bench.tasks.miniature import write_nyud

    root = write_nyud(parent / "NYUD_MT")
    for sid in (root / "gt_sets" / f"{split}.txt").read_text().split():
        image = root / "images" / f"{sid}.jpg"
        image.write_bytes(image.read_bytes()[:100])
    return root


def test_a_wrong_resume_id_leaves_nothing_behind(tmp_path, capsys):
    before = tree(tmp_path)
    code, _, err = run_cli([*TINY, "--out", str(tmp_path / "out" / "results"), "--resume", "nope"], capsys)
    assert code == 2 and "no run 'nope'" in err and len(error_lines(err)) == 1
    assert tree(tmp_path) == before


def test_cuda_without_a_gpu_leaves_nothing_behind(tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    before = tree(tmp_path)
    code, _, err = run_cli([*TINY, "--out", str(tmp_path / "out" / "results"), "--device", "cuda"], capsys)
    assert code == 2 and "no CUDA GPU" in err and len(error_lines(err)) == 1
    assert tree(tmp_path) == before


def test_an_unwritable_runs_folder_leaves_no_results_folder_behind(tmp_path, capsys):
    (tmp_path / "file").write_text("")
    before = tree(tmp_path)
    code, _, err = run_cli([*TINY, "--out", str(tmp_path / "out" / "results"),
                            "--set", f"runs_dir={tmp_path / 'file' / 'runs'}"], capsys)
    assert code == 2 and "cannot write checkpoints" in err and "is not a folder" in err
    assert tree(tmp_path) == before


def test_missing_data_leaves_nothing_behind(tmp_path, capsys):
    before = tree(tmp_path)
    code, _, err = run_cli([*TINY, "--dataset", "nyud", "--data-root", str(tmp_path / "no-data"), "--weights", "none",
                            "--out", str(tmp_path / "out" / "results")], capsys)
    assert code == 2 and len(error_lines(err)) == 1
    assert tree(tmp_path) == before


NYUD = ["run", "--method", "full", "--dataset", "nyud", "--preset", "smoke", "--tasks", "depth", "--weights", "none",
        "--set", "batch_size=2", "--epochs", "1", "--no-progress"]


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.usefixtures("one_thread")
def test_a_corrupt_image_found_mid_run_leaves_nothing_behind(workers, tmp_path, capsys):
    data = corrupt_nyud(tmp_path, "train")
    before = tree(tmp_path)
    code, _, err = run_cli([*NYUD, "--data-root", str(data), "--out", str(tmp_path / "out" / "results"),
                            "--set", f"num_workers={workers}"], capsys)
    assert code == 2
    (line,) = [line for line in error_lines(err) if line.startswith("mtbench: error:")]
    assert "cannot be decoded" in line and str(data / "images") in line
    assert tree(tmp_path) == before


@pytest.mark.usefixtures("one_thread")
def test_a_corrupt_image_after_a_checkpoint_keeps_it_and_a_failed_resume_changes_nothing(tmp_path, capsys):
    from mtpeft_bench.tasks.miniature import write_nyud

    data = corrupt_nyud(tmp_path, "val")  # found by the final evaluation, after the checkpoint of epoch 1
    out = tmp_path / "out" / "results"
    code, _, err = run_cli([*NYUD, "--data-root", str(data), "--out", str(out)], capsys)
    assert code == 2
    (line,) = [line for line in error_lines(err) if line.startswith("mtbench: error:")]
    (folder,) = (tmp_path / "out" / "runs").iterdir()
    assert "cannot be decoded" in line and f"--resume {folder.name}" in line and "checkpoint is kept" in line
    assert json.loads((folder / "run.json").read_text())["status"] == "failed"
    assert not out.exists()
    before = tree(tmp_path)  # resuming before the image is fixed fails again and leaves the run as it was
    code, _, err = run_cli([*NYUD, "--data-root", str(data), "--out", str(out), "--resume", folder.name], capsys)
    assert code == 2 and "cannot be decoded" in err
    assert tree(tmp_path) == before
    write_nyud(tmp_path / "fixed")  # the same images, undamaged
    for image in (data / "images").iterdir():
        image.write_bytes((tmp_path / "fixed" / "images" / image.name).read_bytes())
    code, _, err = run_cli([*NYUD, "--data-root", str(data), "--out", str(out), "--resume", folder.name], capsys)
    assert code == 0, err
    assert len(list(out.rglob("*.json"))) == 1


# -- out of memory on a CPU, and a non-finite loss without AMP -----------------------------------------------------

CPU_OOM = {
    "torch allocator": lambda: RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't "
                                            "allocate memory: you tried to allocate 8589934592 bytes. Error code 12 "
                                            "(Cannot allocate memory)"),
    "windows allocator": lambda: RuntimeError("[enforce fail at ..\\c10\\core\\impl\\alloc_cpu.cpp:72] data. "
                                              "DefaultCPUAllocator: not enough memory: you tried to allocate 8 bytes."),
    "MemoryError": lambda: MemoryError(),
}


@pytest.mark.parametrize("case", sorted(CPU_OOM))
def test_cpu_out_of_memory_errors_are_recognised(case):
    import torch

    from mtpeft_bench.train.failures import out_of_memory_where

    assert out_of_memory_where(CPU_OOM[case]()) == "cpu"
    assert out_of_memory_where(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")) == "cuda"
    assert out_of_memory_where(RuntimeError("shapes cannot be multiplied")) is None


@pytest.mark.usefixtures("one_thread")
def test_cpu_out_of_memory_gets_one_line_of_advice(tmp_path, capsys, monkeypatch):
    from mtpeft_bench.train import Trainer

    def explode(self, images, targets):
        raise CPU_OOM["torch allocator"]()

    monkeypatch.setattr(Trainer, "train_step", explode)
    code, _, err = run_cli([*TINY, "--out", str(tmp_path / "results"), "--set", "num_workers=2"], capsys)
    assert code == 1 and "Traceback" not in err
    (line,) = [line for line in err.splitlines() if line.startswith("mtbench: error:")]
    assert "CPU ran out of memory (RAM) during training" in line
    assert "--batch-size 2" in line and "image_size=48,48" in line and "num_workers=1" in line
    assert "amp" not in line.lower() and "torchrun" not in line


@pytest.mark.usefixtures("one_thread")
def test_a_non_finite_loss_without_amp_does_not_advise_turning_amp_off(tmp_path, capsys, monkeypatch):
    import mtpeft_bench.train.trainer as engine

    original = engine.compute_losses

    def poisoned(outputs, targets, specs):
        total, per_task = original(outputs, targets, specs)
        return total * float("nan"), {t: v * float("nan") for t, v in per_task.items()}

    monkeypatch.setattr(engine, "compute_losses", poisoned)
    code, _, err = run_cli([*TINY, "--out", str(tmp_path / "results")], capsys)
    assert code == 1
    (line,) = [line for line in err.splitlines() if line.startswith("mtbench: error:")]
    assert "non-finite" in line and "base_lr" in line and "amp" not in line.lower()


def test_compare_output_that_cannot_be_written_is_one_line(tmp_path, capsys):
    (tmp_path / "file").write_text("")
    before = tree(tmp_path)
    target = tmp_path / "file" / "t.md"
    code, _, err = run_cli(["compare", "--results", str(FIXTURES / "synth"), "--output", str(target)], capsys)
    assert code == 2 and "cannot write the table to" in err and len(error_lines(err)) == 1
    assert tree(tmp_path) == before


@pytest.mark.parametrize("source", ["x.zip", "empty-folder", "bad.tgz"])
def test_a_failed_data_prepare_leaves_no_data_root_behind(source, tmp_path, capsys):
    (tmp_path / "x.zip").write_text("")
    (tmp_path / "empty-folder").mkdir()
    (tmp_path / "bad.tgz").write_text("junk")
    before = tree(tmp_path)
    code, _, err = run_cli(["data", "prepare", "nyud", "--from", str(tmp_path / source),
                            "--data-root", str(tmp_path / "new" / "data")], capsys)
    assert code == 2 and len(error_lines(err)) == 1
    assert tree(tmp_path) == before
