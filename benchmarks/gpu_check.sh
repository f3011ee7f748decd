#!/usr/bin/env bash
# One prepared DiTASK check for a GPU machine (no network; about 5 minutes on one H100):
#   1. installs the checkout without dependencies (or, failing that, runs it from a symlink shim);
#   2. runs the DiTASK tests with the real Triton kernels on CUDA (kernel vs reference, forward and
#      backward, ragged cases and a Swin-T-sized pack; the method choosing the kernel);
#   3. the side-by-side step costs: Swin-T at 448 px, batch 32, AMP — full fine-tuning, DiTASK,
#      DiTASK without task streams, LoRA (peft), DiTASK recomputing its SVDs every forward — and
#      the CPA warp of all Swin-T spectra, PyTorch vs Triton;
#   4. the pytest-benchmark figures.
# Everything goes to $OUT/gpu_check.log (or ./gpu_check.log), plus JSON files beside it.
# Usage: bash benchmarks/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUTDIR="${OUT:-$PWD}"
mkdir -p "$OUTDIR"
LOG="$OUTDIR/gpu_check.log"
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
exec > >(tee "$LOG") 2>&1

echo "== environment ($(date -u +%FT%TZ))"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python -c "import sys, torch, triton; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"
git log --oneline -1 2>/dev/null || true

echo "== install (no network)"
if ! python -c "import mtpeft_bench.methods.ditask" 2>/dev/null; then
  if ! pip install --no-deps --no-build-isolation -q -e . ; then
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
python -c "import mtpeft_bench.methods.ditask as d; print('mtpeft_bench ok:', d.__file__)"

echo "== DiTASK tests on CUDA (real Triton kernels)"
timeout 300 python -m pytest -q -p no:cacheprovider -m "" tests/test_ditask_triton.py tests/test_ditask_cpa.py
timeout 240 python -m pytest -q -p no:cacheprovider -m "gpu" tests

echo "== side by side: Swin-T 448 px, batch 32, AMP (medians of alternating steps)"
timeout 330 python benchmarks/ditask_speed.py --image 448 --batch 32 --rounds 8 --warmup 3 --cpa-rounds 30 \
  --variants full,ditask,ditask_shared,lora,ditask_svd --json "$OUTDIR/ditask_speed_gpu.json"

echo "== pytest-benchmark (CPA warp; training steps)"
MTBENCH_BENCH_ROUNDS=5 timeout 240 python -m pytest -q -p no:cacheprovider -m "" benchmarks \
  -k "cpa_warp or train_step" --benchmark-json "$OUTDIR/bench_gpu.json" --benchmark-columns=min,median,mean,rounds

echo "== done ($(date -u +%FT%TZ)); log: $LOG"
