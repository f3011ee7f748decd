"""Measure the quantity that DiTASK's per-layer mode chooser estimates: ``TRAFFIC_WEIGHT``.

``methods/ditask/adapter.py`` decides, per layer shape, whether rebuilding W' or applying its
factors to the activations is cheaper (``factored_is_cheaper``). On CUDA it counts every read or
write of an element of the factored way's (tokens × k) intermediate as ``TRAFFIC_WEIGHT["cuda"]``
multiply-adds, an estimate from spec sheets. What that number stands for is a ratio of two rates
on the device: multiply-adds per second of the matrix products at the model's shapes, over element
accesses per second of the elementwise product that scales the intermediate by s'. This module
times both with ``torch.utils.benchmark`` at the shapes of every Swin stage (tokens = batch ·
(image / 4 / 2^stage)², width C of the stage, the run's dtype) and reports, per stage:

- ``macs_per_s``: ``(tokens × C) @ (C × C)`` — the factored way's first product, x·V;
- ``accesses_per_s``: ``(tokens × C) * (C,)`` — the scaling by s', one read and one write per element;
- ``weight``: their ratio, the measured counterpart of the estimate.

``measured`` is the median over the stages; ``modes`` lists the choice ``factored_is_cheaper``
makes for every DiTASK layer shape of Swin-T at this batch, with the estimate and with the measured
weight, so a disagreement shows which layers the estimate sends the wrong way.
"""

from __future__ import annotations

import statistics
from typing import Any

import torch
from torch.utils import benchmark

#: Swin-T's stage widths (C) and blocks; each block has qkv (3 blocks of C × C), proj (C × C),
#: fc1 (4C × C), fc2 (C × 4C): the (out_b, in_f) shapes the chooser decides for.
SWIN_T_WIDTHS = (96, 192, 384, 768)


def layer_shapes(width: int) -> list[tuple[int, int]]:
    """The (out_b, in_f) blocks of one Swin stage of width C, as the DiTASK bank groups them."""
    return [(width, width), (4 * width, width), (width, 4 * width)]


def stage_tokens(batch: int, image: int, stage: int) -> int:
    """Tokens one linear of ``stage`` sees: batch · (image / 4 / 2^stage)², square images."""
    side = image // 4 // 2 ** stage
    return batch * max(1, side) ** 2


def _median_seconds(stmt: str, env: dict[str, Any], min_run_time: float) -> float:
    return benchmark.Timer(stmt=stmt, globals=env).blocked_autorange(min_run_time=min_run_time).median


def measure_stage(tokens: int, width: int, device: torch.device, dtype: torch.dtype,
                  min_run_time: float = 0.2) -> dict[str, float]:
    """Rates of x·V (tokens × C)·(C × C) and of x·s' (tokens × C)·(C,) on ``device`` in ``dtype``."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(tokens, width, generator=g).to(device, dtype)
    v = torch.randn(width, width, generator=g).to(device, dtype)
    s = torch.rand(width, generator=g).to(device, dtype)
    env = {"x": x, "v": v, "s": s, "torch": torch}
    t_mm = _median_seconds("torch.mm(x, v)", env, min_run_time)
    t_scale = _median_seconds("x * s", env, min_run_time)
    macs = tokens * width * width / t_mm
    accesses = 2 * tokens * width / t_scale
    return {"tokens": tokens, "width": width, "mm_s": t_mm, "scale_s": t_scale, "macs_per_s": macs,
            "accesses_per_s": accesses, "weight": macs / accesses}


def chooser_modes(batch: int, image: int, weights: dict[str, float], grad: bool = True,
                  residual: bool = False) -> dict[str, dict[str, str]]:
    """``{"stage{s}:{out}x{in}": {label: "factored" | "dense"}}`` for each traffic weight in ``weights``."""
    from mtpeft_bench.methods.ditask.adapter import factored_is_cheaper

    modes: dict[str, dict[str, str]] = {}
    for stage, width in enumerate(SWIN_T_WIDTHS):
        tokens = stage_tokens(batch, image, stage)
        for out_b, in_f in layer_shapes(width):
            k = min(out_b, in_f)
            modes[f"stage{stage}:{out_b}x{in_f}"] = {
                label: "factored" if factored_is_cheaper(tokens, out_b, in_f, k, grad, residual, w) else "dense"
                for label, w in weights.items()}
    return modes


def measure(batch: int, image: int, device: torch.device, dtype: torch.dtype, min_run_time: float = 0.2) -> dict:
    """The measured traffic weight beside the estimate the chooser uses on this device type."""
    from mtpeft_bench.methods.ditask.adapter import TRAFFIC_WEIGHT

    stages = [measure_stage(stage_tokens(batch, image, s), w, device, dtype, min_run_time)
              for s, w in enumerate(SWIN_T_WIDTHS)]
    measured = statistics.median(st["weight"] for st in stages)
    estimate = TRAFFIC_WEIGHT.get(device.type, 0.0)
    return {
        "device_type": device.type, "dtype": str(dtype).removeprefix("torch."), "batch": batch, "image": image,
        "estimate": estimate, "measured": measured, "stages": stages,
        "modes": chooser_modes(batch, image, {"estimate": estimate, "measured": measured}),
    }


def summary_lines(result: dict) -> list[str]:
    """Human-readable lines: the two weights, the per-stage figures and the layers they disagree on."""
    lines = [f"traffic weight ({result['device_type']}, {result['dtype']}, batch {result['batch']}, "
             f"{result['image']} px): estimate {result['estimate']:g}, measured {result['measured']:.1f} "
             f"multiply-adds per element access (median of {len(result['stages'])} stages)"]
    for s, st in enumerate(result["stages"]):
        lines.append(f"  stage {s}: {st['tokens']} tokens × {st['width']}: x·V {st['macs_per_s'] / 1e12:.3g} T "
                     f"multiply-adds/s, x·s' {st['accesses_per_s'] / 1e9:.3g} G accesses/s → {st['weight']:.1f}")
    flips = [f"{k} ({m['measured']})" for k, m in result["modes"].items() if m["estimate"] != m["measured"]]
    lines.append("  chooser with the measured weight: " + (
        "differs on " + ", ".join(flips) if flips else "same choice as the estimate for every layer shape"))
    return lines


def main(argv=None) -> None:
    import argparse
    import json

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--image", type=int, default=448)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default=None, help="float16 (default on CUDA: AMP's) or float32 (default on a CPU)")
    parser.add_argument("--min-run-time", type=float, default=0.2, help="seconds of timing per operation")
    parser.add_argument("--json", default=None, help="write the result here")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype or ("float16" if device.type == "cuda" else "float32"))
    result = measure(args.batch, args.image, device, dtype, args.min_run_time)
    print("\n".join(summary_lines(result)))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=2)


if __name__ == "__main__":
    main()
