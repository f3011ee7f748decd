"""Model FLOPs utilisation beside images/s: the record's ``efficiency.utilization`` block, the run's
summary line, and the MFU columns of ``mtbench compare`` (shown only where some record has a value)."""

from __future__ import annotations

import json

import pytest
import torch

from helpers import run_cli
from helpers.records import record
from mtpeft_bench import hardware
from mtpeft_bench.results import write_record
from mtpeft_bench.running.summary import utilization_text

TINY_RUN = ["run", "--method", "full", "--preset", "smoke", "--tasks", "semseg", "--set", "data.num_train=8",
            "--set", "data.num_val=6", "--set", "batch_size=2", "--epochs", "1", "--set", "measure_repeats=1",
            "--set", "measure_warmup=0", "--no-progress"]


def smoke_record(out, capsys):
    code, stdout, err = run_cli([*TINY_RUN, "--out", str(out)], capsys)
    assert code == 0, err
    return json.loads(next(out.rglob("*.json")).read_text()), stdout


def test_cpu_smoke_run_records_utilization_with_mfu_only_for_a_given_peak(tmp_path, capsys, monkeypatch, one_thread):
    plain, summary = smoke_record(tmp_path / "plain", capsys)
    eff = plain["efficiency"]
    block = eff["utilization"]
    assert block["precision"] == "fp32" and block["devices"] == 1 and block["training_flops_factor"] == 3
    assert block["device_name"] == plain["environment"]["device_name"]
    assert block["peak_flops_per_s"] is None and block["peak_source"] is None  # a CPU is not in the table
    assert block["train"]["mfu"] is None and block["inference"]["mfu"] is None
    assert eff["train_images_per_s"] and eff["inference_images_per_s"]
    assert block["train"]["achieved_flops_per_s"] == pytest.approx(3 * eff["flops_per_image"] * eff["train_images_per_s"])
    assert block["inference"]["achieved_flops_per_s"] == pytest.approx(eff["flops_per_image"]
                                                                       * eff["inference_images_per_s"])
    assert "MFU" not in summary

    monkeypatch.setenv("MTBENCH_PEAK_TFLOPS", "0.25")
    given, summary = smoke_record(tmp_path / "given", capsys)
    assert given["config_hash"] == plain["config_hash"]  # the peak is no part of a run's identity
    eff = given["efficiency"]
    block = eff["utilization"]
    assert block["peak_flops_per_s"] == pytest.approx(0.25e12) and block["peak_source"] == "MTBENCH_PEAK_TFLOPS"
    assert block["train"]["mfu"] == pytest.approx(3 * eff["flops_per_image"] * eff["train_images_per_s"] / 0.25e12)
    assert block["inference"]["mfu"] == pytest.approx(eff["flops_per_image"] * eff["inference_images_per_s"] / 0.25e12)
    assert "% MFU" in summary and "0.25 TFLOP/s fp32 peak" in summary

    code, out, err = run_cli(["compare", "--results", str(tmp_path / "given")], capsys)
    assert code == 0, err
    assert "train MFU % ↑" in out and "infer MFU % ↑" in out and "- MFU: model FLOPs utilisation" in out


def test_peak_of_a_device_is_looked_up_on_cuda_only_unless_given(monkeypatch):
    cpu = torch.device("cpu")
    assert hardware.device_peak(cpu, "fp32") == (None, None)
    monkeypatch.setenv("MTBENCH_PEAK_TFLOPS", "2")
    assert hardware.device_peak(cpu, "fp32") == (pytest.approx(2e12), "MTBENCH_PEAK_TFLOPS")


def test_rates_summed_over_processes_are_divided_by_the_peak_of_all_devices(monkeypatch):
    monkeypatch.setenv("MTBENCH_PEAK_TFLOPS", "1")
    one = hardware.utilization(1e9, 100.0, 400.0, torch.device("cpu"), False, "float16")
    two = hardware.utilization(1e9, 100.0, 400.0, torch.device("cpu"), False, "float16", devices=2)
    assert one["train"] == {"achieved_flops_per_s": pytest.approx(3e11), "mfu": pytest.approx(0.3)}
    assert one["inference"] == {"achieved_flops_per_s": pytest.approx(4e11), "mfu": pytest.approx(0.4)}
    assert two["train"]["mfu"] == pytest.approx(0.15) and two["peak_flops_per_s"] == pytest.approx(1e12)
    no_rate = hardware.utilization(1e9, None, 400.0, torch.device("cpu"), False, "float16")
    assert no_rate["train"] == {"achieved_flops_per_s": None, "mfu": None}


