"""One meaning per flag across commands, the old spellings kept for one release (each use prints one
deprecation line on stderr), and ``-q/--quiet`` / ``-v/--verbose`` on the library's log lines."""

from __future__ import annotations

import json
import logging
import re

import pytest

from helpers import run_cli
from mtpeft_bench.cli.options import deprecation_line
from mtpeft_bench.tasks.miniature import write_nyud


TINY_RUN = ["run", "--method", "full", "--preset", "smoke", "--tasks", "depth", "--set", "data.num_train=8",
            "--set", "data.num_val=2", "--set", "batch_size=4", "--epochs", "1", "--no-progress"]
PARAMS = ["params", "--method", "full", "--dataset", "synth", "--preset", "smoke"]
BENCH = ["bench", "--method", "decoder_only", "--tasks", "semseg", "--steps", "1", "--warmup", "0", "--batch-size", "1"]
SWEEP = ["sweep", "--preset", "smoke", "--seeds", "0", "--print-commands"]


@pytest.fixture(autouse=True)
def _keep_log_level():
    """-q/-v set the level of the library's logger; leave it as found for the tests that follow."""
    logger = logging.getLogger("mtpeft_bench")
    level = logger.level
    yield
    logger.setLevel(level)


def deprecations(err: str) -> list[str]:
    return [line for line in err.splitlines() if "is deprecated" in line]


# --format instead of --json (params, bench)

def test_params_format_json_and_table(capsys):
    code, out, err = run_cli([*PARAMS, "--format", "json"], capsys)
    assert code == 0, err
    assert json.loads(out)["method"] == "full" and not deprecations(err)
    code, out, err = run_cli([*PARAMS, "--format", "table"], capsys)
    assert code == 0 and out.startswith("full on synth") and not deprecations(err)
    code, table, _ = run_cli(PARAMS, capsys)
    assert code == 0 and table == out  # table is the default


def test_params_json_still_works_with_one_deprecation_line(capsys):
    code, out, err = run_cli([*PARAMS, "--json"], capsys)
    assert code == 0, err
    assert json.loads(out)["method"] == "full"
    assert deprecations(err) == ["mtbench: --json is deprecated; use --format json (the old spelling will be removed "
                                 "in the next release)"]


def test_both_spellings_at_once_are_refused(capsys):
    code, _, err = run_cli([*PARAMS, "--json", "--format", "table"], capsys)
    assert code == 2 and "give only --format" in err


def test_bench_format_json_and_old_json(capsys):
    code, out, err = run_cli([*BENCH, "--format", "json"], capsys)
    assert code == 0, err
    assert "decoder_only" in json.loads(out)["models"] and not deprecations(err)
    code, out, err = run_cli([*BENCH, "--json"], capsys)
    assert code == 0, err
    assert "decoder_only" in json.loads(out)["models"]
    assert deprecations(err) == [deprecation_line("--json", "--format json")]


# List options: singular names, comma lists (sweep --method/--dataset, data verify --split)

def test_sweep_method_and_dataset_take_comma_lists(capsys, tmp_path):
    code, out, err = run_cli([*SWEEP, "--method", "full,decoder_only", "--dataset", "synth", "--out", str(tmp_path)],
                             capsys)
    assert code == 0, err
    lines = out.splitlines()
    assert len(lines) == 2 and "--method full" in lines[0] and "--method decoder_only" in lines[1]
    assert not deprecations(err)
    code, short, _ = run_cli([*SWEEP, "-m", "full,decoder_only", "-d", "synth", "--out", str(tmp_path)], capsys)
    assert code == 0 and short == out


def test_sweep_old_plural_spellings_still_work(capsys, tmp_path):
    code, out, err = run_cli([*SWEEP, "--methods", "full,decoder_only", "--datasets", "synth", "--out", str(tmp_path)],
                             capsys)
    assert code == 0, err
    assert len(out.splitlines()) == 2
    assert deprecations(err) == [deprecation_line("--methods", "--method"), deprecation_line("--datasets", "--dataset")]
    code, out, err = run_cli([*SWEEP, "--methods", "full", "--out", str(tmp_path)], capsys)
    assert code == 0 and len(out.splitlines()) == 1
    assert deprecations(err) == [deprecation_line("--methods", "--method")]


def test_sweep_without_a_method_is_one_line(capsys, tmp_path):
    code, _, err = run_cli([*SWEEP, "--out", str(tmp_path)], capsys)
    assert code == 2 and "Missing option '--method'" in err and len(err.strip().splitlines()) == 1


def test_data_verify_split_takes_a_comma_list(capsys, tmp_path):
    write_nyud(tmp_path / "NYUD_MT")
    verify = ["data", "verify", "nyud", "--data-root", str(tmp_path), "--no-progress"]
    code, out, err = run_cli([*verify, "--split", "val"], capsys)
    assert code == 0, err
    assert "(val " in out and "train " not in out
    code, listed, err = run_cli([*verify, "--split", "train,val"], capsys)
    assert code == 0, err
    assert "(train " in listed and ", val " in listed
    code, repeated, _ = run_cli([*verify, "--split", "train", "--split", "val"], capsys)
    assert code == 0 and repeated == listed


