"""Side-by-side cost of a DiTASK training step, and of the CPA warp of a whole Swin-T.

Variants (each a complete multi-task model with the PASCAL-Context task heads, trained by the
suite's own ``Trainer`` step: forward, losses, backward, clipping, AdamW):

- ``full``: full fine-tuning (shared features);
- ``ditask``: DiTASK with the SVDs cached at build (the default);
- ``ditask_svd``: DiTASK recomputing the SVD of every frozen matrix once per forward;
- ``ditask_svd_official``: ... as often as the official code (again on every task path);
- ``ditask_shared``: DiTASK without task streams (isolates the cost of the weight adaptation from
  the cost of the per-task projection/MLP branches that the multi-task model adds);
- ``ditask_torch``: DiTASK with the PyTorch reference of the CPA warp instead of the Triton kernel;
- ``ditask_residual``: DiTASK in the residual weight form W + U·diag(s'−s)·Vᵀ (``residual=true``);
- ``ditask_dense``: DiTASK rebuilding W' for every layer (``mode=dense``), whatever the operation count;
- ``ditask_factored``: DiTASK applying the factors of every layer to the activations (``mode=factored``);
- ``full_streams``: full fine-tuning of DiTASK's architecture: every weight trains, and the last
  block of each stage has a trainable copy of proj/fc1/fc2 per task (the task streams), so that
  ``ditask/full_streams`` isolates the cost of the method from the cost of the branched model;
- ``lora``: LoRA through peft (r=4 on the 48 block linears, ``peft.inject_adapter_in_model``);
- ``mtlora``: the suite's ``mtlora`` method with its shared rank 16 (``rank=16``, task rank 4).

Any variant followed by ``+compile`` (``full+compile``) is the same model wrapped in
``torch.compile`` (``--compile-backend``, default inductor): its first warm-up step compiles, and
that step's time is recorded as ``compile_s``. A variant that fails to build or to step (e.g. a
model torch.compile cannot trace) is reported under ``failed`` and the others are still timed.

``--flops`` counts each variant's forward FLOPs per image (``mtpeft_bench.measure.count_flops`` on
the timed batch, divided by the batch) and, where ``mtpeft_bench/hardware.py`` knows the device's
peak at the run's matrix-product precision, the model FLOPs utilisation (MFU) of each step.

Steps of the variants alternate (one step of each per round, the order rotated every round) so
that load changes on a shared machine hit all of them alike; medians are reported, with wall time
and process CPU time. Run ``python benchmarks/ditask_speed.py --help``.

``--malloc-tunables`` restarts the process with glibc's malloc told to keep freed memory instead
of returning every large block to the kernel (``GLIBC_TUNABLES``, see ``MALLOC_TUNABLES``): by
default each large activation is a fresh ``mmap`` whose pages fault in one by one, which makes
every elementwise operation on the CPU several times slower than the memory allows. It applies to
all variants of the run alike; the JSON records the setting.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from typing import Any
from collections.abc import Callable

import torch


LORA_TARGETS = r".*\.(attn\.(qkv|proj)|mlp\.(fc1|fc2))$"
MALLOC_TUNABLES = "glibc.malloc.mmap_threshold=4294967296:glibc.malloc.trim_threshold=17179869184"
VARIANTS = ("full", "full_streams", "ditask", "ditask_svd", "ditask_svd_official", "ditask_shared", "ditask_torch",
            "ditask_residual", "ditask_dense", "ditask_factored", "lora", "mtlora")
COMPILED = "+compile"  # suffix of a variant whose model is wrapped in torch.compile
DITASK_OPTIONS = {
    "ditask": {},
    "ditask_torch": {"kernel": "torch"},
    "ditask_svd": {"svd_recompute": "per_forward"},
    "ditask_svd_official": {"svd_recompute": "per_use"},
    "ditask_shared": {"task_streams": False},
    "ditask_residual": {"residual": True},
    "ditask_dense": {"mode": "dense"},
    "ditask_factored": {"mode": "factored"},
}
# Variants that are a registered method with options (built by the method's own build_model).
METHOD_VARIANTS = {"full": ("full", {}), "mtlora": ("mtlora", {"rank": 16})}


def task_specs(dataset: str = "pascal_mt"):
    from mtpeft_bench.registry import get_dataset

    return get_dataset(dataset)().task_specs(None)


def random_batch(specs, batch: int, size: int, device, seed: int = 0
                 ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Random images (batch, 3, size, size) and targets of the right format for every task."""
    from mtpeft_bench.bench import random_targets

    images = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))
    return images.to(device), random_targets(specs, batch, (size, size), device, seed + 1)


