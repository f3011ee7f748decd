"""Several processes: sharding of the data, reduction of the metrics, BatchNorm over the global
batch, DDP with unused parameters (2 gloo processes on the CPU), and (slow) ``torchrun`` with 2
processes giving the metrics of 1 process on the same data and global batch."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from mtpeft_bench.train.distributed import PerSampleSeed, ShardSampler, mix_seed


REPO = Path(__file__).resolve().parent.parent


# -- samplers and seeding (one process) -------------------------------------------------------------

@pytest.mark.parametrize("size, world, batch", [(22, 2, 3), (16, 2, 4), (25, 3, 2), (9, 1, 4)])
def test_training_shards_form_the_single_process_global_batches(size, world, batch):
    single = ShardSampler(size, 0, 1, shuffle=True, seed=3)
    shards = [ShardSampler(size, r, world, shuffle=True, seed=3) for r in range(world)]
    for epoch in (1, 2):
        for s in (single, *shards):
            s.set_epoch(epoch)
        order = list(single)
        per_rank = [list(s) for s in shards]
        assert all(len(p) == len(s) == size // world for p, s in zip(per_rank, shards))
        steps = min(len(p) for p in per_rank) // batch
        for k in range(steps):
            together = [i for p in per_rank for i in p[k * batch:(k + 1) * batch]]
            # Global step k of `world` processes with batch b = step k of one process with batch b·world.
            assert sorted(together) == sorted(order[k * batch * world:(k + 1) * batch * world])
        seen = [i for p in per_rank for i in p]
        assert len(seen) == len(set(seen)) == size - size % world
    single.set_epoch(1)
    first = list(single)
    single.set_epoch(2)
    assert list(single) != first, "a new permutation every epoch"
    other_seed = ShardSampler(size, 0, 1, shuffle=True, seed=4)
    other_seed.set_epoch(1)
    assert list(other_seed) != first


@pytest.mark.parametrize("size, world", [(12, 2), (11, 2), (7, 3), (2, 3), (5, 1)])
def test_evaluation_shards_cover_every_sample_exactly_once(size, world):
    shards = [list(ShardSampler(size, r, world, shuffle=False)) for r in range(world)]
    assert [i for s in shards for i in s] == list(range(size))  # contiguous, in order, no padding
    assert [len(ShardSampler(size, r, world, shuffle=False)) for r in range(world)] == [len(s) for s in shards]


def test_skip_starts_inside_the_epoch_once():
    sampler = ShardSampler(20, 1, 2, shuffle=True, seed=0)
    sampler.set_epoch(3)
    whole = list(sampler)
    sampler.set_epoch(3, skip=4)
    assert list(sampler) == whole[4:]
    assert list(sampler) == whole  # the skip applies to one iteration only


class _RandomItems(torch.utils.data.Dataset):
    def __len__(self):
        return 6

    def __getitem__(self, index):
        return torch.rand(3)  # like a random flip: draws from torch's global generator


def test_augmentation_depends_only_on_seed_epoch_and_index():
    data = PerSampleSeed(_RandomItems(), seed=1)
    data.set_epoch(2)
    torch.manual_seed(0)
    forward = [data[i] for i in range(6)]
    after = torch.rand(1)
    torch.manual_seed(0)
    backward = [data[i] for i in reversed(range(6))][::-1]
    assert torch.equal(torch.rand(1), after), "the global generator is not consumed"
    assert all(torch.equal(a, b) for a, b in zip(forward, backward))
    assert not torch.equal(forward[0], forward[1])
    data.set_epoch(3)
    assert not torch.equal(data[0], forward[0])
    assert mix_seed(0, 1) != mix_seed(1, 0)


def test_lr_follows_the_global_batch():
    from mtpeft_bench.config import RunConfig

    cfg = RunConfig(batch_size=16, lr_reference_batch=512)
    assert cfg.lr_scale(2) == cfg.lr_scale() * 2 == 32 / 512


# -- two gloo processes -------------------------------------------------------------------------------

WORKER = textwrap.dedent('''
    import json, sys
    import torch
    from torch import nn
    import torch.distributed as dist
    from safetensors.torch import load_file

    from mtpeft_bench.metrics import build_meter
    from mtpeft_bench.running.setup import pick_device
    from mtpeft_bench.train import distributed, evaluate

    torch.set_num_threads(1)
    args = json.loads(sys.argv[1])
    ctx, device = distributed.setup("cpu", pick_device)
    out = {"world_size": ctx.world_size, "backend": ctx.backend}

    # (a) evaluation of the same weights on shards, meters all-reduced before compute()
    sys.path.insert(0, args["tests"])
    from test_distributed import eval_model_and_data
    for num_val in args["num_val"]:
        model, specs, val = eval_model_and_data(args["cache"], num_val)
        model.load_state_dict(load_file(args["weights"]))
        loader = torch.utils.data.DataLoader(val, batch_size=3, sampler=distributed.sampler_factory(ctx, 0)(val, False))
        metrics, _ = evaluate(model, loader, specs, device, progress=False, reduce=lambda m: m.all_reduce())
        meters = {s.name: build_meter(s) for s in specs}
        model.eval()
        with torch.no_grad():
            for batch in loader:
                outputs = model(batch["image"])
                for name, meter in meters.items():
                    meter.update(outputs[name], batch[name])
        for meter in meters.values():
            meter.all_reduce()
        out[str(num_val)] = {
            "metrics": metrics, "local_samples": len(loader.sampler),
            "counts": {"semseg_pixels": int(meters["semseg"].states["confusion"].sum()),
                       "sal_images": int(meters["sal"].states["n_images"])}}

    # (b) BatchNorm over the global batch: each rank holds half of one batch
    g = torch.Generator().manual_seed(0)
    x_full = torch.randn(8, 5, 4, 4, generator=g)
    w_full = torch.randn(8, 5, 4, 4, generator=g)
    half = slice(4 * ctx.rank, 4 * ctx.rank + 4)
    bn = distributed.convert_sync_bn(nn.Sequential(nn.BatchNorm2d(5)), device)[0]
    with torch.no_grad():
        bn.weight.copy_(torch.randn(5, generator=g))
        bn.bias.copy_(torch.randn(5, generator=g))
    x = x_full[half].clone().requires_grad_(True)
    y = bn(x)
    (y * w_full[half]).sum().backward()
    grads = torch.cat([bn.weight.grad, bn.bias.grad])
    dist.all_reduce(grads)
    gathered = [None] * ctx.world_size
    dist.all_gather_object(gathered, [y.detach(), x.grad])
    out["bn"] = {"type": type(bn).__name__,
                 "y": torch.cat([p[0] for p in gathered]).tolist(), "x_grad": torch.cat([p[1] for p in gathered]).tolist(),
                 "param_grads": grads.tolist(), "running_mean": bn.running_mean.tolist(),
                 "running_var": bn.running_var.tolist()}

    # (c) DDP with a parameter that gets no gradient: read from the encoder's capability attribute
    class Encoder(nn.Module):
        def __init__(self, unused):
            super().__init__()
            self.used = nn.Linear(4, 4)
            self.spare = nn.Linear(4, 4)  # e.g. a task branch not used in this step
            self.find_unused_parameters = unused
        def forward(self, x):
            return self.used(x)

    class Model(nn.Module):
        def __init__(self, unused):
            super().__init__()
            self.encoder = Encoder(unused)
        def forward(self, x):
            return self.encoder(x)

    for unused in (True, False):
        torch.manual_seed(0)
        wrapped = distributed.wrap_model(Model(unused), ctx, device)
        optimizer = torch.optim.SGD(wrapped.parameters(), lr=0.1)
        try:
            for _ in range(3):
                optimizer.zero_grad()
                wrapped(torch.randn(2, 4)).sum().backward()
                optimizer.step()
            out[f"unused_{unused}"] = "ok"
        except RuntimeError as exc:
            out[f"unused_{unused}"] = str(exc).splitlines()[0]
    if ctx.is_main:
        with open(args["out"], "w") as handle:
            json.dump(out, handle)
''')


def eval_model_and_data(cache, num_val):
    """A micro-Swin model for all six synth tasks and the synth validation split (64 px)."""
    os.environ["MTBENCH_CACHE"] = cache
    from mtpeft_bench.model.backbone import create_backbone
    from mtpeft_bench.model.multitask import build_model, task_outputs_of
    from mtpeft_bench.registry import get_dataset, get_method
    from mtpeft_bench.tasks.base import config_from_mapping

    cls = get_dataset("synth")
    plugin = cls(config_from_mapping(cls.Config, {"num_train": 2, "num_val": num_val}, "synth"))
    specs = plugin.task_specs(None)
    method = get_method("full")
    backbone, _ = create_backbone("swin_micro", (64, 64), "none", 0.0)
    model, _ = build_model(method(), method.Config(), backbone, task_outputs_of(specs))
    val = plugin.build("val", specs, (64, 64), plugin.resolve_root(None), train=False)
    return model.eval(), specs, val


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(worker: Path, args: dict, world: int = 2, timeout: int = 300) -> None:
    port = free_port()
    procs = []
    for rank in range(world):
        env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world),
               "LOCAL_WORLD_SIZE": str(world), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
               "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
        procs.append(subprocess.Popen([sys.executable, str(worker), json.dumps(args)], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    try:
        outputs = [p.communicate(timeout=timeout)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, text in zip(procs, outputs):
        assert p.returncode == 0, text[-3000:]


def _close(a, b, rel):
    return abs(a - b) <= rel * max(abs(a), abs(b), 1e-30)


def test_two_gloo_processes(tmp_path, cache_dir):
    """(a) Evaluating the same weights on 2 shards and all-reducing the meters gives the numbers of one
    process. With 12 images and per-process batches of 3, every batch is the single process's batch
    (contiguous shards), so the per-batch meter increments are bit-identical; only the order in which
    the float64 sums are added differs (rank sums then their sum), hence a 1e-12 tolerance, and the
    integer states (confusion matrices, counts) are exactly equal. With 11 images the shards hold 5 and
    6 and the batches differ in composition (float32 results of a batched forward may differ in the
    last bits); every sample is still counted exactly once (no padding).
    (b) Cross-rank BatchNorm on two halves equals BatchNorm on the whole batch (outputs, gradients,
    running statistics). (c) DDP trains a model with an unused parameter when the encoder declares
    ``find_unused_parameters``, and fails without it (so the attribute is what makes it work)."""
    from safetensors.torch import save_file

    from mtpeft_bench.train import evaluate

    torch.set_num_threads(1)
    torch.manual_seed(0)
    sizes = (12, 11)
    single = {}
    for num_val in sizes:
        model, specs, val = eval_model_and_data(str(cache_dir), num_val)
        if num_val == sizes[0]:
            weights = {k: v.contiguous() for k, v in model.state_dict().items()}
            save_file(weights, tmp_path / "weights.safetensors")
        model.load_state_dict(weights)
        single[num_val], _ = evaluate(model, torch.utils.data.DataLoader(val, batch_size=3), specs,
                                      torch.device("cpu"), progress=False)

    worker = tmp_path / "worker.py"
    worker.write_text(WORKER)
    args = {"out": str(tmp_path / "out.json"), "weights": str(tmp_path / "weights.safetensors"),
            "cache": str(cache_dir), "num_val": sizes, "tests": str(Path(__file__).parent)}
    launch(worker, args)
    result = json.loads((tmp_path / "out.json").read_text())
    assert result["world_size"] == 2 and result["backend"] == "gloo"

    for num_val in sizes:
        rel = 1e-12 if num_val == 12 else 1e-5
        reduced = result[str(num_val)]
        for task, values in single[num_val].items():
            for name, value in values.items():
                assert _close(value, reduced["metrics"][task][name], rel), (num_val, task, name, value,
                                                                            reduced["metrics"][task][name])
        assert reduced["counts"] == {"semseg_pixels": num_val * 64 * 64, "sal_images": num_val}
        assert reduced["local_samples"] == num_val // 2  # rank 0's contiguous block

    bn_result = result["bn"]
    assert bn_result["type"] == "CrossRankBatchNorm2d"
    g = torch.Generator().manual_seed(0)
    x_full = torch.randn(8, 5, 4, 4, generator=g)
    w_full = torch.randn(8, 5, 4, 4, generator=g)
    bn = torch.nn.BatchNorm2d(5)
    with torch.no_grad():
        bn.weight.copy_(torch.randn(5, generator=g))
        bn.bias.copy_(torch.randn(5, generator=g))
    x = x_full.clone().requires_grad_(True)
    y = bn(x)
    (y * w_full).sum().backward()
    expected = {"y": y.detach(), "x_grad": x.grad, "param_grads": torch.cat([bn.weight.grad, bn.bias.grad]),
                "running_mean": bn.running_mean, "running_var": bn.running_var}
    for key, tensor in expected.items():
        torch.testing.assert_close(torch.tensor(bn_result[key]), tensor, rtol=1e-5, atol=1e-5, msg=key)

    assert result["unused_True"] == "ok"
    assert result["unused_False"] != "ok" and "reduction" in result["unused_False"]


# -- torchrun end to end ------------------------------------------------------------------------------

def _torchrun_args(out: Path, batch: int, extra=()) -> list[str]:
    return ["-m", "mtpeft_bench", "run", "--method", "full", "--preset", "smoke", "--tasks", "semseg,depth,normals,edge",
            "--set", "data.num_train=16", "--set", "data.num_val=6", "--set", "eval_batch_size=3", "--epochs", "2",
            "--batch-size", str(batch), "--no-progress", "--set", "deterministic=true", "--set", "checkpoint_every=0",
            "--out", str(out), *extra]


@pytest.mark.slow
def test_torchrun_one_process_trains_inside_ddp_as_a_plain_process(tmp_path):
    """``torchrun --nproc_per_node 1`` joins a process group of one and trains inside DDP (so the
    DDP path of a GPU machine can be checked with a single GPU); with one process DDP's all-reduce
    is the identity, so the run gives the plain process's losses and metrics."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    plain = subprocess.run([sys.executable, *_torchrun_args(tmp_path / "plain", 4)], env=env, capture_output=True,
                           text=True, timeout=600)
    assert plain.returncode == 0, plain.stderr[-3000:]
    grouped = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1",
                              *_torchrun_args(tmp_path / "grouped", 4)], env=env, capture_output=True, text=True,
                             timeout=600)
    assert grouped.returncode == 0, grouped.stderr[-3000:]
    a = json.loads(next((tmp_path / "plain").rglob("*.json")).read_text())
    b = json.loads(next((tmp_path / "grouped").rglob("*.json")).read_text())
    assert a["execution"]["backend"] is None
    assert b["execution"]["world_size"] == 1 and b["execution"]["backend"] == "gloo"
    assert a["config_hash"] == b["config_hash"]
    for ha, hb in zip(a["history"], b["history"]):
        assert _close(ha["loss"], hb["loss"], 1e-6), (ha["loss"], hb["loss"])
    for task, values in a["metrics"].items():
        for name, value in values.items():
            assert abs(value - b["metrics"][task][name]) <= 1e-5 * max(abs(value), 1.0), (task, name)


