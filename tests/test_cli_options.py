"""The shared run options: a command line written back from them gives the same options, and the
comma-list parser."""

from __future__ import annotations

import pytest

from mtpeft_bench.cli.options import RUN_OPTIONS, command_line, config_fields, parse_list, split_list
from mtpeft_bench.cli.run import run
from mtpeft_bench.errors import UserError


def _run_options(argv):
    params = run.make_context("run", ["--method", "full", *argv]).params
    return {name: params[name] for name in RUN_OPTIONS}


def test_command_line_gives_the_same_run_options():
    argv = ["--tasks", "semseg,depth", "--preset", "smoke", "--backbone", "swin_micro", "--weights", "none",
            "--epochs", "2", "--batch-size", "4", "--data-root", "/data", "--out", "/tmp/r", "--device", "cpu",
            "--tag", "a b", "--set", "data.num_train=8", "--set", "base_lr=1e-3", "--no-progress"]
    options = _run_options(argv)
    assert command_line(options) == argv
    assert command_line(_run_options([])) == []


def test_config_fields_of_the_run_options():
    fields = config_fields(_run_options(["--tasks", "semseg, depth", "--preset", "smoke", "--no-progress"]))
    assert fields["tasks"] == ("semseg", "depth") and fields["progress"] is False
    assert "preset" not in fields and "sets" not in fields
    assert config_fields(_run_options([]))["progress"] is None


def test_comma_lists():
    assert split_list(None) is None and split_list("") is None
    assert split_list(" a, b,,c ") == ("a", "b", "c")
    assert parse_list("a,b,a", "methods") == ["a", "b"]
    with pytest.raises(UserError, match="--methods needs at least one name"):
        parse_list(" , ", "methods")
