"""The method hook ``after_step`` and AdaLoRA (``peft`` with ``peft_type=ADALORA``) on synth: the hook
gets every optimizer step with the run's total, and the rank budget schedule prunes the ranks the
result records."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest

from helpers import run_cli
from mtpeft_bench.errors import UserError
from mtpeft_bench.methods.base import Method, MethodConfig
from mtpeft_bench.model.encoder import MultiTaskSwinEncoder


pytestmark = pytest.mark.usefixtures("one_thread")

NUM_TRAIN, BATCH, EPOCHS = 8, 4, 2
RUN = ["run", "--dataset", "synth", "--preset", "smoke", "--tasks", "semseg,depth", "--set", f"data.num_train={NUM_TRAIN}",
       "--set", "data.num_val=4", "--batch-size", str(BATCH), "--epochs", str(EPOCHS), "--no-progress",
       "--set", "measure_repeats=0"]


class RecordingEncoder(MultiTaskSwinEncoder):
    calls: list[tuple[int, int]] = []

    def after_step(self, global_step, total_steps):
        RecordingEncoder.calls.append((global_step, total_steps))


@dataclass(frozen=True)
class NoOptions(MethodConfig):
    """No options."""


class StepRecorder(Method):
    """Full fine-tuning whose encoder records every call of its after-step hook."""

    Config = NoOptions

    def build(self, backbone, tasks, cfg):
        return RecordingEncoder(backbone, tasks)


@pytest.fixture
def step_recorder():
    from mtpeft_bench.registry import method_registry

    method_registry.register("step_recorder")(StepRecorder)
    RecordingEncoder.calls = []
    yield
    method_registry._classes.pop("step_recorder", None)
    method_registry._runtime.pop("step_recorder", None)


def _record(out):
    (path,) = list(out.rglob("*.json"))
    return json.loads(path.read_text())


def test_the_hook_gets_every_optimizer_step_and_the_runs_total(step_recorder, tmp_path, capsys):
    code, _, err = run_cli([*RUN, "--method", "step_recorder", "--out", str(tmp_path / "r")], capsys)
    assert code == 0, err
    total = (NUM_TRAIN // BATCH) * EPOCHS  # drop_last batches per epoch × epochs
    assert RecordingEncoder.calls == [(step, total) for step in range(1, total + 1)]


def test_adalora_prunes_ranks_and_records_the_final_allocation(tmp_path, capsys):
    init_r, target_r = 4, 1
    code, _, err = run_cli([*RUN, "--method", "peft", "--out", str(tmp_path / "r"), "--set", "method.peft_type=ADALORA",
                            "--set", f"method.init_r={init_r}", "--set", f"method.target_r={target_r}",
                            "--set", "method.tinit=0", "--set", "method.tfinal=0", "--set", "method.deltaT=1"], capsys)
    assert code == 0, err
    info = _record(tmp_path / "r")["method_info"]["adalora"]
    total = (NUM_TRAIN // BATCH) * EPOCHS
    assert info["total_step"] == total
    ranks = info["ranks"]
    # every adapted block linear (qkv, proj, fc1, fc2 of the micro Swin's blocks) is listed
    assert ranks and all(name.endswith(("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")) for name in ranks)
    # AdaLoRA's final budget is target_r triplets per module on average (ties at the threshold prune more)
    assert 0 < sum(ranks.values()) <= target_r * len(ranks) < init_r * len(ranks)
    assert info["total_rank"] == sum(ranks.values())
    assert max(ranks.values()) <= init_r


def test_adalora_total_step_is_the_runs_own():
    from mtpeft_bench.registry import get_method
    from mtpeft_bench.tasks.base import config_from_mapping

    with pytest.raises(UserError) as info:
        config_from_mapping(get_method("peft").Config, {"peft_type": "ADALORA", "total_step": 10}, "peft method")
    assert "total_step of peft type ADALORA is set from the run" in str(info.value)


def test_adalora_schedule_that_does_not_fit_the_run_is_one_line(tmp_path, capsys):
    code, _, err = run_cli([*RUN, "--method", "peft", "--out", str(tmp_path / "r"), "--set", "method.peft_type=ADALORA",
                            "--set", "method.tinit=3", "--set", "method.tfinal=2"], capsys)
    assert code == 2 and "AdaLoRA's schedule does not fit this run's 4 optimizer steps" in err
