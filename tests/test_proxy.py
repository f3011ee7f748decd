"""Proxy validity: measured rows paired with published ones through the mapping table, Kendall's τ-b."""

from __future__ import annotations

import itertools

import pytest

from helpers import one_error_line, run_cli
from helpers.records import record
from mtpeft_bench.errors import UserError
from mtpeft_bench.report.proxy import MAPPINGS, kendall_tau, proxy_validity
from mtpeft_bench.report.published import load_table
from mtpeft_bench.report.rows import leaderboard
from mtpeft_bench.results import write_record

MTLORA16 = {"rank": 16, "task_rank": 4, "plus": False, "mode": "matrix", "scale": 4.0}
#: measured Δm (%) per method on synth. The single-task baselines are semseg 50.0 and depth 0.5, and every
#: multi-task run keeps depth at 0.5, so Δm = ½ · 100 (semseg − 50)/50 and semseg = 50 (1 + Δm/50).
MEASURED = {("full", None): 5.0, ("lora", 4): 4.0, ("mtlora", 16): 3.0, ("bitfit", None): -1.0,
            ("decoder_only", None): -10.0}


def runs(extra=()):
    out = [record("full", ["semseg"], [50.0]), record("full", ["depth"], [0.5])]
    for (method, rank), delta in [*MEASURED.items(), *extra]:
        config = {"r": rank} if method == "lora" else dict(MTLORA16, rank=rank) if method == "mtlora" else {}
        out.append(record(method, ["semseg", "depth"], [50.0 * (1 + delta / 50), 0.5], method_config=config,
                          run_id=f"{method}-{rank}"))
    return out


def published_delta(method):
    """The published row's Δm recomputed by hand from its metrics (MTLoRA's single-task row)."""
    table = load_table("pascal_mt")
    row = table.row("mtlora", method)
    base = table.row("mtlora", "Single-task (4 models)")
    terms = [(1 if table.columns[t]["higher_is_better"] else -1) * (row.metrics[t] - base.metrics[t])
             / base.metrics[t] * 100 for t in base.metrics]
    return sum(terms) / len(terms)


def tau_by_hand(x, y):
    """(concordant − discordant) / number of pairs, for samples without ties."""
    concordant = discordant = 0
    for i, j in itertools.combinations(range(len(x)), 2):
        sign = (x[i] - x[j]) * (y[i] - y[j])
        concordant += sign > 0
        discordant += sign < 0
    assert concordant + discordant == len(x) * (len(x) - 1) // 2  # no ties in these cases
    return (concordant - discordant) / (concordant + discordant)


def test_tau_over_the_paired_methods():
    result = proxy_validity(leaderboard(runs(), dataset="synth"), "synth", "pascal_mt")
    published = {"full": "MTL full fine-tuning", "lora": "LoRA", "mtlora": "MTLoRA r=16", "bitfit": "BitFit",
                 "decoder_only": "MTL decoders only"}
    pairs = {p.measured.split(" ")[0]: p for p in result.pairs}
    assert set(pairs) == set(published)
    for (method, _), delta in MEASURED.items():
        assert pairs[method].published.method == published[method]
        assert pairs[method].measured_delta == pytest.approx(delta)
        assert pairs[method].published_delta == pytest.approx(published_delta(published[method]))
    # published: full +2.45 > MTLoRA r=16 +1.34 > LoRA −2.17 > BitFit −4.59 > decoders −9.94; measured swaps
    # LoRA and MTLoRA: 9 concordant pairs, 1 discordant → τ = 0.8
    x = [MEASURED[k] for k in MEASURED]
    y = [published_delta(published[m]) for m, _ in MEASURED]
    assert tau_by_hand(x, y) == pytest.approx(0.8)
    assert result.tau.tau == pytest.approx(tau_by_hand(x, y)) and result.tau.n == 5
    assert 0 < result.tau.p_value < 1
    # without the recalled rows only full and MTLoRA r=16 remain, in the same order on both sides
    assert result.tau_without_recalled.n == 2 and result.tau_without_recalled.tau == pytest.approx(1.0)