@pytest.mark.slow
def test_torchrun_two_processes_match_one_process(tmp_path):
    """``torchrun --nproc_per_node 2`` with batch 2 per process against 1 process with batch 4: the same
    samples at every global step (ShardSampler), the same augmentations (PerSampleSeed), the same LR
    (scaled by the global batch 4) and, with ``sync_bn=true``, BatchNorm over the same 4 samples. The
    tasks are those whose losses are linear in the batch (every synth pixel is valid; saliency's
    balanced BCE is left out, its weight is a per-batch ratio). What remains is float32 summation
    order (DDP sums two half-batch gradients, BatchNorm moments accumulate in float64): the losses
    agree to ~1e-7, and a handful of pixels may cross a metric threshold after 8 AdamW steps
    (measured: at most 2e-3 relative, normals' share below 11.25°). Per-process BatchNorm (the
    reference behaviour) changes the losses by ~1e-2 relative and metrics by up to 28 %: the
    tolerances below separate the two by orders of magnitude."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    one = subprocess.run([sys.executable, *_torchrun_args(tmp_path / "one", 4)], env=env, capture_output=True,
                         text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          *_torchrun_args(tmp_path / "two", 2, ["--set", "sync_bn=true"])], env=env,
                         capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    a = json.loads(next((tmp_path / "one").rglob("*.json")).read_text())
    records = list((tmp_path / "two").rglob("*.json"))
    assert len(records) == 1, "only rank 0 writes the result"
    b = json.loads(records[0].read_text())
    assert b["execution"]["world_size"] == 2 and b["execution"]["backend"] == "gloo" and b["execution"]["sync_bn"]
    assert b["efficiency"]["global_batch_size"] == a["efficiency"]["global_batch_size"] == 4
    assert [h["lr"] for h in b["history"]] == pytest.approx([h["lr"] for h in a["history"]], rel=1e-12)
    assert [h["steps"] for h in b["history"]] == [h["steps"] for h in a["history"]] == [4, 4]
    for ha, hb in zip(a["history"], b["history"]):
        assert _close(ha["loss"], hb["loss"], 1e-5), (ha["loss"], hb["loss"])
        for task in ha["task_losses"]:
            assert _close(ha["task_losses"][task], hb["task_losses"][task], 1e-5)
    for task, values in a["metrics"].items():
        for name, value in values.items():
            assert abs(value - b["metrics"][task][name]) <= 5e-3 * max(abs(value), 1.0), (task, name)
    assert len(list((tmp_path / "runs").iterdir())) == 2


@pytest.mark.slow
def test_torchrun_ctrl_c_then_resume_equals_uninterrupted(tmp_path):
    """SIGINT to torchrun's whole process group (what a terminal's Ctrl-C does): both processes stop at
    the same step, rank 0 saves every process's RNG state and partial-epoch losses, the run is
    cancelled; resuming with 2 processes reproduces the uninterrupted 2-process run exactly."""
    import signal
    import time

    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]

    def args(out):
        return ["-m", "mtpeft_bench", "run", "--method", "full", "--preset", "smoke", "--tasks", "semseg,depth",
                "--set", "data.num_train=16", "--set", "data.num_val=4", "--batch-size", "2", "--epochs", "3",
                "--no-progress", "--set", "deterministic=true", "--out", str(out)]

    ref = subprocess.run([*torchrun, *args(tmp_path / "ref" / "results")], env=env, capture_output=True, text=True,
                         timeout=600)
    assert ref.returncode == 0, ref.stderr[-3000:]
    out = tmp_path / "results"
    proc = subprocess.Popen([*torchrun, *args(out)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    deadline = time.time() + 600
    while not list((tmp_path / "runs").glob("*/last.safetensors")):
        assert proc.poll() is None and time.time() < deadline, proc.stderr.read()[-3000:]
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    assert "cancelled at epoch" in err, err[-3000:]
    folder = next((tmp_path / "runs").iterdir())
    state = json.loads((folder / "run.json").read_text())
    assert state["status"] == "cancelled" and not list(out.rglob("*.json"))

    done = subprocess.run([*torchrun, *args(out), "--resume"], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"resuming run {folder.name} at epoch {state['epoch']}, step {state['step_in_epoch']}" in done.stderr
    a = json.loads(next((tmp_path / "ref").rglob("*.json")).read_text())
    b = json.loads(next(out.rglob("*.json")).read_text())
    assert b["run_id"] == folder.name and b["execution"]["sessions"] == 2
    assert b["metrics"] == a["metrics"]
    assert [h["loss"] for h in b["history"]] == [h["loss"] for h in a["history"]]


def _methods():
    from helpers import load_example_plugin
    from mtpeft_bench.registry import method_registry

    load_example_plugin()
    return sorted(set(method_registry.names()) | {"task_proj"})


@pytest.mark.parametrize("method_name", _methods())
def test_methods_with_parameters_without_gradient_declare_it_for_ddp(method_name):
    """DDP (find_unused_parameters=False) fails at the second step if a trainable parameter got no
    gradient in the first. Every method whose training step leaves some trainable parameter without
    a gradient must declare ``find_unused_parameters = True`` on its encoder (methods/base.py), which
    distributed.wrap_model passes to DDP. Checked on all tasks of synth, in one process."""
    from test_contract import TASKS, build, random_batch

    torch.set_num_threads(1)
    model, _, specs = build(method_name, TASKS)
    model.train()
    batch = random_batch(specs)
    outputs = model(batch["image"])
    loss = sum(o.float().mean() for o in outputs.values())
    extra = getattr(model.encoder, "extra_loss", None)
    if callable(extra) and extra() is not None:
        loss = loss + extra()
    loss.backward()
    unused = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    if unused:
        assert getattr(model.encoder, "find_unused_parameters", False), (
            f"{method_name}: trainable parameters without gradient ({', '.join(unused[:5])}"
            f"{', ...' if len(unused) > 5 else ''}) but the encoder does not declare find_unused_parameters")


def test_shards_smaller_than_a_batch_are_refused(tmp_path, monkeypatch, capsys):
    """8 processes over 8 training images with batch 4 would train nothing; said before training."""
    from dataclasses import dataclass

    from mtpeft_bench.cli import main
    from mtpeft_bench.train import distributed

    @dataclass(frozen=True)
    class EightProcesses(distributed.DistContext):  # rank 0 of 8, without a process group
        def barrier(self):
            pass

        def broadcast(self, obj):
            return obj

    monkeypatch.setattr(distributed, "setup", lambda name, pick: (EightProcesses(0, 8), torch.device("cpu")))
    monkeypatch.setattr(distributed, "wrap_model", lambda *a, **k: pytest.fail("must stop before DDP"))
    with pytest.raises(SystemExit) as info:
        main(["run", "--method", "full", "--preset", "smoke", "--tasks", "semseg", "--set", "data.num_train=8",
              "--set", "data.num_val=4", "--batch-size", "4", "--no-progress", "--out", str(tmp_path / "results")])
    assert info.value.code == 2
    assert "each of the 8 processes gets 1 training samples, fewer than one batch of 4" in capsys.readouterr().err
    runs = tmp_path / "runs"  # created only when the first file goes in, so a failed set-up leaves none
    assert not runs.exists() or not list(runs.iterdir()), "a run that fails while being set up leaves no run folder"
