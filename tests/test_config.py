"""Run configuration: presets, --set parsing, validation."""

from __future__ import annotations

import pytest

from mtpeft_bench.config import PRESETS, RunConfig, config_hash, parse_sets, parse_value, resolve
from mtpeft_bench.errors import UserError


def test_parse_values():
    assert parse_value("1e-3") == pytest.approx(1e-3)  # YAML 1.1 would keep this a string
    assert parse_value("10") == 10
    assert parse_value("true") is True
    assert parse_value("[1, 2]") == [1, 2]
    assert parse_value("null") is None
    assert parse_value("ditask") == "ditask"


def test_parse_sets_rejects_malformed():
    assert parse_sets(["epochs=3", "method.r=8"]) == {"epochs": 3, "method.r": 8}
    with pytest.raises(UserError, match="key=value"):
        parse_sets(["epochs"])
    with pytest.raises(UserError, match="key=value"):
        parse_sets(["=3"])


def test_resolution_order():
    cfg = resolve("smoke", {"seed": 3, "epochs": None}, {"epochs": 7, "method.r": 4, "data.seed": 2,
                                                          "loss_weights.depth": 2})
    assert cfg.preset == "smoke" and cfg.backbone == PRESETS["smoke"]["backbone"]
    assert cfg.seed == 3 and cfg.epochs == 7
    assert cfg.method_options == {"r": 4} and cfg.data_options == {"seed": 2}
    assert cfg.loss_weights == {"depth": 2.0}
    paper = resolve("paper", {}, {})
    assert (paper.epochs, paper.batch_size, paper.base_lr, paper.warmup_epochs) == (300, 32, 5e-4, 20)
    assert paper.lr_scale() * paper.base_lr == pytest.approx(3.125e-5)  # docs/protocol.md 4.4


@pytest.mark.parametrize("sets, message", [
    ({"epoch": 3}, "did you mean 'epochs'"),
    ({"epochs": "many"}, "epochs must be an integer"),
    ({"epochs": 0}, "epochs must be positive"),
    ({"drop_path": 1.5}, "drop_path"),
    ({"image_size": "a,b"}, "image_size"),
    ({"amp": "yes please"}, "amp must be"),
    ({"amp_dtype": "int8"}, "amp_dtype"),
])
def test_invalid_settings(sets, message):
    with pytest.raises(UserError, match=message):
        resolve("smoke", {}, sets)


def test_unknown_preset_suggests():
    with pytest.raises(UserError, match="did you mean 'smoke'"):
        resolve("smok", {}, {})


def test_image_size_forms():
    assert resolve("smoke", {}, {"image_size": 96}).image_size == (96, 96)
    assert resolve("smoke", {}, {"image_size": "96,128"}).image_size == (96, 128)
    assert resolve("smoke", {}, {"image_size": [96, 128]}).image_size == (96, 128)


def test_config_hash_ignores_output_location():
    a, b = RunConfig(), RunConfig(out="elsewhere", tag="x", num_workers=0)
    assert config_hash(a) == config_hash(b)
    assert config_hash(a) != config_hash(RunConfig(seed=1))


def test_a_setting_added_later_keeps_old_hashes_at_its_neutral_value(monkeypatch):
    """A setting registered in IDENTITY_SINCE hashes as if it did not exist while it has its
    registered value (completed runs stay recognisable), and as usual at any other value."""
    import mtpeft_bench.config as config

    cfg = RunConfig()
    monkeypatch.setattr(config, "IDENTITY_SINCE", {})
    monkeypatch.setattr(config, "NOT_IDENTITY", config.NOT_IDENTITY | {"clip_grad"})
    without_the_setting = config_hash(cfg)
    monkeypatch.setattr(config, "NOT_IDENTITY", config.NOT_IDENTITY - {"clip_grad"})
    monkeypatch.setattr(config, "IDENTITY_SINCE", {"clip_grad": cfg.clip_grad})
    assert config_hash(cfg) == without_the_setting
    changed = RunConfig(clip_grad=cfg.clip_grad + 1.0 if cfg.clip_grad is not None else 1.0)
    assert config_hash(changed) != without_the_setting


class _Resolved(Exception):
    """Raised right after a run's configuration is resolved; carries it (nothing else runs)."""


@pytest.mark.parametrize("api_options, cli_args", [
    (dict(method="full", dataset="synth"), ["--method", "full", "--dataset", "synth"]),
    (dict(method="full"), ["--method", "full"]),
    (dict(method="decoder_only", dataset="synth", seed=2, epochs=4, preset="smoke"),
     ["--method", "decoder_only", "--dataset", "synth", "--seed", "2", "--epochs", "4", "--preset", "smoke"]),
])
def test_python_api_and_cli_resolve_the_same_configuration(api_options, cli_args, monkeypatch):
    """``mtpeft_bench.run(...)`` and ``mtbench run ...`` resolve the same inputs alike: without a
    preset both take the dataset's default one (``cpu`` for synth), not ``paper``."""
    import mtpeft_bench
    import mtpeft_bench.config as config
    from mtpeft_bench.cli import main

    check = config.validate

    def stop(cfg):
        check(cfg)
        raise _Resolved(cfg)

    monkeypatch.setattr(config, "validate", stop)
    with pytest.raises(_Resolved) as through_api:
        mtpeft_bench.run(**api_options)
    with pytest.raises(_Resolved) as through_cli:
        main(["run", *cli_args])
    api_cfg, cli_cfg = through_api.value.args[0], through_cli.value.args[0]
    assert api_cfg == cli_cfg
    assert api_cfg.preset == api_options.get("preset", "cpu")