def test_reversed_order_gives_minus_one_and_single_pairs_no_tau():
    assert kendall_tau([1, 2, 3, 4], [4, 3, 2, 1]).tau == pytest.approx(tau_by_hand([1, 2, 3, 4], [4, 3, 2, 1]))
    assert kendall_tau([1, 2, 3, 4], [4, 3, 2, 1]).tau == pytest.approx(-1.0)
    assert kendall_tau([1.0], [2.0]).tau is None
    assert kendall_tau([1.0, 2.0], [3.0, 3.0]).tau is None  # no variation on one side


def test_unmapped_rows_and_single_task_rows_stay_out():
    rows = leaderboard(runs(extra=[(("lora", 8), 2.0)]), dataset="synth")
    result = proxy_validity(rows, "synth", "pascal_mt")
    assert result.unmapped == ["lora (r=8)"]
    assert all(p.measured != "full" or p.measured_delta == pytest.approx(5.0) for p in result.pairs)
    assert len(result.pairs) == 5  # the single-task full runs do not stand for MTL full fine-tuning


def test_several_rows_for_one_published_row():
    tagged = record("full", ["semseg", "depth"], [51.0, 0.5], tag="shared_lr", run_id="full-2")
    result = proxy_validity(leaderboard([*runs(), tagged], dataset="synth"), "synth", "pascal_mt")
    assert result.aside == ["full [shared_lr]"]  # the untagged row is the leaderboard's own
    assert next(p for p in result.pairs if p.measured == "full").measured_delta == pytest.approx(5.0)
    other = dict(tagged, tag="other", run_id="full-3")
    rows = leaderboard([r for r in runs() if r["run_id"] != "full-None"] + [tagged, other], dataset="synth")
    with pytest.raises(UserError, match="2 measured rows stand for the published 'MTL full fine-tuning'"):
        proxy_validity(rows, "synth", "pascal_mt")


def test_the_mapping_names_rows_of_the_table():
    table = load_table("pascal_mt")
    for entry in MAPPINGS["pascal_mt"]:
        row = table.row(entry.paper, entry.row)
        assert row is not None and row.copied_from in (None, "polyhistor") and row.kind == "main", entry


def test_compare_proxy_prints_pairs_and_tau(capsys, tmp_path):
    for rec in runs():
        write_record(tmp_path, rec)
    code, out, err = run_cli(["compare", "--results", str(tmp_path), "--dataset", "synth", "--proxy", "pascal_mt"],
                             capsys)
    assert code == 0, err
    assert "| full " in out and "MTL full fine-tuning" in out and "+5.00" in out and "+2.45" in out
    assert "Kendall's τ-b = +0.800 over n = 5 methods" in out
    code, _, err = run_cli(["compare", "--results", str(tmp_path), "--proxy", "nyud"], capsys)
    assert code == 2 and "no published table with a method mapping for 'nyud'" in one_error_line(err)


@pytest.mark.parametrize("args, message", [
    (["--format", "latex"], "--proxy prints md or csv, not latex"),
    ([], "--proxy needs --dataset: the results hold pascal_mt, synth"),
])
def test_bad_proxy_options(capsys, tmp_path, args, message):
    for rec in [*runs(), record("full", ["semseg"], [60.0], dataset="pascal_mt", run_id="p")]:
        write_record(tmp_path, rec)
    dataset = ["--dataset", "synth"] if args else []
    code, _, err = run_cli(["compare", "--results", str(tmp_path), *dataset, "--proxy", "pascal_mt", *args], capsys)
    assert code == 2 and message in one_error_line(err)


def test_csv_pairs(capsys, tmp_path):
    for rec in runs():
        write_record(tmp_path, rec)
    code, out, err = run_cli(["compare", "--results", str(tmp_path), "--proxy", "pascal_mt", "--format", "csv"], capsys)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("measured row,seeds,") and len(lines) == 1 + len(MEASURED)
