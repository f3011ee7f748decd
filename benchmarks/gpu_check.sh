#!/usr/bin/env bash
# One prepared DiTASK check for a GPU machine (no network; under 10 minutes on one H100/H200):
#   1. installs the checkout without dependencies (or, failing that, runs it from a symlink shim);
#   2. the Triton kernel tests on CUDA (kernel vs reference, forward and backward, ragged cases, a
#      Swin-T-sized pack, the method choosing the kernel) and the metric meters on CUDA;
#   3. side-by-side training steps, Swin-T at 448 px, batch 32, AMP: full fine-tuning, full
#      fine-tuning of DiTASK's branched architecture, DiTASK (Triton and PyTorch warp; official and
#      residual weight form; per-layer choice and all-dense), DiTASK without task streams, LoRA
#      (peft); one profiled step of each; the CPA warp of all Swin-T spectra, PyTorch vs Triton;
#   4. DiTASK vs recomputing the SVDs every forward / as often as the official code (fewer rounds);
#   5. `mtbench run --method ditask --dataset synth --preset smoke` on CUDA;
#   6. the pytest-benchmark figure of the CPA warp.
# Everything goes to $OUT/gpu_check.log (or ./gpu_check.log), plus JSON and profile files beside it.
# Usage: bash benchmarks/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUTDIR="${OUT:-$PWD}"
mkdir -p "$OUTDIR"
LOG="$OUTDIR/gpu_check.log"
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
exec > >(tee "$LOG") 2>&1
step() { echo; echo "== $* ($(date -u +%T))"; }

step "environment"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
$PY -c "import sys, torch, triton; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"
git log --oneline -1 2>/dev/null || true

step "install (no network)"
if ! $PY -c "import mtpeft_bench.methods.ditask" 2>/dev/null; then
  if ! timeout 60 $PY -m pip install --no-deps --no-build-isolation -q -e . ; then
    # Fallback: the package layout maps methods/ and tasks/ under mtpeft_bench; rebuild it with links.
    SHIM=$(mktemp -d)/shim
    mkdir -p "$SHIM/mtpeft_bench"
    for f in mtpeft_bench/*; do ln -s "$PWD/$f" "$SHIM/mtpeft_bench/"; done
    ln -s "$PWD/methods" "$SHIM/mtpeft_bench/methods"
    ln -s "$PWD/tasks" "$SHIM/mtpeft_bench/tasks"
    export PYTHONPATH="$SHIM${PYTHONPATH:+:$PYTHONPATH}"
    echo "editable install failed; running from $SHIM"
  fi
fi
$PY -c "import mtpeft_bench.methods.ditask as d; print('mtpeft_bench ok:', d.__file__)"

step "Triton kernel tests on CUDA; metric meters on CUDA"
timeout 90 $PY -m pytest -q -p no:cacheprovider -m "" -rs tests/test_ditask_triton.py
timeout 30 $PY -m pytest -q -p no:cacheprovider -m gpu tests/test_metrics.py

step "side by side: Swin-T 448 px, batch 32, AMP (medians of alternating steps)"
timeout 240 $PY benchmarks/ditask_speed.py --image 448 --batch 32 --rounds 10 --warmup 2 --cpa-rounds 30 \
  --variants full,full_streams,ditask,ditask_residual,ditask_dense,ditask_torch,ditask_shared,lora \
  --profile "$OUTDIR/profiles.txt" --json "$OUTDIR/ditask_speed_gpu.json"

step "SVDs every forward vs cached: Swin-T 448 px, batch 32, AMP (fewer rounds)"
timeout 90 $PY benchmarks/ditask_speed.py --image 448 --batch 32 --rounds 3 --warmup 1 --cpa-rounds 0 \
  --variants ditask,ditask_svd,ditask_svd_official --json "$OUTDIR/ditask_svd_gpu.json"

step "mtbench run --method ditask --dataset synth --preset smoke (CUDA)"
SMOKE_OUT="$(mktemp -d)/results"
timeout 75 $PY -m mtpeft_bench run --method ditask --dataset synth --preset smoke --device cuda --no-progress \
  --out "$SMOKE_OUT" 2>&1 | tail -25
$PY - "$SMOKE_OUT" <<'PYEOF'
import glob, json, sys
files = glob.glob(f"{sys.argv[1]}/**/*.json", recursive=True)
for f in files:
    r = json.load(open(f))
    info = r.get("method_info", {})
    print("result:", r["status"], "kernel:", info.get("kernel"), "device:", r["environment"].get("device_name"), "timm:", r["environment"]["versions"].get("timm"),
          "weights:", r["weights"].get("source"), "delta_m:", r.get("delta_m"))
if not files:
    print("no result file written")
PYEOF

step "pytest-benchmark: CPA warp of all Swin-T spectra"
timeout 40 $PY -m pytest -q -p no:cacheprovider -m "" benchmarks -k cpa_warp \
  --benchmark-json "$OUTDIR/bench_gpu.json" --benchmark-columns=min,median,mean,rounds

step "done; log: $LOG"
