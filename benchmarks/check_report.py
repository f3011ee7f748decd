"""One JSON and one markdown table from the pieces ``benchmarks/gpu_check.sh`` measures.

Inputs (each optional, each a JSON file written by a step of the check):

- ``--speed``: one or more ``ditask_speed.py --json`` results (e.g. the eager variants, then the
  ``+compile`` ones); the first file that has a variant gives its row;
- ``--traffic``: ``cost_weight.py --json``, DiTASK's traffic weight measured beside its estimate;
- ``--e2e``: ``e2e_check.py --json``, the facts of the end-to-end runs' result records.

Writes ``gpu_check.json`` (everything, inputs included) and ``gpu_check.md`` (the tables) into
``--out-dir`` and prints the markdown. Run it after every step: each run rewrites both files from
what exists so far, so a check cut short still leaves its tables.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

#: What each variant of ditask_speed.py is, for the table.
DESCRIPTIONS = {
    "full": "full fine-tuning",
    "full_streams": "full fine-tuning of DiTASK's branched architecture",
    "ditask": "DiTASK (defaults: Triton warp on CUDA, per-layer mode chooser)",
    "ditask_dense": "DiTASK, mode=dense (W' rebuilt for every layer)",
    "ditask_factored": "DiTASK, mode=factored (factors applied to the activations)",
    "ditask_residual": "DiTASK, residual weight form",
    "ditask_torch": "DiTASK, PyTorch warp",
    "ditask_shared": "DiTASK without task streams",
    "ditask_svd": "DiTASK, SVDs every forward",
    "ditask_svd_official": "DiTASK, SVDs as often as the official code",
    "lora": "LoRA r=4 (peft)",
    "mtlora": "MTLoRA r=16 (task rank 4)",
}


def describe(variant: str) -> str:
    base, _, suffix = variant.partition("+")
    text = DESCRIPTIONS.get(base, base)
    return f"{text}, torch.compile" if suffix == "compile" else text


def speed_rows(parts: list[dict]) -> list[dict[str, Any]]:
    """One row per variant over all parts (first part wins); ratios are taken within a part."""
    rows, seen = [], set()
    for part in parts:
        steps = part.get("steps", {})
        for v, r in steps.items():
            if v in seen:
                continue
            seen.add(v)
            base = v.partition("+")[0]
            rows.append({
                "variant": v, "what": describe(v), "step_ms": r["wall_s"] * 1e3, "rounds": len(r.get("wall_all", [])),
                "images_per_s": r.get("images_per_s", part["batch"] / r["wall_s"]),
                "x_full": r["wall_s"] / steps["full"]["wall_s"] if "full" in steps else None,
                "x_full_streams": r["wall_s"] / steps["full_streams"]["wall_s"] if "full_streams" in steps else None,
                "x_eager": r["wall_s"] / steps[base]["wall_s"] if base != v and base in steps else None,
                "first_step_s": r.get("first_s") if base != v else None,
                "peak_gib": r.get("peak_gib"), "gflops_per_image": (r["flops_per_image"] / 1e9
                                                                    if r.get("flops_per_image") else None),
                "mfu": r.get("mfu"),
            })
    return rows


def _fmt(value, spec: str, suffix: str = "") -> str:
    return "–" if value is None else f"{value:{spec}}{suffix}"


def speed_markdown(parts: list[dict]) -> list[str]:
    first = parts[0]
    lines = [f"## Training step: {first['backbone']}, {first['image']} px, batch {first['batch']}, "
             f"{'AMP ' + str(first.get('amp_dtype')) if first.get('amp_dtype') else 'no AMP'}",
             "",
             f"Median of alternating steps on {first['device']} (torch {first.get('torch', '?')}); MFU = forward "
             f"FLOPs per image × 3 × images/s over the {first.get('precision', '?')} dense peak "
             f"({_fmt((first.get('peak_flops_per_s') or 0) / 1e12 or None, '.1f', ' TFLOP/s')}).",
             "",
             "| variant | what | step | images/s | × full | × full_streams | × eager | first step | peak memory "
             "| GFLOPs/image (fwd) | MFU |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in speed_rows(parts):
        lines.append(
            f"| `{r['variant']}` | {r['what']} | {r['step_ms']:.1f} ms | {r['images_per_s']:.1f} "
            f"| {_fmt(r['x_full'], '.2f')} | {_fmt(r['x_full_streams'], '.2f')} | {_fmt(r['x_eager'], '.2f')} "
            f"| {_fmt(r['first_step_s'], '.1f', ' s')} | {_fmt(r['peak_gib'], '.1f', ' GiB')} "
            f"| {_fmt(r['gflops_per_image'], '.1f')} | {_fmt(r['mfu'] * 100 if r['mfu'] is not None else None, '.1f', ' %')} |")
    failed = {v: e for part in parts for v, e in (part.get("failed") or {}).items()}
    for v, error in failed.items():
        lines.append(f"\n`{v}` failed: {error}")
    for part in parts:
        for k, r in (part.get("cpa_fwd_bwd") or {}).items():
            lines.append(f"\nCPA warp of all Swin-T spectra, forward + backward, {k}: {r['wall_s'] * 1e3:.2f} ms")
    return lines


def traffic_markdown(t: dict) -> list[str]:
    lines = ["## DiTASK's mode chooser: the traffic weight", "",
             f"Multiply-adds one element access of the factored intermediate is worth ({t['device_type']}, "
             f"{t['dtype']}, batch {t['batch']}, {t['image']} px): **estimate {t['estimate']:g}**, "
             f"**measured {t['measured']:.1f}** (median over the stages).", "",
             "| stage | tokens × C | x·V multiply-adds/s | x·s' accesses/s | weight |", "|---|---|---|---|---|"]
    for s, st in enumerate(t["stages"]):
        lines.append(f"| {s} | {st['tokens']} × {st['width']} | {st['macs_per_s'] / 1e12:.3g} T "
                     f"| {st['accesses_per_s'] / 1e9:.3g} G | {st['weight']:.1f} |")
    flips = {k: m for k, m in t["modes"].items() if m["estimate"] != m["measured"]}
    lines.append("")
    lines.append("The chooser makes the same choice with either weight for every layer shape." if not flips else
                 "With the measured weight the chooser would change: " + ", ".join(
                     f"{k} {m['estimate']} → {m['measured']}" for k, m in flips.items()) + ".")
    return lines


def e2e_markdown(e2e: dict) -> list[str]:
    lines = ["## End to end: `mtbench run --preset paper` through torchrun, miniature datasets", "",
             "| dataset | method | status | device | backend | world size | AMP | kernel | steps | train images/s "
             "| evaluation | checks |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in e2e.get("runs", []):
        lines.append(f"| {r['dataset']} | {r['method']} | {r['status']} | {r.get('device_name')} | {r.get('backend')} "
                     f"| {r.get('world_size')} | {r.get('amp')} | {r.get('kernel') or '–'} | {r.get('steps')} "
                     f"| {_fmt(r.get('train_images_per_s'), '.1f')} | {r.get('evaluation')} "
                     f"| {'ok' if not r.get('problems') else '; '.join(r['problems'])} |")
    for missing in e2e.get("missing", []):
        lines.append(f"\nNo result record for {missing}.")
    return lines


def build(speed: list[dict], traffic: dict | None, e2e: dict | None, meta: dict[str, Any]) -> tuple[dict, str]:
    """The combined JSON object and its markdown."""
    summary = {**meta, "speed": speed, "traffic_weight": traffic, "end_to_end": e2e}
    lines = [f"# GPU check: {meta.get('device', '?')}, {meta.get('date', '?')}", ""]
    if meta.get("rehearsal"):
        lines += ["**Rehearsal on the CPU at toy sizes: the figures mean nothing.**", ""]
    if speed:
        lines += speed_markdown(speed) + [""]
    if traffic:
        lines += traffic_markdown(traffic) + [""]
    if e2e:
        lines += e2e_markdown(e2e) + [""]
    return summary, "\n".join(lines)


def _load(path: Path | None) -> Any:
    return json.loads(path.read_text()) if path is not None and path.is_file() else None


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--speed", type=Path, nargs="*", default=[], help="ditask_speed.py JSON results")
    parser.add_argument("--traffic", type=Path, default=None, help="cost_weight.py JSON result")
    parser.add_argument("--e2e", type=Path, default=None, help="e2e_check.py JSON result")
    parser.add_argument("--out-dir", type=Path, required=True)
    parser.add_argument("--meta", default="{}", help="JSON object of facts to put at the top (date, device, git, ...)")
    args = parser.parse_args(argv)
    speed = [p for p in (_load(path) for path in args.speed) if p]
    summary, text = build(speed, _load(args.traffic), _load(args.e2e), json.loads(args.meta))
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "gpu_check.json").write_text(json.dumps(summary, indent=2) + "\n")
    (args.out_dir / "gpu_check.md").write_text(text + "\n")
    print(text)
    print(f"wrote {args.out_dir / 'gpu_check.json'} and {args.out_dir / 'gpu_check.md'}")


if __name__ == "__main__":
    main()
