"""Bad input to a run, answered in one line before any slow work (issue 16, items 1 and 2): the
order of the checks (names, values, paths, then weights and the hub, then data), an offline hub
found in about a second, and the cases the first-contact report found accepted silently or
answered badly. No case trains: each stops before the model or the data is built, or uses `params`."""

from __future__ import annotations

import json
import time

import pytest

from helpers import one_error_line, run_cli


SMOKE = ["--method", "full", "--preset", "smoke"]


@pytest.fixture
def empty_hub_cache(monkeypatch, tmp_path):
    """A hub cache without any weights in it (whatever this machine has cached)."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))


def test_missing_data_is_reported_before_the_weights(capsys, tmp_path, monkeypatch, empty_hub_cache):
    # the paper preset asks for timm's hub weights; without data, the data is what the user must hear about
    import socket

    from mtpeft_bench.registry import get_dataset, get_method

    def no_network(*args, **kwargs):
        raise AssertionError("the hub was asked before the data was checked")

    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.chdir(tmp_path)
    get_method("ditask"), get_dataset("nyud")  # import torch and the plugins first: the time below is mtbench's
    started = time.monotonic()
    code, _, err = run_cli(["run", "--method", "ditask", "--dataset", "nyud"], capsys)
    assert code == 2
    line = one_error_line(err)
    assert "no data folder given for nyud" in line and "hub" not in line
    assert time.monotonic() - started < 5


@pytest.mark.parametrize("offline_by", ["env", "unreachable host"])
def test_offline_hub_is_one_line_within_a_second(offline_by, capsys, tmp_path, monkeypatch, empty_hub_cache):
    monkeypatch.chdir(tmp_path)
    if offline_by != "env":
        monkeypatch.delenv("HF_HUB_OFFLINE")
        monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
        monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # the discard port: nothing listens
    import timm  # noqa: F401 - imported first: the time below is mtbench's, not the import's

    started = time.monotonic()
    code, _, err = run_cli(["run", *SMOKE, "--weights", "timm", "--backbone", "swin_tiny_patch4_window7_224"],
                           capsys)
    assert code == 2
    line = one_error_line(err)
    assert "--weights builtin|none|PATH" in line and "hub" in line
    assert time.monotonic() - started < 5


def test_hub_weights_in_the_local_cache_load_without_the_network(tmp_path, monkeypatch):
    import huggingface_hub.constants
    import timm
    import torch
    from safetensors.torch import save_file

    from mtpeft_bench.model.backbone import create_backbone

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    repo = tmp_path / "models--timm--swin_tiny_patch4_window7_224.ms_in1k"
    (repo / "snapshots" / "0123").mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123")
    saved = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False).state_dict()
    saved = {k: v.contiguous() for k, v in saved.items() if not k.endswith(("relative_position_index", "attn_mask"))}
    save_file(saved, str(repo / "snapshots" / "0123" / "model.safetensors"))
    backbone, provenance = create_backbone("swin_tiny_patch4_window7_224", (224, 224), "timm")
    assert provenance["id"] == "timm/swin_tiny_patch4_window7_224.ms_in1k"
    key = "layers.1.blocks.0.attn.qkv.weight"
    assert torch.equal(backbone.state_dict()[key], saved[key])


@pytest.mark.parametrize("weight", ["-1", "nan", "inf", "-inf"])
def test_negative_or_non_finite_loss_weight_is_an_error(weight, capsys):
    code, _, err = run_cli(["params", *SMOKE, "--set", f"loss_weights.depth={weight}"], capsys)
    assert code == 2
    assert "loss_weights.depth must be a finite number >= 0" in one_error_line(err)


def test_empty_task_list_is_an_error(capsys):
    code, _, err = run_cli(["params", *SMOKE, "--tasks", ""], capsys)
    assert code == 2
    assert "--tasks names no task" in one_error_line(err)


def test_data_root_for_a_generated_dataset_warns_in_one_line(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # a missing weights file stops the run before anything is generated
    code, _, err = run_cli(["run", *SMOKE, "--data-root", str(tmp_path / "data"), "--weights", "/no/such.pth"],
                           capsys)
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 2, err
    assert lines[0].startswith("mtbench: warning: synth is generated, not read: --data-root")
    assert "no file at '/no/such.pth'" in lines[1]


def test_data_root_of_a_generated_dataset_holding_other_files_fails_before_the_model(capsys, tmp_path,
                                                                                       monkeypatch):
    import mtpeft_bench.running.pipeline as pipeline

    def no_build(*args, **kwargs):
        raise AssertionError("the model was built before the data folder was checked")

    monkeypatch.setattr(pipeline, "build_training", no_build)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "NYUD_MT").mkdir()
    code, _, err = run_cli(["run", *SMOKE, "--data-root", str(tmp_path / "data")], capsys)
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 2 and lines[0].startswith("mtbench: warning: synth is generated"), err
    assert "exists and is not a synth dataset" in lines[1]


@pytest.mark.parametrize("args, hint", [
    (["--method", "mtlora", "--set", "method.rnak=8"], "did you mean 'rank'?"),
    (["--method", "full", "--set", "data.num_trian=8"], "did you mean 'num_train'?"),
    (["--method", "full", "--set", "loss_weights.dept=2"], "did you mean 'depth'?"),
    (["--method", "full", "--tasks", "semseg,dept"], "did you mean 'depth'?"),
])
def test_keyed_options_suggest_the_closest_name(args, hint, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(["run", *args, "--preset", "smoke"], capsys)
    assert code == 2
    assert hint in one_error_line(err)


def test_list_valued_method_option_takes_a_comma_list(capsys, example_plugin):
    code, out, err = run_cli(["params", "--method", "task_proj", "--preset", "smoke", "--set", "method.stages=2,3",
                              "--json"], capsys)
    assert code == 0, err
    assert json.loads(out)["method_config"]["stages"] == [2, 3]


def test_plugin_sequence_options_are_coerced_by_their_type():
    from dataclasses import dataclass

    from mtpeft_bench.tasks.base import config_from_mapping

    @dataclass(frozen=True)
    class Options:
        stages: tuple[int, ...] = (0, 1)
        names: list[str] | None = None
        scale: float = 1.0

    assert config_from_mapping(Options, {"stages": "2, 3"}, "test").stages == (2, 3)
    assert config_from_mapping(Options, {"stages": 1}, "test").stages == (1,)
    assert config_from_mapping(Options, {"stages": [1, 2]}, "test").stages == (1, 2)
    assert config_from_mapping(Options, {"names": "a,b"}, "test").names == ["a", "b"]
    assert config_from_mapping(Options, {"scale": 2.0}, "test").scale == 2.0


def test_weights_of_another_model_say_so_in_one_line(capsys, tmp_path, monkeypatch):
    import torch

    from mtpeft_bench.model.backbone import create_backbone

    monkeypatch.chdir(tmp_path)
    other, _ = create_backbone("swin_mini", (64, 64), "none")  # deeper stages than the smoke preset's swin_micro
    torch.save(other.state_dict(), tmp_path / "mini.pth")
    code, _, err = run_cli(["run", *SMOKE, "--weights", str(tmp_path / "mini.pth")], capsys)
    assert code == 2
    line = one_error_line(err)
    assert "holds another model's weights" in line and "'swin_micro'" in line
    assert "Sequential" not in line


def test_checkpoint_of_another_model_says_so_in_one_line():
    import torch

    from mtpeft_bench.errors import UserError
    from mtpeft_bench.train.checkpoint import Checkpoint, restore_model

    saved = Checkpoint({"model/0.weight": torch.zeros(4, 3), "model/1.weight": torch.zeros(2, 4)}, {})
    with pytest.raises(UserError) as info:
        restore_model(saved, torch.nn.Sequential(torch.nn.Linear(3, 5, bias=False)))
    message = str(info.value)
    assert message.startswith("the checkpoint was saved from another model: ") and "\n" not in message
    assert "1 unexpected key (e.g. 1.weight)" in message and "1 tensor of another shape (e.g. 0.weight)" in message


class NotATensor:
    """An object a weights file should not hold (the loader refuses to unpickle it)."""


def test_pickled_objects_are_refused_without_torchs_advice(capsys, tmp_path, monkeypatch):
    import torch

    monkeypatch.chdir(tmp_path)
    torch.save({"model": {"x": torch.zeros(1)}, "args": NotATensor()}, tmp_path / "objects.pth")
    code, _, err = run_cli(["run", *SMOKE, "--weights", str(tmp_path / "objects.pth")], capsys)
    assert code == 2
    line = one_error_line(err)
    assert "holds Python objects besides tensors" in line
    assert "weights_only" not in line


@pytest.mark.parametrize("args, message", [
    (["run", "--method", "foo"], "unknown method 'foo'; available: "),
    (["run", "--method", "full", "--preset", "smoke", "--set", "amp=maybe"], "amp must be true or false, got"),
    (["run", "--method", "full", "--preset", "smoke", "--weights", "/no/such.pth"],
     "--weights takes none, timm, builtin or the path of a checkpoint file; there is no file at '/no/such.pth'"),
])
def test_wording(args, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(args, capsys)
    assert code == 2
    assert message in one_error_line(err)