def test_summary_line_only_where_mfu_is_known(monkeypatch):
    assert utilization_text(None) == ""  # a record written before the block existed
    cpu = hardware.utilization(1e9, 100.0, 400.0, torch.device("cpu"), False, "float16")
    assert utilization_text(cpu) == ""
    monkeypatch.setenv("MTBENCH_PEAK_TFLOPS", "1")
    line = utilization_text(hardware.utilization(1e9, 100.0, 400.0, torch.device("cpu"), False, "float16", devices=2))
    assert "train 0.3 TFLOP/s = 15 % MFU" in line and "inference 0.4 TFLOP/s = 20 % MFU" in line
    assert "of 1 TFLOP/s fp32 peak × 2 devices" in line


# -- compare -------------------------------------------------------------------------------------------

def _measured(method, tasks, metrics, train_mfu, inference_mfu, **extra):
    """A record with an ``efficiency.utilization`` block: achieved FLOP/s always (it needs no peak), MFU as given
    (None: a device without a known peak, as on CPU)."""
    rec = record(method, tasks, metrics, **extra)
    rec["efficiency"]["utilization"] = {
        "precision": "bf16", "device_name": "NVIDIA H100 80GB HBM3", "devices": 1,
        "peak_flops_per_s": None if train_mfu is None else 1e14,
        "train": {"achieved_flops_per_s": 3e12, "mfu": train_mfu},
        "inference": {"achieved_flops_per_s": 1e12, "mfu": inference_mfu}}
    return rec


def _old_records():
    """Records of the format before the block existed (no ``efficiency.utilization``)."""
    return [record("full", ["semseg"], [48.0]), record("full", ["depth"], [0.5]),
            record("full", ["semseg", "depth"], [50.0, 0.45])]


def _compare(results, capsys, *args):
    code, out, err = run_cli(["compare", "--results", str(results), *args], capsys)
    assert code == 0, err
    return out


def _column(markdown, title):
    """The cells of column ``title`` of a Markdown table, by method."""
    lines = [line for line in markdown.splitlines() if line.startswith("|")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    index = header.index(title)
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[2:]]
    return {row[header.index("method")]: row[index] for row in rows}


def test_compare_shows_mfu_columns_only_when_a_record_has_a_value(tmp_path, capsys):
    results = tmp_path / "results"
    for rec in _old_records():
        write_record(results, rec)
    # A CPU record: the block is there, its MFU is not (no known peak).
    write_record(results, _measured("lora", ["semseg", "depth"], [49.0, 0.5], None, None))
    before = _compare(results, capsys)
    assert "MFU" not in before
    assert "train_mfu" in _compare(results, capsys, "--format", "csv").splitlines()[0]  # CSV carries the fields

    old_only = tmp_path / "old"
    for rec in _old_records():
        write_record(old_only, rec)
    assert "train_mfu" not in _compare(old_only, capsys, "--format", "csv").splitlines()[0]  # old CSVs keep columns

    write_record(results, _measured("lora", ["semseg", "depth"], [49.5, 0.48], 0.4123, 0.0567, seed=1,
                                    run_id="lora-seed1"))
    after = _compare(results, capsys)
    assert "- MFU: model FLOPs utilisation" in after
    train, infer = _column(after, "train MFU % ↑"), _column(after, "infer MFU % ↑")
    assert train["lora"] == "41.2" and infer["lora"] == "5.67"  # the seed without a value is left out
    assert train["full"] == infer["full"] == "—"  # old records: no value, no error
    header = after.splitlines()[2]
    assert header.index("train img/s") < header.index("train MFU") < header.index("infer img/s") \
        < header.index("infer MFU")
    csv_header = _compare(results, capsys, "--format", "csv").splitlines()[0].split(",")
    assert {"train_flops_per_s", "train_mfu.ci95", "inference_mfu"} <= set(csv_header)
    assert "train MFU \\% $\\uparrow$" in _compare(results, capsys, "--format", "latex")
