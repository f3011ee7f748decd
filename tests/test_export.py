"""``mtbench export`` and ``mtbench eval --checkpoint``: a trained run exported (model, merged weights,
peft adapter, card; no optimizer state), reloaded and evaluated gives the metrics of the run."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch

from helpers import micro_backbone, one_error_line, run_cli
from mtpeft_bench.results import stored_path


pytestmark = pytest.mark.usefixtures("one_thread")

RUN = ["run", "--dataset", "synth", "--preset", "smoke", "--tasks", "semseg,depth", "--set", "data.num_train=8",
       "--set", "data.num_val=4", "--batch-size", "4", "--epochs", "1", "--no-progress", "--set", "measure_repeats=0"]


def _evaluated(out, capsys, *args):
    code, stdout, err = run_cli(["eval", *args, "--out", str(out), "--no-progress"], capsys)
    assert code == 0, err
    path = stdout.strip().splitlines()[-1].removeprefix("wrote ")
    return json.loads(open(path).read())


def _close(a, b, rel=1e-5):
    assert a.keys() == b.keys()
    for task in a:
        assert a[task] == pytest.approx(b[task], rel=rel, abs=1e-6), task


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    """One trained LoRA run shared by the tests of this module (training is the slow part)."""
    from mtpeft_bench.cli import main

    tmp = tmp_path_factory.mktemp("lora")
    out = tmp / "results"
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with pytest.raises(SystemExit) as info:
            main([*RUN, "--method", "lora", "--out", str(out)])
    finally:
        torch.set_num_threads(before)
    assert info.value.code == 0
    (path,) = list(out.rglob("*.json"))
    record = json.loads(path.read_text())
    # the record stores its run folder relative to its results folder: the tests use the folder itself
    record["execution"]["run_dir"] = str(stored_path({**record, "_path": str(path)}, record["execution"]["run_dir"]))
    return tmp, record, path


def test_lora_export_reload_and_eval_give_the_runs_metrics(lora_run, capsys):
    from safetensors import safe_open
    from safetensors.torch import load_file

    tmp, record, record_path = lora_run
    dest = tmp / "exported"
    code, out, err = run_cli(["export", str(record_path), "--output", str(dest)], capsys)
    assert code == 0, err
    card = json.loads((dest / "card.json").read_text())
    assert card["run_id"] == record["run_id"] and card["metrics"] == record["metrics"]
    for name, entry in card["files"].items():
        assert hashlib.sha256((dest / name).read_bytes()).hexdigest() == entry["sha256"]
    model = load_file(str(dest / "model.safetensors"))
    assert not [k for k in model if k.startswith(("optim/", "rng/"))]
    with safe_open(str(dest / "model.safetensors"), "pt") as handle:
        assert "optimizer" not in (handle.metadata() or {}).get("mtbench", "")
    # the run's checkpoint holds the same model tensors (and the optimizer state, which the export drops)
    checkpoint = load_file(record["execution"]["run_dir"] + "/last.safetensors")
    assert any(k.startswith("optim/") for k in checkpoint)
    assert all(torch.equal(v, checkpoint[f"model/{k}"]) for k, v in model.items())

    # reload and evaluate: the export, the run's own checkpoint, and the merged weights in a stock Swin
    evaluated = _evaluated(tmp / "evals", capsys, "--checkpoint", str(dest), "--dataset", "synth")
    assert evaluated["status"] == "evaluated" and evaluated["evaluation"]["source_run_id"] == record["run_id"]
    _close(evaluated["metrics"], record["metrics"])
    from_checkpoint = _evaluated(tmp / "evals", capsys, "--checkpoint", record["execution"]["run_dir"])
    _close(from_checkpoint["metrics"], record["metrics"])
    assert card["files"]["merged.safetensors"]["layout"] == "plain"
    merged = _evaluated(tmp / "evals", capsys, "--checkpoint", str(dest), "--form", "merged")
    _close(merged["metrics"], record["metrics"], rel=1e-3)


def test_merged_lora_weights_compute_the_trained_models_outputs(lora_run, capsys):
    from safetensors.torch import load_file

    from mtpeft_bench.running.saved import build_untrained, find_saved, load_trained

    tmp, record, record_path = lora_run
    dest = tmp / "exported2"
    assert run_cli(["export", str(record_path), "--output", str(dest)], capsys)[0] == 0
    trained, _ = load_trained(find_saved(str(dest), tmp))
    plain, _ = build_untrained(trained_config := json.loads((dest / "card.json").read_text())["config"], plain=True)
    plain.load_state_dict(load_file(str(dest / "merged.safetensors")), strict=True)
    assert not any("lora" in name for name in plain.state_dict())
    images = torch.randn(2, 3, *trained_config["image_size"], generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = trained.eval()(images), plain.eval()(images)
    for task in a:
        torch.testing.assert_close(b[task], a[task], rtol=1e-4, atol=1e-4)
    # the merge changed the weights (a LoRA update that is exactly zero would make this test vacuous)
    plain_trained = {k: v for k, v in trained.state_dict().items() if k.endswith("qkv.base_layer.weight")}
    merged_qkv = load_file(str(dest / "merged.safetensors"))
    assert any(not torch.equal(v, merged_qkv[k.replace(".base_layer", "")]) for k, v in plain_trained.items())


def test_the_peft_adapter_loads_with_peft_itself(lora_run, capsys):
    from peft import PeftModel
    from safetensors.torch import load_file

    tmp, record, record_path = lora_run
    dest = tmp / "exported3"
    assert run_cli(["export", str(record_path), "--output", str(dest)], capsys)[0] == 0
    assert (dest / "adapter" / "adapter_config.json").is_file()
    image_size = tuple(record["config"]["image_size"])
    loaded = PeftModel.from_pretrained(micro_backbone(image_size), str(dest / "adapter"))
    ours = {k.removeprefix("encoder.backbone."): v for k, v in load_file(str(dest / "model.safetensors")).items()
            if ".lora_" in k}
    theirs = {k.removeprefix("base_model.model."): v for k, v in loaded.state_dict().items() if ".lora_" in k}
    assert ours.keys() == theirs.keys() and ours
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_ditask_rebuilt_weights_are_what_its_layers_compute():
    from mtpeft_bench.methods.ditask.adapter import DiTASKLinear, DiTASKStream
    from mtpeft_bench.model.multitask import build_model
    from mtpeft_bench.registry import get_method
    from mtpeft_bench.tasks.base import config_from_mapping

    torch.manual_seed(0)
    method = get_method("ditask")
    cfg = config_from_mapping(method.Config, {"kernel": "torch"}, "ditask method")
    model, _ = build_model(method(), cfg, micro_backbone(), {"a": 3, "b": 1})
    weights = model.encoder.rebuilt_weights()
    linears = {name: m for name, m in model.encoder.named_modules() if isinstance(m, DiTASKLinear)}
    streams = [m for m in model.encoder.modules() if isinstance(m, DiTASKStream)]
    assert streams and len([k for k in weights if ".tasks." in k]) == 2 * len(streams)
    bank = model.encoder.ditask
    with torch.no_grad():
        for name, layer in linears.items():
            x_in = torch.randn(5, layer.in_features)
            assert not torch.allclose(weights[f"{name}.weight"], layer.base.weight)  # θ ≠ 0 warps it
            torch.testing.assert_close(torch.nn.functional.linear(x_in, weights[f"{name}.weight"], layer.base.bias),
                                       bank.apply(layer, x_in, None), rtol=1e-4, atol=1e-5)
            for task in ("a", "b"):
                key = f"{name}.tasks.{task}.weight"
                if key in weights:
                    torch.testing.assert_close(torch.nn.functional.linear(x_in, weights[key], layer.base.bias),
                                               bank.apply(layer, x_in, task), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("peft_type", ["LOHA", "IA3"])
def test_a_peft_tuner_merges_into_a_stock_swin(peft_type):
    from mtpeft_bench.model.encoder import MultiTaskSwinEncoder
    from mtpeft_bench.model.multitask import MultiTaskModel, build_model
    from mtpeft_bench.registry import get_method
    from mtpeft_bench.running.export import merge_peft_layers
    from mtpeft_bench.tasks.base import config_from_mapping

    torch.manual_seed(0)
    cfg = config_from_mapping(get_method("peft").Config, {"peft_type": peft_type}, "peft method")
    model, _ = build_model(get_method("peft")(), cfg, micro_backbone(), {"a": 3})
    with torch.no_grad():  # a trained-looking update (peft starts at the identity)
        for name, param in model.named_parameters():
            if param.requires_grad and name.startswith("encoder.") and ("hada_" in name or "ia3_" in name):
                param.add_(0.1 * torch.randn_like(param))
    merged = merge_peft_layers(model)
    plain = MultiTaskModel(MultiTaskSwinEncoder(micro_backbone(), ["a"]), {"a": 3})
    plain.load_state_dict(merged.state_dict(), strict=True)  # the layout of a stock Swin
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(plain.eval()(images)["a"], model.eval()(images)["a"], rtol=1e-4, atol=1e-4)


def test_export_and_eval_refuse_bad_input_in_one_line(lora_run, capsys, tmp_path):
    tmp, record, record_path = lora_run
    code, _, err = run_cli(["export", "no-such-run", "--runs-dir", str(tmp_path)], capsys)
    assert code == 2 and "no run, export or checkpoint 'no-such-run'" in one_error_line(err)
    code, _, err = run_cli(["eval", "--checkpoint", record["execution"]["run_dir"], "--form", "merged",
                            "--out", str(tmp_path)], capsys)
    assert code == 2 and "--form merged needs an export" in one_error_line(err)
    code, _, err = run_cli(["eval", "--checkpoint", record["execution"]["run_dir"], "--split", "test",
                            "--out", str(tmp_path)], capsys)
    assert code == 2 and "has no split 'test'" in one_error_line(err)


def _stored(method, **options):
    from mtpeft_bench.running.setup import prepare, resolve_config

    sets = {f"method.{k}": v for k, v in options.items()}
    return prepare(resolve_config("smoke", {"method": method, "dataset": "synth", "tasks": ("semseg", "depth")},
                                  sets)).stored_config()


@pytest.mark.parametrize("method, options, layout", [
    ("bitfit", {}, "plain"),               # nothing to fold: a stock Swin already
    ("adapter", {}, None),                 # bottleneck layers a stock Swin does not have
    ("ditask", {"kernel": "torch"}, "per_task_weights"),
])
def test_which_methods_get_merged_weights(method, options, layout):
    from mtpeft_bench.running.export import merged_form
    from mtpeft_bench.running.saved import build_untrained

    stored = _stored(method, **options)
    model, _ = build_untrained(stored)
    tensors, got, note = merged_form(model.eval(), stored)
    assert (got or None) == layout, note
    if layout is None:
        assert tensors is None and "do not fold into a stock Swin" in note
    elif layout == "plain":
        plain, _ = build_untrained(stored, plain=True)
        plain.load_state_dict(tensors, strict=True)
    else:
        assert any(".tasks.semseg.weight" in k for k in tensors) and any(k.startswith("heads.") for k in tensors)
