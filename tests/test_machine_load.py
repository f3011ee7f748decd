"""The machine's load while speed is measured: the busy rule, the reading of a timed section, and
the mark `mtbench compare` puts on speed figures measured on a busy machine."""

from __future__ import annotations

import csv
import io

import pytest
import torch

from helpers import run_cli
from helpers.records import record
from mtpeft_bench.machine_load import CPU_SHARE_MIN, judge, load_record
from mtpeft_bench.measure import Throughput
from mtpeft_bench.results import write_record


def busy(**overrides):
    reading = dict(load_before=0.2, load_after=2.1, cpus=4, threads=2, workers=0, cpu_share=0.95,
                   gpu_others=None, on_cuda=False)
    return judge(**{**reading, **overrides})


def test_an_idle_machine_is_not_busy():
    assert busy() == (False, None)  # load 2.1 is this run's own 1.9 busy threads
    assert busy(load_before=None, load_after=None) == (False, None)


def test_a_low_cpu_share_is_busy_on_cpu_only():
    flag, rule = busy(cpu_share=CPU_SHARE_MIN - 0.2)
    assert flag and "CPU share 0.50" in rule
    assert busy(cpu_share=0.1, on_cuda=True) == (False, None)  # a CUDA run waits for its GPU


def test_load_of_others_above_the_free_cpus_is_busy():
    flag, rule = busy(load_after=4.6)  # others 4.6 - 1.9 = 2.7 > 2 free CPUs + 0.5
    assert flag and "load average 4.60" in rule
    assert busy(load_after=4.3) == (False, None)  # 2.4 is within the slack
    assert busy(load_after=2.1, cpus=2)[0] is False
    assert busy(load_after=3.0, cpus=2)[0] is True  # one other job on a 2-CPU machine used by both threads
    assert busy(load_after=3.0, cpus=2, workers=1)[0] is False  # a data-loader worker is the run's own load


def test_other_processes_on_the_gpu_are_busy():
    flag, rule = busy(gpu_others=2, on_cuda=True)
    assert flag and rule.startswith("2 other process")
    assert busy(gpu_others=0, on_cuda=True) == (False, None)


def test_throughput_reads_the_load_over_timed_sections_only():
    meter = Throughput(torch.device("cpu"), warmup=1)
    for _ in range(3):
        with meter.time(4):
            sum(i * i for i in range(20000))
    assert meter.sections == 3 and meter.images == 8  # the warm-up section is not in the window
    assert 0 < meter.load.cpu_s
    block = load_record([meter.load], torch.device("cpu"), threads=1, workers=0)
    assert set(block) == {"loadavg_1m_before", "loadavg_1m_after", "cpus", "threads", "workers", "cpu_share",
                          "timed_s", "gpu_other_processes", "busy", "busy_rule"}
    assert block["threads"] == 1 and block["gpu_other_processes"] is None and isinstance(block["busy"], bool)
    assert (block["busy_rule"] is None) == (not block["busy"])


def busy_record(method, load):
    """A record whose speed was measured on a busy machine (``load`` True), a quiet one (False) or
    by a version of mtbench that recorded no load (None)."""
    efficiency = {"peak_memory_mb": 500.0, "train_images_per_s": 100.0, "inference_images_per_s": 300.0,
                  "latency_ms": 12.0}
    if load is not None:
        efficiency["load"] = {"busy": load, "busy_rule": "CPU share 0.40 < 0.7" if load else None}
    return record(method, ["semseg"], [50.0], run_id=f"{method}-0", efficiency=efficiency)


def compare(tmp_path, capsys, *args):
    code, out, err = run_cli(["compare", "--results", str(tmp_path), "--sort", "method", *args], capsys)
    assert code == 0, err
    return out


def lines_of(text, method):
    return [line for line in text.splitlines() if line.startswith(f"| {method} ")]


def test_compare_flags_speed_measured_on_a_busy_machine(tmp_path, capsys):
    for method, load in (("full", True), ("lora", False), ("bitfit", None)):
        write_record(tmp_path, busy_record(method, load))
    text = compare(tmp_path, capsys)
    (full,), (lora,), (bitfit,) = lines_of(text, "full"), lines_of(text, "lora"), lines_of(text, "bitfit")
    assert "100.0 †" in full and "300.0 †" in full and "12.0 †" in full
    assert "†" not in lora and "†" not in bitfit
    footnotes = [line for line in text.splitlines() if "†" in line and not line.startswith("|")]
    assert len(footnotes) == 1 and "busy machine" in footnotes[0] and ": full." in footnotes[0]

    rows = {r["method"]: r for r in csv.DictReader(io.StringIO(compare(tmp_path, capsys, "--format", "csv")))}
    assert {m: r["busy_machine"] for m, r in rows.items()} == {"full": "true", "lora": "false", "bitfit": ""}
    latex = compare(tmp_path, capsys, "--format", "latex")
    assert latex.count(r"$^\dagger$") == 4  # three cells and the note
    html = compare(tmp_path, capsys, "--format", "html")
    assert html.count("†") == 4


def test_compare_without_load_readings_has_no_flag_and_no_column(tmp_path, capsys):
    write_record(tmp_path, busy_record("full", None))
    write_record(tmp_path, busy_record("lora", False))
    assert "†" not in compare(tmp_path, capsys)
    write_record(tmp_path / "old", busy_record("full", None))
    assert "busy_machine" not in compare(tmp_path / "old", capsys, "--format", "csv")


@pytest.mark.parametrize("listing, others", [
    ("GPU:0\nprocess {me:>10d} uses      500.000 MB GPU memory", 0),
    ("GPU:0\nprocess {me:>10d} uses      500.000 MB GPU memory\nprocess      99999 uses 10.000 MB GPU memory", 1),
    ("GPU:0\nprocess      77777 uses 500.000 MB GPU memory\nprocess      99999 uses 10.000 MB GPU memory", 1),
    ("pynvml module not found, please install pynvml", None),
])
def test_other_gpu_processes_are_read_from_torch(monkeypatch, listing, others):
    import os

    from mtpeft_bench.machine_load import gpu_other_processes

    monkeypatch.setattr(torch.cuda, "list_gpu_processes", lambda device: listing.format(me=os.getpid()))
    assert gpu_other_processes(torch.device("cuda", 0)) == others  # (a host pid listed in a container is us)
    assert gpu_other_processes(torch.device("cpu")) is None
