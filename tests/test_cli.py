"""The command line as a user drives it: one-line errors with exit status 2, params, an end-to-end
smoke run followed by compare, and data show."""

from __future__ import annotations

import json

import pytest

from helpers import run_cli



TINY = ["--set", "data.num_train=24", "--set", "data.num_val=6", "--set", "batch_size=8", "--epochs", "1",
        "--no-progress"]


@pytest.mark.parametrize("args, message", [
    (["run", "--method", "ditsk"], "unknown method 'ditsk'"),
    (["run", "--method", "ful"], "did you mean 'full'?"),
    (["run", "--method", "full", "--dataset", "nyu"], "did you mean 'nyud'?"),
    (["run", "--method", "full", "--preset", "smok"], "unknown preset 'smok'"),
    (["run", "--method", "full", "--preset", "smoke", "--set", "epochs"], "--set expects key=value"),
    (["run", "--method", "full", "--preset", "smoke", "--set", "epoch=2"], "unknown setting 'epoch'"),
    (["run", "--method", "full", "--preset", "smoke", "--set", "epochs=-1"], "epochs must be positive"),
    (["run", "--method", "full", "--preset", "smoke", "--set", "method.rank=4"], "unknown full method option"),
    (["run", "--method", "full", "--preset", "smoke", "--set", "data.num_train=0"], "num_train"),
    (["run", "--method", "full", "--preset", "smoke", "--tasks", "depth,heat"], "has no task 'heat'"),
    (["run", "--method", "full", "--dataset", "nyud", "--preset", "smoke"], "NYUD_MT"),
    (["run", "--method", "full", "--dataset", "nyud", "--preset", "smoke", "--data-root", "/nonexistent"],
     "/nonexistent"),
    (["run", "--method", "full", "--dataset", "pascal_mt", "--preset", "smoke"], "pascal_mt"),
    (["run", "--method", "full", "--preset", "smoke", "--weights", "/no/such.pth"], "no file at"),
    (["run", "--method", "full", "--preset", "smoke", "--bogus"], "No such option '--bogus'"),
    (["run"], "Missing option '--method'"),
    (["compare", "--results", "/nonexistent/results"], "no results folder"),
    (["params", "--method", "full", "--dataset", "synth", "--preset", "smoke", "--tasks", "x"], "no task 'x'"),
    (["data", "show", "synth", "--output", "x.png", "--split", "test"], "no split 'test'"),
])
def test_bad_input_is_one_line_and_exit_2(args, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(args, capsys)
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert message in lines[0]
    assert "Traceback" not in err


def test_unwritable_output_is_reported_before_training(capsys, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    code, _, err = run_cli(["run", "--method", "full", "--preset", "smoke", "--out", str(blocker / "sub"), *TINY],
                           capsys)
    assert code == 2 and "cannot write results" in err


def test_params_json_swin_t_pascal(capsys):
    code, out, _ = run_cli(["params", "--method", "full", "--dataset", "pascal_mt", "--format", "json"], capsys)
    assert code == 0
    info = json.loads(out)
    assert info["tasks"] == ["semseg", "human_parts", "sal", "normals"]
    assert info["image_size"] == [448, 448]
    assert info["summary"]["decoder"] == 1_946_624
    assert info["summary"]["encoder_trainable"] == 27_517_818
    assert info["summary"]["total_trainable"] == 29_464_442


def test_params_table(capsys):
    code, out, _ = run_cli(["params", "--method", "decoder_only", "--dataset", "synth", "--preset", "smoke"], capsys)
    assert code == 0
    assert "decoder" in out and "encoder_trainable" in out


def test_ls(capsys):
    code, out, _ = run_cli(["ls"], capsys)
    assert code == 0
    for name in ("full", "decoder_only", "synth", "nyud", "pascal_mt", "smoke", "paper"):
        assert name in out


def test_smoke_run_then_compare_with_suite_baselines(capsys, tmp_path):
    out_dir = tmp_path / "results"
    base = ["run", "--preset", "smoke", "--out", str(out_dir), *TINY]
    for args in (["--method", "full", "--tasks", "semseg,depth"], ["--method", "full", "--tasks", "semseg"],
                 ["--method", "full", "--tasks", "depth"], ["--method", "decoder_only", "--tasks", "semseg,depth"]):
        code, out, err = run_cli([*base, *args], capsys)
        assert code == 0, err
        assert "semseg" in out or "depth" in out
        assert "result:" in out
    files = sorted(out_dir.rglob("*.json"))
    assert len(files) == 4
    record = json.loads(files[0].read_text())
    for key in ("schema_version", "config", "metrics", "delta_m", "params", "efficiency", "weights",
                "environment", "history", "task_specs", "recipe_key"):
        assert key in record
    # the smoke preset runs on the shipped pretrained micro Swin (mtpeft_bench/weights)
    from mtpeft_bench.model.builtin_weights import card

    assert record["weights"]["source"] == "builtin"
    assert record["weights"]["sha256"] == card()["models"]["swin_micro"]["sha256"]
    assert record["efficiency"]["train_images_per_s"] > 0
    assert record["params"]["optimizer"] == record["params"]["summary"]["total_trainable"]

    # The last multi-task run found the single-task runs as its baselines.
    last = json.loads(next(p for p in files if "decoder_only" in str(p)).read_text())
    assert last["delta_m"]["baseline"]["source"] == "suite"
    assert last["delta_m"]["value"] is not None

    code, out, err = run_cli(["compare", "--results", str(out_dir)], capsys)
    assert code == 0, err
    assert "## synth" in out
    for method in ("full", "decoder_only"):
        assert f"| {method}" in out
    assert "Δm % ↑" in out and "semseg mIoU ↑" in out
    code, out, _ = run_cli(["compare", "--results", str(out_dir), "--format", "csv"], capsys)
    assert code == 0 and out.splitlines()[0].startswith("method,variant,tasks")
    code, out, _ = run_cli(["compare", "--results", str(out_dir), "--format", "latex"], capsys)
    assert code == 0 and "\\toprule" in out


def test_example_plugin_runs_end_to_end(capsys, tmp_path, example_plugin):
    code, out, err = run_cli(["run", "--method", "task_proj", "--preset", "smoke", "--out", str(tmp_path), *TINY,
                              "--tasks", "semseg,sal"], capsys)
    assert code == 0, err
    record = json.loads(next(tmp_path.rglob("*.json")).read_text())
    assert record["method_info"]["task_specific_streams"] is True
    assert record["params"]["summary"]["method"] > 0


def test_data_show_writes_png(capsys, tmp_path):
    target = tmp_path / "grid.png"
    code, out, err = run_cli(["data", "show", "synth", "--output", str(target), "--n", "2", "--set", "data.num_train=4",
                              "--set", "data.num_val=2"], capsys)
    assert code == 0, err
    assert target.stat().st_size > 1000 and target.read_bytes()[:4] == b"\x89PNG"
