"""Leaderboard protocols: the packaged file, the rate-selection rule, and ``mtbench sweep --protocol``
(the plan, skipping what exists, grid extension at an edge, the chosen rate in the realised protocol
file and in every record, no selection run evaluated on val)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from helpers import one_error_line, run_cli
from helpers.records import SPECS
from mtpeft_bench.config import PRESETS
from mtpeft_bench.errors import UserError
from mtpeft_bench.running.lr_selection import choose, holdout_score
from mtpeft_bench.running.protocol import RunSpec, build_config, load_protocol, parse_protocol

TINY = {
    "name": "tiny", "dataset": "synth", "preset": "smoke", "seeds": [0],
    "settings": {"tasks": "semseg,depth", "data.num_train": 12, "data.num_val": 4, "batch_size": 4, "epochs": 1,
                 "measure_repeats": 0},
    "selection": {"seed": 0, "holdout": 4, "multipliers": [1, 2], "max_extensions": 0, "reference": "full"},
    "baselines": {"method": "full", "rate_of": "full"},
    "rows": [{"name": "full", "method": "full"}, {"name": "decoder_only", "method": "decoder_only"}],
    "extras": [{"row": "full", "tag": "default-lr", "rate": "default"}],
}


def write_protocol(tmp_path: Path, **changes) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump({**TINY, **changes}))
    return path


# -- the packaged protocol ----------------------------------------------------------------------

def test_packaged_synth_protocol_resolves_every_row():
    protocol = load_protocol("synth")
    assert protocol.preset in PRESETS and len(protocol.rows) >= 10 and len(protocol.seeds) >= 3
    assert len(protocol.selection.multipliers) >= 4 and 1.0 in protocol.selection.multipliers
    assert sum(r.method == "peft" for r in protocol.rows) >= 2
    from mtpeft_bench.running.setup import prepare

    shared = None
    for row in protocol.rows:  # every row's method and options are valid (found before any run)
        cfg = build_config(protocol, RunSpec("row", row.name, row.method, 0, 2.0, "chosen", row.options),
                           Path("results/synth"), {}, {})
        prepare(cfg)
        assert cfg.lr_selection["multiplier"] == 2.0 and cfg.base_lr == 2 * cfg.lr_selection["shared_base_lr"]
        shared = shared or PRESETS[protocol.preset]["base_lr"]
        assert cfg.lr_selection["shared_base_lr"] == shared
        assert cfg.warmup_lr == 2 * PRESETS[protocol.preset]["warmup_lr"]


@pytest.mark.parametrize("change, message", [
    ({"selection": {**TINY["selection"], "multipliers": [2, 4]}}, "must include 1"),
    ({"selection": {**TINY["selection"], "reference": "lora"}}, "selection.reference names row 'lora'"),
    ({"rows": [{"name": "full", "method": "full"}, {"name": "full", "method": "bitfit"}]}, "each name once"),
    ({"extras": [{"row": "nope", "tag": "x", "rate": "default"}]}, "extras[0] must name a row"),
    ({"seeds": "0"}, "'seeds' has the wrong type"),
    ({"seeds": [0, 0]}, "seeds must be a list of distinct integers"),
    ({"close_rows": {"seeds": [0, 3]}}, "close_rows.seeds must be distinct integers other than the protocol's seeds"),
    ({"close_rows": {"seeds": 3}}, "close_rows: 'seeds' has the wrong type"),
])
def test_bad_protocol_files_are_one_line(change, message):
    with pytest.raises(UserError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_protocol({**TINY, **change}, "tiny.yaml")


def test_unknown_protocol_and_options_the_protocol_fixes(capsys, tmp_path):
    code, _, err = run_cli(["sweep", "--protocol", "synht", "--plan"], capsys)
    assert code == 2 and "unknown protocol 'synht'" in one_error_line(err) and "synth" in err
    code, _, err = run_cli(["sweep", "--protocol", "synth", "--method", "full", "--seeds", "0", "--plan"], capsys)
    assert code == 2 and "leave out --method, --seeds" in one_error_line(err)
    code, _, err = run_cli(["sweep", "--protocol", "synth", "--set", "epochs=1", "--plan"], capsys)
    assert code == 2 and "--set epochs=... would change the protocol's runs" in one_error_line(err)
    code, _, err = run_cli(["sweep", "--protocol", "synth", "--print-commands"], capsys)
    assert code == 2 and "--print-commands cannot print a protocol's runs ahead" in one_error_line(err)
    code, _, err = run_cli(["sweep", "--plan"], capsys)
    assert code == 2 and "add --protocol NAME" in one_error_line(err)


# -- the selection rule -------------------------------------------------------------------------

def test_choose_by_hand():
    grid = [0.5, 1, 2, 4]
    assert choose(grid, {0.5: 1.0, 1: 3.0}, 3).todo == [2, 4]  # not all scored yet
    inner = choose(grid, {0.5: 1.0, 1: 3.0, 2: 2.0, 4: -math.inf}, 3)
    assert (inner.status, inner.chosen, inner.at_edge, inner.grid) == ("chosen", 1, False, grid)
    tie = choose(grid, {0.5: 1.0, 1: 3.0, 2: 3.0, 4: 0.0}, 3)
    assert tie.chosen == 1  # equal scores: the smaller rate
    top = choose(grid, {0.5: 0.0, 1: 1.0, 2: 2.0, 4: 3.0}, 3)
    assert top.status == "pending" and top.todo == [8] and top.grid == [0.5, 1, 2, 4, 8]
    settled = choose(grid, {0.5: 0.0, 1: 1.0, 2: 2.0, 4: 3.0, 8: 2.5}, 3)
    assert settled.chosen == 4 and not settled.at_edge
    bottom = choose(grid, {0.5: 3.0, 1: 1.0, 2: 0.0, 4: -1.0}, 3)
    assert bottom.todo == [0.25]
    capped = choose(grid, {0.5: 0.0, 1: 1.0, 2: 2.0, 4: 3.0}, 0)
    assert capped.chosen == 4 and capped.at_edge
    assert choose(grid, dict.fromkeys(grid, -math.inf), 3).status == "failed"


def test_holdout_score_is_delta_m_against_the_reference():
    from helpers.records import record

    ref = record("full", ["semseg", "depth"], [50.0, 0.5])
    run = record("lora", ["semseg", "depth"], [55.0, 0.4])
    # by hand: semseg +10 %, depth (lower is better) +20 % -> mean +15 %
    assert holdout_score(run, ref) == pytest.approx(15.0)
    assert holdout_score(record("lora", ["semseg", "depth"], [float("nan"), 0.4]), ref) == -math.inf
    assert SPECS["depth"]["metrics"]["rmse"]["higher_is_better"] is False


# -- the sweep, with a stand-in for training ----------------------------------------------------

@pytest.fixture
def fake_training(monkeypatch):
    """Replace training by writing a completed record at once; returns the configurations it was
    asked to run. Every primary metric is ``ran.metric(cfg, tasks, task)``: 1.0 unless a test sets
    it (the selection's scorer below reads only ``lr_selection``)."""
    from mtpeft_bench.results import write_record
    from mtpeft_bench.running import pipeline
    from mtpeft_bench.running.setup import prepare, run_hash

    class Ran(list):
        metric = staticmethod(lambda cfg, tasks, task: 1.0)

    ran = Ran()

    def fake_run(cfg, resume=None):
        resolved = prepare(cfg)
        ran.append(cfg)
        record = {"schema_version": 1, "run_id": f"r{len(ran):03d}", "status": "completed", "created": f"{len(ran):03d}",
                  "method": cfg.method, "dataset": cfg.dataset, "tasks": resolved.tasks, "seed": cfg.seed,
                  "preset": cfg.preset, "tag": cfg.tag, "config_hash": run_hash(cfg, resolved),
                  "eval_split": resolved.dataset.eval_split, "lr_selection": cfg.lr_selection,
                  "config": cfg.to_dict(), "task_specs": {t: SPECS[t] for t in resolved.tasks},
                  "metrics": {t: {SPECS[t]["primary"]: ran.metric(cfg, resolved.tasks, t)} for t in resolved.tasks},
                  "wall_time_s": 60.0}
        write_record(Path(cfg.out), record)
        return pipeline.RunResult(record, None, [], None, "completed")

    monkeypatch.setattr(pipeline, "run", fake_run)
    return ran


def peaked_at(best):
    """A scorer whose best multiplier is ``best`` (by the run's own provenance, not its metrics)."""
    return lambda rec, ref: -abs(math.log2(rec["lr_selection"]["multiplier"] / best))


def test_protocol_sweep_extends_plans_and_skips_what_exists(tmp_path, fake_training, capsys):
    from mtpeft_bench.running.protocol_report import plan_counts
    from mtpeft_bench.running.protocol_sweep import ProtocolSweep

    protocol = load_protocol(str(write_protocol(tmp_path, selection={**TINY["selection"], "max_extensions": 2})))
    out = tmp_path / "results"
    sweep = ProtocolSweep(protocol, out, score=peaked_at(4))
    before = plan_counts(sweep)
    # 2 rows × 2 rates; phase 2: only the default-rate extra is ready, 2 rows + 2 baselines wait
    assert (before["selection"], before["selection_to_run"], before["extension_room"]) == (4, 4, 4)
    assert (before["extras"], before["waiting"], before["to_run"]) == (1, 4, 9)
    outcome = sweep.run(lambda line: None)
    assert not outcome.failed and not outcome.pending
    realised = yaml.safe_load((out / "protocol.yaml").read_text())
    for row in ("full", "decoder_only"):  # best at the edge ×2, so ×4 was added; again, so ×8: ×4 is inside
        assert [c["multiplier"] for c in realised["rows"][row]["grid"]] == [1, 2, 4, 8]
        assert (realised["rows"][row]["chosen_multiplier"], realised["rows"][row]["at_edge"]) == (4, False)
        assert realised["rows"][row]["base_lr"] == pytest.approx(4 * PRESETS["smoke"]["base_lr"])
    assert realised["complete"] and realised["baselines"]["tasks"] == ["semseg", "depth"]
    selection = [c for c in fake_training if c.lr_selection["rule"] == "selection"]
    assert len(selection) == 8 and all(c.data_options["holdout"] == 4 for c in selection)
    records = [json.loads(p.read_text()) for p in out.rglob("*.json")]
    assert {r["eval_split"] for r in records if r["lr_selection"]["rule"] == "selection"} == {"holdout"}
    assert {r["eval_split"] for r in records if r["lr_selection"]["rule"] != "selection"} == {"val"}
    # the chosen rate in every leaderboard record: rows and baselines at ×4, the default-rate extra at ×1
    board = [r for r in records if r["lr_selection"]["rule"] != "selection"]
    assert sorted((r["method"], tuple(r["tasks"]), r["tag"], r["lr_selection"]["multiplier"]) for r in board) == [
        ("decoder_only", ("semseg", "depth"), "", 4), ("full", ("depth",), "", 4), ("full", ("semseg",), "", 4),
        ("full", ("semseg", "depth"), "", 4), ("full", ("semseg", "depth"), "default-lr", 1)]
    for r in board:
        assert r["config"]["base_lr"] == pytest.approx(r["lr_selection"]["multiplier"] * PRESETS["smoke"]["base_lr"])
        assert r["lr_selection"]["protocol"] == "tiny" and "grid" in r["lr_selection"]
    # a second invocation runs nothing: every record is found by its configuration hash
    count = len(fake_training)
    assert ProtocolSweep(protocol, out, score=peaked_at(4)).run(lambda line: None).completed == 0
    assert len(fake_training) == count and plan_counts(sweep)["to_run"] == 0


def test_close_pairs_by_hand():
    """Δm over three seeds: t(0.975, 2) = 4.3027, so seeds (0, 0.5, 1) give 0.5 ± 1.2422 and
    (1, 2, 3) give 2 ± 2.4843: 1.5 apart, inside the larger interval, so close; (10, 11, 12) is
    11 ± 2.4843, 9 away from the nearest: close to none. One seed has no interval: close to none."""
    from mtpeft_bench.running.close_rows import close_pairs, decide

    deltas = {"full": [10, 11, 12], "decoder_only": [0, 0.5, 1], "bitfit": [1, 2, 3], "lora": [2.0]}
    assert close_pairs(deltas) == [("decoder_only", "bitfit")]
    decision = decide(deltas)
    assert decision.decided and decision.rows == ("decoder_only", "bitfit")
    assert decision.delta_m["decoder_only"] == pytest.approx((0.5, 4.302653 * 0.5 / math.sqrt(3)), abs=1e-5)
    assert close_pairs({"a": [0, 1, 2], "b": [3.4, 3.5, 3.6]}) == []  # 3.5 − 1 > 2.4841
    assert close_pairs({"a": [0, 1, 2], "b": [3.4, 3.45, 3.6]}) == [("a", "b")]  # 3.4833 − 1 ≤ 2.4841


def test_rows_within_one_interval_get_the_extra_seeds_once(tmp_path, fake_training):
    """Seeds 0-2, extra seed 3. Δm per seed is set through the metrics: against baselines mIoU 50
    and rmse 1.0, a row at mIoU 50 + d and rmse 1.0 has Δm ½ (2d % + 0) = d. full 10/11/12,
    decoder_only 0/0.5/1, bitfit 1/2/3: decoder_only and bitfit are close (test above), and only
    they run seed 3."""
    from mtpeft_bench.running.protocol_report import plan_counts, plan_lines
    from mtpeft_bench.running.protocol_sweep import ProtocolSweep

    deltas = {"full": [10, 11, 12, 13], "decoder_only": [0, 0.5, 1, 1.5], "bitfit": [1, 2, 3, 4]}

    def metric(cfg, tasks, task):
        if len(tasks) == 1 or cfg.lr_selection["rule"] == "selection":
            return 50.0 if task == "semseg" else 1.0  # the baselines (and the selection, scored by rate)
        return 50.0 + deltas[cfg.method][cfg.seed] if task == "semseg" else 1.0

    fake_training.metric = metric
    protocol = load_protocol(str(write_protocol(
        tmp_path, seeds=[0, 1, 2], close_rows={"seeds": [3]}, extras=[],
        rows=[{"name": n, "method": n} for n in ("full", "decoder_only", "bitfit")])))
    out = tmp_path / "results"
    sweep = ProtocolSweep(protocol, out, score=peaked_at(1))
    assert plan_counts(sweep)["close_room"] == 3
    assert any("seeds 3 for rows within one 95 % interval of another: up to 3 runs" in line
               for line in plan_lines(sweep))
    outcome = sweep.run(lambda line: None)
    assert not outcome.failed
    realised = yaml.safe_load((out / "protocol.yaml").read_text())["close_rows"]
    assert realised["decided"] and realised["rows"] == ["decoder_only", "bitfit"]
    assert realised["pairs"] == [["decoder_only", "bitfit"]]
    assert realised["delta_m"]["full"] == {"mean": 11.0, "ci95": pytest.approx(2.4841, abs=1e-3)}
    records = [json.loads(p.read_text()) for p in out.glob("synth/*/*.json")]
    extra = sorted((r["method"], r["lr_selection"]["close_to"]) for r in records if r["seed"] == 3)
    assert extra == [("bitfit", ["decoder_only"]), ("decoder_only", ["bitfit"])]
    # the decision stands on seeds 0-2 alone: a second invocation runs nothing
    count = len(fake_training)
    assert ProtocolSweep(protocol, out, score=peaked_at(1)).run(lambda line: None).completed == 0
    assert len(fake_training) == count
    assert any(line.endswith("another: decoder_only, bitfit") for line in plan_lines(sweep))


# -- end to end, with real (tiny) training -------------------------------------------------------

def test_tiny_protocol_end_to_end(tmp_path, capsys, monkeypatch, one_thread):
    """Two rows, two rates, one seed: the selection trains on 8 images and scores on the 4 held out
    (val is never built for it), every row and baseline shares the protocol's baselines for Δm, and a
    second invocation trains nothing."""
    from mtpeft_bench.tasks.synth.dataset import SynthDataset

    built = []
    original = SynthDataset.build

    def spy(self, split, *args, **kwargs):
        dataset = original(self, split, *args, **kwargs)
        built.append((self.config.holdout, split, len(dataset)))
        return dataset

    monkeypatch.setattr(SynthDataset, "build", spy)
    protocol, out = write_protocol(tmp_path), tmp_path / "results" / "tiny"
    command = ["sweep", "--protocol", str(protocol), "--out", str(out), "--no-progress"]
    code, _, err = run_cli([*command, "--plan"], capsys)
    assert code == 0 and "phase 1 (rate selection): 4 runs: 0 completed, 0 diverged, 4 to run" in err
    assert not out.exists()  # the plan writes nothing
    code, _, err = run_cli(command, capsys)
    assert code == 0, err
    realised = yaml.safe_load((out / "protocol.yaml").read_text())
    chosen = {row: realised["rows"][row]["chosen_multiplier"] for row in ("full", "decoder_only")}
    assert set(chosen.values()) <= {1, 2} and realised["complete"]
    assert realised["rows"]["full"]["grid"][0]["score"] == 0.0  # the reference scored against itself
    held = [b for b in built if b[0] == 4]
    assert sorted(held) == [(4, "holdout", 4)] * 4 + [(4, "train", 8)] * 4  # 4 selection runs, never val
    records = [json.loads(p.read_text()) for p in out.rglob("*.json")]
    selection = [r for r in records if r["lr_selection"]["rule"] == "selection"]
    assert len(selection) == 4 and all(r["eval_split"] == "holdout" for r in selection)
    board = [r for r in records if r["lr_selection"]["rule"] != "selection"]
    for r in board:
        row = r["lr_selection"]["row"]
        expected = 1 if r["tag"] == "default-lr" else chosen[row]
        assert r["eval_split"] == "val" and r["lr_selection"]["multiplier"] == expected
    rows = [r for r in board if len(r["tasks"]) == 2]
    assert {r["method"] for r in rows} == {"full", "decoder_only"}
    # every row finds the protocol's single-task baselines (run at full's chosen rate) for Δm
    assert all(r["delta_m"]["baseline"]["source"] == "suite" for r in rows if r["tag"] == "")
    code, _, err = run_cli([*command, "--plan"], capsys)
    assert code == 0 and "4 completed, 0 diverged, 0 to run" in err and "estimate: 0 runs" in err


def test_lr_selection_is_stored_but_not_identity():
    """A record's configuration, lr_selection included, resolves again (as reproducing a run does),
    and the provenance does not change what the run is."""
    from mtpeft_bench.config import config_hash, resolve

    provenance = {"protocol": "synth", "row": "lora-r8", "rule": "chosen", "multiplier": 2.0}
    with_it = resolve("smoke", {}, {"lr_selection": provenance})
    assert with_it.lr_selection == provenance
    assert config_hash(with_it) == config_hash(resolve("smoke", {}, {}))
    with pytest.raises(UserError, match="lr_selection must be a mapping"):
        resolve("smoke", {}, {"lr_selection": "x"})
