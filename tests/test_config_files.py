"""Run and sweep files: the order settings resolve in, unknown keys, the example files, and the
configuration that --print-config prints and --dry-run checks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from helpers import REPO, one_error_line, run_cli
from mtpeft_bench.config import PRESETS, RunConfig
from mtpeft_bench.running.config_file import load_run_file, load_sweep_file
from mtpeft_bench.running.setup import resolve_config
from mtpeft_bench.results import stored_path
from mtpeft_bench.running.record import PATH_SETTINGS

EXAMPLES = REPO / "examples" / "configs"

TINY = ["--tasks", "semseg,depth", "--set", "data.num_train=8", "--set", "data.num_val=4", "--batch-size", "4",
        "--epochs", "1", "--no-progress", "--set", "measure_repeats=0"]


def write(path: Path, data) -> Path:
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return path


def test_resolution_order_preset_file_options_set(tmp_path):
    smoke = PRESETS["smoke"]
    file = write(tmp_path / "run.yaml", {"method": "lora", "preset": "smoke", "epochs": 7, "batch_size": 8,
                                         "base_lr": 0.5, "method_options": {"r": 2}, "loss_weights.depth": 3})
    cfg = resolve_config(None, {}, {}, config_file=file)
    assert (cfg.method, cfg.preset, cfg.epochs, cfg.batch_size, cfg.base_lr) == ("lora", "smoke", 7, 8, 0.5)
    assert cfg.backbone == smoke["backbone"]  # the file's preset applies under it
    assert cfg.method_options == {"r": 2} and cfg.loss_weights == {"depth": 3.0}
    # command-line options over the file, --set over both
    cfg = resolve_config(None, {"epochs": 5, "batch_size": None}, {"base_lr": 0.25}, config_file=file)
    assert (cfg.epochs, cfg.batch_size, cfg.base_lr) == (5, 8, 0.25)
    cfg = resolve_config(None, {"epochs": 5}, {"epochs": 4}, config_file=file)
    assert cfg.epochs == 4
    # --preset over the file's preset: the file's own values still apply on top of it
    cfg = resolve_config("cpu", {}, {}, config_file=file)
    assert cfg.preset == "cpu" and cfg.backbone == PRESETS["cpu"]["backbone"] and cfg.epochs == 7


def test_the_cli_resolves_a_file_as_the_api_does(tmp_path, capsys):
    file = write(tmp_path / "run.yaml", {"method": "bitfit", "dataset": "synth", "preset": "smoke", "epochs": 7,
                                         "batch-size": 8})
    code, out, err = run_cli(["run", "--config", str(file), "--epochs", "5", "--set", "seed=3", "--print-config"],
                             capsys)
    assert code == 0, err
    printed = yaml.safe_load(out)["config"]
    api = resolve_config(None, {"epochs": 5}, {"seed": 3}, config_file=file)
    assert printed["epochs"] == 5 and printed["batch_size"] == 8 and printed["seed"] == 3
    assert {k: printed[k] for k in ("method", "preset", "backbone", "base_lr")} == \
        {k: getattr(api, k) for k in ("method", "preset", "backbone", "base_lr")}


@pytest.mark.parametrize("content, expected", [
    ({"method": "full", "epochz": 3}, "unknown setting 'epochz'; did you mean 'epochs'?"),
    ({"method": "full", "method_options": 3}, "method_options must be a mapping"),
    ("- just\n- a list\n", "must hold a mapping of settings"),
    ("method: [unclosed\n", "is not valid YAML at line"),
])
def test_bad_run_files_get_one_line_naming_the_file(tmp_path, capsys, content, expected):
    file = write(tmp_path / "bad.yaml", content)
    code, _, err = run_cli(["run", "--config", str(file), "--print-config"], capsys)
    line = one_error_line(err)
    assert code == 2 and expected in line and str(file) in line


def test_a_missing_file_and_a_missing_method(tmp_path, capsys):
    code, _, err = run_cli(["run", "--config", str(tmp_path / "nope.yaml")], capsys)
    assert code == 2 and "does not exist" in one_error_line(err)
    code, _, err = run_cli(["run", "--config", str(write(tmp_path / "r.yaml", {"epochs": 2})), "--print-config"],
                           capsys)
    assert code == 2 and "--method" in one_error_line(err)


def test_print_config_is_a_run_file_with_the_same_hash(tmp_path, capsys):
    code, out, err = run_cli(["run", "--method", "lora", "--set", "method.r=2", "--print-config"], capsys)
    assert code == 0, err
    first = yaml.safe_load(out)
    assert set(first) == {"config", "method_config", "data_config", "config_hash"}
    assert first["config"]["image_size"] == [96, 128]  # resolved, as the record stores it
    assert first["method_config"]["r"] == 2
    file = write(tmp_path / "printed.yaml", out)
    code, again, err = run_cli(["run", "--config", str(file), "--print-config"], capsys)
    assert code == 0, err
    assert yaml.safe_load(again) == first


def test_print_config_is_what_the_result_records_and_the_record_reruns(tmp_path, capsys, one_thread):
    out_dir = tmp_path / "results"
    base = ["run", "--method", "full", "--preset", "smoke", *TINY, "--out", str(out_dir)]
    code, printed, err = run_cli([*base, "--print-config"], capsys)
    assert code == 0, err
    assert not out_dir.exists()
    code, _, err = run_cli(base, capsys)
    assert code == 0, err
    [record_path] = out_dir.rglob("*.json")
    record = json.loads(record_path.read_text())
    parts = yaml.safe_load(printed)
    for key in ("method_config", "data_config", "config_hash"):
        assert parts[key] == record[key], key
    # the record stores its path settings relative to its results folder; --print-config shows them as given
    recorded = {k: v for k, v in record["config"].items() if k not in PATH_SETTINGS}
    assert {k: v for k, v in parts["config"].items() if k not in PATH_SETTINGS} == recorded
    loaded = {**record, "_path": str(record_path)}
    for key in PATH_SETTINGS:
        shown = parts["config"][key]
        assert (stored_path(loaded, record["config"][key]) == Path(shown).resolve()) if shown else \
            not record["config"][key], key
    # the record is a run file: with --resume it is found completed (same configuration hash)
    code, out, err = run_cli(["run", "--config", str(record_path), "--resume"], capsys)
    assert code == 0 and "already completed" in err
    assert len(list(out_dir.rglob("*.json"))) == 1


def test_example_run_files_resolve():
    synth = resolve_config(None, {}, {}, config_file=EXAMPLES / "leaderboard_synth.yaml")
    assert (synth.dataset, synth.preset, synth.method) == ("synth", "bench", "full")
    assert synth.backbone == PRESETS["bench"]["backbone"] and synth.epochs == PRESETS["bench"]["epochs"]
    # the leaderboard protocol's recipe: its preset and its fixed settings
    from mtpeft_bench.running.protocol import load_protocol

    protocol = load_protocol("synth")
    assert protocol.preset == synth.preset
    assert {f"data.{k}": v for k, v in synth.data_options.items()} == dict(protocol.settings)
    paper = resolve_config(None, {}, {}, config_file=EXAMPLES / "paper_pascal_mt.yaml")
    assert (paper.dataset, paper.preset, paper.method) == ("pascal_mt", "paper", "ditask")
    # the written-out recipe is the preset's: the same configuration as the preset alone
    assert paper.to_dict() == resolve_config("paper", {"dataset": "pascal_mt", "method": "ditask"}, {}).to_dict()
    assert (paper.epochs, paper.batch_size, paper.base_lr, paper.drop_path) == (300, 32, 5e-4, 0.2)
    assert paper.lr_scale() == 32 / 512


def test_example_sweep_file_expands_to_its_grid():
    from mtpeft_bench.running.sweep import expand

    plan = load_sweep_file(EXAMPLES / "leaderboard_sweep.yaml")
    methods = plan.method.split(",")
    points = expand(plan.dataset.split(","), methods, [0, 1, 2], None, {}, {}, config_file=plan.run)
    assert len(points) == len(methods) * 3 and len(methods) >= 7
    assert {p.cfg.preset for p in points} == {"bench"} and {p.cfg.tag for p in points} == {"shared-lr"}
    assert {p.cfg.data_options["num_val"] for p in points} == {1000}
    assert len({p.config_hash for p in points}) == len(points)


def test_dry_run_of_the_synth_example_builds_the_model_and_writes_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(["run", "--config", str(EXAMPLES / "leaderboard_synth.yaml"), "--set", "accum_steps=4",
                              "--dry-run"], capsys)
    assert code == 0, err
    code, params_json, err = run_cli(["params", "--method", "full", "--preset", "bench", "--format", "json"], capsys)
    assert code == 0, err
    total = json.loads(params_json)["summary"]["total"]
    assert f"{total:,}" in out  # the parameter counts of the model mtbench params builds
    assert "4 micro-batches of 4" in out and "nothing was trained or written" in out
    assert list(tmp_path.iterdir()) == []  # no results/ or runs/ folder


def test_dry_run_refuses_what_a_run_refuses(capsys):
    code, _, err = run_cli(["run", "--config", str(EXAMPLES / "leaderboard_synth.yaml"), "--method", "ditask",
                            "--set", "grad_checkpoint=true", "--dry-run"], capsys)
    assert code == 2 and "grad_checkpoint" in one_error_line(err)


def test_sweep_file_grid_settings_and_command_line_overrides(tmp_path, capsys):
    file = write(tmp_path / "sweep.yaml", {"grid": {"method": ["lora", "adapter"], "seeds": "0-1"},
                                           "settings": {"preset": "smoke", "epochs": 2, "data.num_val": 3}})
    code, out, err = run_cli(["sweep", "--config", str(file), "--out", str(tmp_path / "r"), "--print-commands"],
                             capsys)
    assert code == 0, err
    commands = out.strip().splitlines()
    assert len(commands) == 4
    assert all("--preset smoke" in c and "--set epochs=2" in c and "--set data.num_val=3" in c for c in commands)
    # the command line replaces the grid's lists and overrides the settings
    code, out, err = run_cli(["sweep", "--config", str(file), "--method", "lora", "--seeds", "5", "--epochs", "4",
                              "--out", str(tmp_path / "r"), "--print-commands"], capsys)
    assert code == 0, err
    [command] = out.strip().splitlines()
    assert "--seed 5" in command and "--epochs 4" in command and "epochs=2" not in command


def test_sweep_file_printed_commands_run_what_the_sweep_would(tmp_path, capsys):
    """A printed command, parsed back, resolves to the grid point's own configuration hash."""
    import shlex

    from mtpeft_bench.running.sweep import classify, expand  # noqa: F401 (expand: the sweep's own resolution)

    file = write(tmp_path / "sweep.yaml", {"grid": {"method": "lora", "dataset": "synth"},
                                           "settings": {"preset": "smoke", "epochs": 2, "loss_weights": {"depth": 2}}})
    code, out, err = run_cli(["sweep", "--config", str(file), "--out", str(tmp_path / "r"), "--print-commands"],
                             capsys)
    assert code == 0, err
    argv = shlex.split(out.strip())
    run_argv = argv[argv.index("run"):]
    run_argv = [a for a in run_argv if a != "--resume"] + ["--print-config"]
    code, printed, err = run_cli(run_argv, capsys)
    assert code == 0, err
    plan = load_sweep_file(file)
    [point] = expand(["synth"], ["lora"], [0], None, {"out": str(tmp_path / "r"), "progress": False}, {},
                     config_file=plan.run)
    assert yaml.safe_load(printed)["config_hash"] == point.config_hash


@pytest.mark.parametrize("content, expected", [
    ({"grid": {"methods": ["full"]}}, "did you mean 'method'?"),
    ({"grid": {"lr": [1, 2]}}, "the grid cannot span 'lr'"),
    ({"grdi": {}}, "did you mean 'grid'?"),
    ({"grid": {"method": "full"}, "settings": {"epohcs": 2}}, "did you mean 'epochs'?"),
    ({"grid": {"method": "full"}, "settings": {"seed": 2}}, "seed belongs under grid:"),
])
def test_bad_sweep_files_get_one_line(tmp_path, capsys, content, expected):
    file = write(tmp_path / "sweep.yaml", content)
    code, _, err = run_cli(["sweep", "--config", str(file), "--out", str(tmp_path / "r"), "--print-commands"],
                           capsys)
    line = one_error_line(err)
    assert code == 2 and expected in line, line


def test_a_run_file_may_nest_or_dot_plugin_options():
    nested = load_run_file(EXAMPLES / "leaderboard_synth.yaml")
    assert nested.preset == "bench" and "preset" not in nested.settings
    assert RunConfig().dataset == "synth"