# --out is a folder; a file is --output/-o (data show, pretrain)

SHOW = ["data", "show", "synth", "--n", "1", "--set", "data.num_train=4", "--set", "data.num_val=2"]


def test_data_show_output_and_old_out(capsys, tmp_path):
    code, out, err = run_cli([*SHOW, "-o", str(tmp_path / "a.png")], capsys)
    assert code == 0, err
    assert (tmp_path / "a.png").read_bytes()[:4] == b"\x89PNG" and not deprecations(err)
    code, out, err = run_cli([*SHOW, "--out", str(tmp_path / "b.png")], capsys)
    assert code == 0, err
    assert (tmp_path / "b.png").read_bytes()[:4] == b"\x89PNG"
    assert deprecations(err) == [deprecation_line("--out", "--output")]
    code, _, err = run_cli(SHOW, capsys)
    assert code == 2 and "Missing option '--output'" in err


def test_pretrain_output_and_old_out(capsys, tmp_path, monkeypatch):
    # A file name that is not .safetensors: the value reaches the pretraining, which refuses it
    # before any work, so each spelling is seen to arrive without a pretraining run.
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(["pretrain", "--output", "w.pt"], capsys)
    assert code == 2 and "must name a .safetensors file, got w.pt" in err and not deprecations(err)
    code, _, err = run_cli(["pretrain", "-o", "w.pt"], capsys)
    assert code == 2 and "got w.pt" in err
    code, _, err = run_cli(["pretrain", "--out", "w.pt"], capsys)
    assert code == 2 and "got w.pt" in err
    assert deprecations(err) == [deprecation_line("--out", "--output")]
    assert len(err.strip().splitlines()) == 2  # the deprecation line, then the error
    code, _, err = run_cli(["pretrain"], capsys)
    assert code == 2 and "Missing option '--output'" in err


def test_old_spellings_are_hidden_from_help(capsys):
    for command, old in ((["params"], "--json"), (["bench"], "--json"), (["sweep"], "--methods"),
                         (["data", "show"], "--out"), (["pretrain"], "--out")):
        code, out, _ = run_cli([*command, "--help"], capsys)
        assert code == 0 and not re.search(re.escape(old) + r"(?![\w-])", out), (command, old)


# -q / -v

def test_quiet_silences_the_library_info_lines_but_not_the_result(capsys, tmp_path):
    out_dir = str(tmp_path / "results")
    code, out, err = run_cli(["-q", *TINY_RUN, "--out", out_dir], capsys)
    assert code == 0, err
    assert "result:" in out  # the summary the CLI prints stays
    assert "mtbench:" not in err  # no start lines
    # The same run again with --resume: by default it says it is done (an INFO line) ...
    again = [*TINY_RUN, "--out", out_dir, "--resume"]
    code, _, err = run_cli(again, capsys)
    assert code == 0 and "already completed, nothing to do" in err
    # ... which -q silences and -v keeps.
    code, _, err = run_cli(["--quiet", *again], capsys)
    assert code == 0 and err.strip() == ""
    code, _, err = run_cli(["-v", *again], capsys)
    assert code == 0 and "already completed, nothing to do" in err


def test_quiet_silences_the_sweep_status_lines(capsys, tmp_path):
    code, out, err = run_cli([*SWEEP, "--method", "full", "--out", str(tmp_path)], capsys)
    assert code == 0 and "sweep: 1 runs" in err
    code, quiet_out, err = run_cli(["-q", *SWEEP, "--method", "full", "--out", str(tmp_path)], capsys)
    assert code == 0 and err.strip() == "" and quiet_out == out


def test_verbose_is_accepted_and_quiet_and_verbose_exclude_each_other(capsys):
    code, out, err = run_cli(["-v", *PARAMS], capsys)
    assert code == 0 and out.startswith("full on synth"), err
    assert "resolved configuration: RunConfig(" in err  # a DEBUG line
    code, _, err = run_cli(PARAMS, capsys)
    assert code == 0 and "resolved configuration" not in err
    code, out, err = run_cli(["--verbose", "ls", "presets"], capsys)
    assert code == 0 and "smoke" in out
    code, _, err = run_cli(["-q", "-v", "ls"], capsys)
    assert code == 2 and "exclude each other" in err


def test_no_progress_also_hides_the_bar_of_generating_synth(capsys, tmp_path):
    # data.num_train values no other test uses: each run generates its own synth cache first.
    tiny = ["run", "--method", "full", "--preset", "smoke", "--tasks", "depth", "--set", "data.num_val=2",
            "--set", "batch_size=4", "--epochs", "1"]
    code, _, err = run_cli([*tiny, "--set", "data.num_train=6", "--out", str(tmp_path / "a")], capsys)
    assert code == 0 and "synth: generating" in err
    code, _, err = run_cli([*tiny, "--set", "data.num_train=7", "--no-progress", "--out", str(tmp_path / "b")], capsys)
    assert code == 0 and "synth: generating" not in err