def _example_per_task_copies():
    """The README plugin example's stream layer (a trainable copy of a linear per task)."""
    import sys
    from pathlib import Path

    examples = str(Path(__file__).resolve().parents[1] / "examples")
    if examples not in sys.path:
        sys.path.insert(0, examples)
    from task_proj import PerTaskCopies

    return PerTaskCopies


def build_variant(name: str, specs, size: int, device: torch.device, amp: bool,
                  backbone: str = "swin_tiny_patch4_window7_224", ditask_options: dict[str, Any] | None = None):
    """A ``Trainer`` for one variant (random weights: the cost does not depend on them)."""
    from mtpeft_bench.model.backbone import create_backbone
    from mtpeft_bench.model.encoder import MultiTaskSwinEncoder
    from mtpeft_bench.train import Schedule, Trainer
    from mtpeft_bench.methods.base import freeze
    from mtpeft_bench.model.multitask import MultiTaskModel, build_model, task_outputs_of
    from mtpeft_bench.registry import get_method
    from mtpeft_bench.tasks.base import config_from_mapping

    torch.manual_seed(0)
    bb, _ = create_backbone(backbone, (size, size), "none", 0.0)
    outputs = task_outputs_of(specs)
    if name == "lora":
        from peft import LoraConfig, inject_adapter_in_model

        freeze(bb)
        bb = inject_adapter_in_model(LoraConfig(r=4, lora_alpha=4, target_modules=LORA_TARGETS), bb)
        model = MultiTaskModel(MultiTaskSwinEncoder(bb, list(outputs)), outputs)
    elif name == "full_streams":
        PerTaskCopies = _example_per_task_copies()
        tasks = list(outputs)
        streams = lambda stage, role, linear: PerTaskCopies(linear, tasks)  # noqa: E731
        model = MultiTaskModel(MultiTaskSwinEncoder(bb, tasks, stream_factory=streams), outputs)
    else:
        method, options = METHOD_VARIANTS.get(name, ("ditask", DITASK_OPTIONS.get(name, {})))
        if method == "ditask":
            options = {**options, **(ditask_options or {})}
        cls = get_method(method)
        model, _ = build_model(cls(), config_from_mapping(cls.Config, options, method), bb, outputs)
    model.to(device).train()
    schedule = Schedule(lr=1e-4, warmup_lr=1e-4, min_lr=1e-4, total_steps=10_000, warmup_steps=0)
    return Trainer(model, specs, device, schedule, amp=amp and device.type == "cuda", progress=False)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def alternate(steps: dict[str, Callable[[], Any]], rounds: int, warmup: int, device: torch.device,
              failed: dict[str, str] | None = None) -> dict[str, dict]:
    """Time each callable ``rounds`` times, one call of each per round, rotating the order.

    A callable that raises in its warm-up is dropped and its error stored in ``failed`` (when given;
    otherwise the error propagates). The first warm-up call's time is ``first_s`` (for a compiled
    model: the compilation).
    """
    names = list(steps)
    peak: dict[str, float] = {}
    first: dict[str, float] = {}
    for w in range(warmup):
        for n in list(names):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
                torch.cuda.reset_peak_memory_stats(device)
            t0 = time.perf_counter()
            try:
                steps[n]()
                _sync(device)
            except Exception as error:  # noqa: BLE001 - reported, the other variants go on
                if failed is None:
                    raise
                failed[n] = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"[:300]
                names.remove(n)
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                continue
            if w == 0:
                first[n] = time.perf_counter() - t0
            if device.type == "cuda":
                peak[n] = max(peak.get(n, 0.0), torch.cuda.max_memory_allocated(device) / 2**30)
    wall: dict[str, list[float]] = {n: [] for n in names}
    cpu: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds if names else 0):
        order = names[r % len(names):] + names[:r % len(names)]
        for n in order:
            _sync(device)
            w0, c0 = time.perf_counter(), time.process_time()
            steps[n]()
            _sync(device)
            wall[n].append(time.perf_counter() - w0)
            cpu[n].append(time.process_time() - c0)
    return {n: {"wall_s": statistics.median(wall[n]), "cpu_s": statistics.median(cpu[n]), "wall_all": wall[n],
                **({"first_s": first[n]} if n in first else {}),
                **({"peak_gib": peak[n]} if n in peak else {})} for n in names}


def profile_steps(steps: dict[str, Callable[[], Any]], device: torch.device, path: str, rows: int = 30) -> None:
    """One profiled step of each callable: its top operators by device (or CPU) time, all in one text file."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    sort = "cuda_time_total" if device.type == "cuda" else "cpu_time_total"
    with open(path, "w") as fh:
        for n, step in steps.items():
            step()
            _sync(device)
            with profile(activities=activities) as prof:
                step()
                _sync(device)
            fh.write(f"== {n}\n")
            fh.write(prof.key_averages().table(sort_by=sort, row_limit=rows, max_name_column_width=60))
            fh.write("\n\n")


def swin_t_pack(tasks: int = 4, shared_cells: int = 64, task_cells: int = 4):
    """The SpectrumPack and θ of DiTASK on Swin-T (the same layout the method builds)."""
    from mtpeft_bench.methods.ditask.cpa import SpectrumPack

    warps, offset, rows = [], 0, {shared_cells: 0, task_cells: 0}
    for c, depth in zip((96, 192, 384, 768), (2, 2, 6, 2)):
        for block in range(depth):
            for role in range(4):  # qkv (3 blocks), proj, fc1, fc2
                first = offset
                for _ in range(3 if role == 0 else 1):
                    warps.append((offset, c, shared_cells, rows[shared_cells]))
                    offset += c
                rows[shared_cells] += 1
                if block == depth - 1 and role > 0:
                    for _ in range(tasks):
                        warps.append((first, c, task_cells, rows[task_cells]))
                        rows[task_cells] += 1
    return SpectrumPack(warps), offset


def cpa_step(kernel: str, device: torch.device, seed: int = 0) -> Callable[[], None]:
    """Forward + backward of the warp of every Swin-T spectrum (shared and task) with one kernel."""
    from mtpeft_bench.methods.ditask.cpa import warp_packed_torch

    pack, numel = swin_t_pack()
    pack = pack.to(device)
    g = torch.Generator().manual_seed(seed)
    s = torch.sort(torch.rand(numel, generator=g) * 3, descending=True).values.to(device)
    thetas = {nc: ((torch.rand(r, nc - 1, generator=g) * 2 - 1) / (nc - 1) ** 0.5).to(device).requires_grad_()
              for nc, r in pack.rows.items()}
    if kernel == "triton":
        from mtpeft_bench.methods.ditask.triton_kernel import warp_packed_triton as warp
    else:
        warp = warp_packed_torch
    weights = torch.randn(pack.numel, generator=g).to(device)

    def step():
        out = warp(pack, s, pack.coefficients(thetas))
        (out * weights).sum().backward()

    return step


def split_variant(name: str) -> tuple[str, bool]:
    """``"ditask+compile"`` → ``("ditask", True)``; ``"ditask"`` → ``("ditask", False)``."""
    return (name[:-len(COMPILED)], True) if name.endswith(COMPILED) else (name, False)


def build_trainers(variants, specs, size: int, dev: torch.device, amp: bool, backbone: str, compile_backend: str,
                   failed: dict[str, str]) -> dict[str, Any]:
    """A Trainer per variant; compiled variants get ``torch.compile`` of their model; failures go to ``failed``."""
    trainers = {}
    for v in variants:
        base, compiled = split_variant(v)
        try:
            trainer = build_variant(base, specs, size, dev, amp, backbone)
            if compiled:
                trainer.model = torch.compile(trainer.model, backend=compile_backend)
        except Exception as error:  # noqa: BLE001 - reported, the other variants go on
            failed[v] = f"{type(error).__name__}: {error}"[:300]
            continue
        trainers[v] = trainer
    return trainers


def forward_flops(trainers: dict[str, Any], images: torch.Tensor) -> dict[str, float]:
    """Forward FLOPs per image of every eager variant's model on ``images`` (a compiled variant
    counts as its eager twin: FlopCounterMode sees the operators, not how they were fused)."""
    from mtpeft_bench.measure import count_flops

    flops = {}
    for v, trainer in trainers.items():
        base, compiled = split_variant(v)
        if compiled:
            continue
        model = trainer.model
        with torch.autocast(images.device.type, enabled=trainer.amp and images.device.type == "cuda"):
            flops[v] = count_flops(model, images)["total"] / images.shape[0]
    for v in trainers:
        base, compiled = split_variant(v)
        if compiled and base in flops:
            flops[v] = flops[base]
        elif compiled:  # the eager twin is not in this run: count on the model inside the wrapper
            inner = getattr(trainers[v].model, "_orig_mod", trainers[v].model)
            flops[v] = count_flops(inner, images)["total"] / images.shape[0]
    return flops


def add_utilisation(steps: dict[str, dict], flops: dict[str, float], batch: int, device_name: str,
                    precision: str) -> float | None:
    """Store images/s, FLOPs per image, achieved FLOP/s and MFU in every step entry; return the peak."""
    from mtpeft_bench.hardware import model_flops_utilization, peak_flops

    peak = peak_flops(device_name, precision)
    for v, entry in steps.items():
        entry["images_per_s"] = batch / entry["wall_s"]
        entry["flops_per_image"] = flops.get(v)
        achieved, mfu = model_flops_utilization(flops.get(v), entry["images_per_s"], peak, training=True)
        entry["achieved_flops_per_s"], entry["mfu"] = achieved, mfu
    return peak


def run(variants, size: int, batch: int, rounds: int, warmup: int, device: str, amp: bool, cpa_rounds: int,
        backbone: str = "swin_tiny_patch4_window7_224", profile: str | None = None, flops: bool = False,
        compile_backend: str = "inductor") -> dict:
    from mtpeft_bench.hardware import matmul_precision

    dev = torch.device(device)
    specs = task_specs()
    failed: dict[str, str] = {}
    trainers = build_trainers(variants, specs, size, dev, amp, backbone, compile_backend, failed)
    images, targets = random_batch(specs, batch, size, dev)
    steps = {v: (lambda t=t: t.train_step(images, targets)) for v, t in trainers.items()}
    device_name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    amp_on = amp and dev.type == "cuda"
    result: dict[str, Any] = {
        "device": device_name,
        "threads": torch.get_num_threads(), "backbone": backbone, "image": size, "batch": batch, "rounds": rounds,
        "warmup": warmup, "amp": amp, "amp_dtype": "float16" if amp_on else None,
        "precision": matmul_precision(dev, amp_on, "float16"), "glibc_tunables": os.environ.get("GLIBC_TUNABLES"),
        "torch": torch.__version__, "compile_backend": compile_backend if any(split_variant(v)[1] for v in variants)
        else None,
        "steps": alternate(steps, rounds, warmup, dev, failed),
        "modes": trainers["ditask"].model.encoder.method_info() if "ditask" in trainers else None,
    }
    if flops:
        counts = forward_flops({v: t for v, t in trainers.items() if v in result["steps"]}, images)
        result["peak_flops_per_s"] = add_utilisation(result["steps"], counts, batch, device_name,
                                                     result["precision"])
    if profile:
        profile_steps({v: st for v, st in steps.items() if v in result["steps"] and not split_variant(v)[1]},
                      dev, profile)
    result["failed"] = failed
    del trainers, steps
    kernels = ["torch"] + (["triton"] if dev.type == "cuda" else [])
    if cpa_rounds:
        result["cpa_fwd_bwd"] = alternate({k: cpa_step(k, dev) for k in kernels}, cpa_rounds, 2, dev)
    result["ratios"] = ratios(result["steps"])
    return result


def ratios(t: dict[str, dict]) -> dict[str, float]:
    """Wall-time ratios of the variants against full fine-tuning, DiTASK and the branched model."""
    out = {}
    if "full" in t:
        for v in t:
            if v != "full":
                out[f"{v}/full"] = t[v]["wall_s"] / t["full"]["wall_s"]
    if "ditask" in t:
        for v in ("ditask_svd", "ditask_svd_official"):
            if v in t:
                out[f"{v}/ditask"] = t[v]["wall_s"] / t["ditask"]["wall_s"]
                out[f"{v}/ditask (cpu time)"] = t[v]["cpu_s"] / t["ditask"]["cpu_s"]
    if "full_streams" in t:
        for v in ("ditask", "ditask_torch", "ditask_residual", "ditask_dense", "ditask_factored"):
            if v in t:
                out[f"{v}/full_streams"] = t[v]["wall_s"] / t["full_streams"]["wall_s"]
    for v in t:
        base, compiled = split_variant(v)
        if compiled and base in t:
            out[f"{v}/{base}"] = t[v]["wall_s"] / t[base]["wall_s"]
    if "full" in t and "ditask" in t:
        out["ditask/full (cpu time)"] = t["ditask"]["cpu_s"] / t["full"]["cpu_s"]
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", default="full,ditask,ditask_svd",
                        help=f"comma list of {', '.join(VARIANTS)}; any of them with {COMPILED} (torch.compile)")
    parser.add_argument("--backbone", default="swin_tiny_patch4_window7_224")
    parser.add_argument("--image", type=int, default=224)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--cpa-rounds", type=int, default=10)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--no-amp", action="store_true")
    parser.add_argument("--json", default=None, help="write the result here")
    parser.add_argument("--profile", default=None, help="write the profile of one step of each variant to this text file")
    parser.add_argument("--flops", action="store_true", help="count FLOPs per image and report MFU beside images/s")
    parser.add_argument("--compile-backend", default="inductor", help="torch.compile backend of the +compile variants")
    parser.add_argument("--malloc-tunables", action="store_true",
                        help=f"restart with GLIBC_TUNABLES={MALLOC_TUNABLES} (large CPU allocations reused)")
    args = parser.parse_args(argv)
    if args.malloc_tunables and os.environ.get("GLIBC_TUNABLES") != MALLOC_TUNABLES:
        env = {**os.environ, "GLIBC_TUNABLES": MALLOC_TUNABLES}
        os.execve(sys.executable, [sys.executable, os.path.abspath(__file__),
                                   *(sys.argv[1:] if argv is None else argv)], env)
    if args.threads:
        torch.set_num_threads(args.threads)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants if split_variant(v)[0] not in VARIANTS]
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {VARIANTS}")
    result = run(variants, args.image, args.batch, args.rounds, args.warmup, args.device, not args.no_amp,
                 args.cpa_rounds, args.backbone, args.profile, args.flops, args.compile_backend)
    print(f"device {result['device']} · threads {result['threads']} · {args.image}px · batch {args.batch} · "
          f"{args.rounds} rounds (median) · GLIBC_TUNABLES={result['glibc_tunables'] or 'unset'}")
    for v, r in result["steps"].items():
        spread = f"[{min(r['wall_all']) * 1e3:.1f}–{max(r['wall_all']) * 1e3:.1f}]"
        peak = f"   peak {r['peak_gib']:.1f} GiB" if "peak_gib" in r else ""
        mfu = f"   {r['images_per_s']:7.1f} img/s" if "images_per_s" in r else ""
        mfu += f"   MFU {r['mfu'] * 100:5.1f} %" if r.get("mfu") is not None else ""
        first = f"   first step {r['first_s']:.1f} s" if split_variant(v)[1] and "first_s" in r else ""
        print(f"  {v:22s} wall {r['wall_s'] * 1e3:9.1f} ms {spread:>17s}   cpu {r['cpu_s'] * 1e3:9.1f} ms{peak}"
              f"{mfu}{first}")
    for v, error in result["failed"].items():
        print(f"  {v:22s} FAILED: {error}")
    for k, r in (result.get("cpa_fwd_bwd") or {}).items():
        print(f"  CPA warp fwd+bwd, Swin-T, {k:6s} wall {r['wall_s'] * 1e3:8.2f} ms")
    for k, v in result["ratios"].items():
        print(f"  {k:34s} {v:6.2f}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=2)


if __name__ == "__main__":
    main()
