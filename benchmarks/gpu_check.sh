#!/usr/bin/env bash
# The prepared GPU check (issue 19 items 3 and 4): one GPU, no network, under 9 minutes on an H100
# including the install. Steps, most important first, each under `timeout` and inside the budget:
#   1. install the checkout without dependencies (or run it from a symlink shim);
#   2. side-by-side training steps, Swin-T 448 px, batch 32, AMP (medians of alternating steps):
#      full, full_streams, ditask (default; mode=dense; mode=factored; residual form), ditask_shared,
#      lora r4, mtlora r16; FLOPs per image and MFU beside images/s (mtpeft_bench/hardware.py); the
#      CPA warp of all Swin-T spectra, PyTorch vs Triton; one profiled step of each (profiles.txt);
#   3. the traffic weight of DiTASK's mode chooser measured beside its estimate (cost_weight.py);
#   4. end to end: `mtbench run --preset paper --weights none` of ditask and mtlora on miniature
#      PASCAL_MT and NYUD_MT copies (make_mini_datasets.py) through torchrun (1 process), AMP,
#      evaluation at the original image size; then what the result records say they ran on (one
#      torchrun process joins an NCCL process group of one and trains inside DDP: backend nccl);
#   5. the rest, while the budget lasts: the Triton kernel tests on CUDA, then eager vs
#      torch.compile (inductor) of full fine-tuning, then of DiTASK (one process each).
# After steps 3, 4 and each compilation, gpu_check.json + gpu_check.md (check_report.py) are rewritten with what
# exists so far, in $OUT/measurements/<date>-<gpu>/ on the device machine (what comes back), else in
# benchmarks/measurements/<date>-<gpu>/; the log is gpu_check.log beside them.
#
# Usage: bash benchmarks/gpu_check.sh
#        GPU_CHECK_REHEARSAL=1 bash benchmarks/gpu_check.sh   # every step on the CPU at toy sizes
# The rehearsal runs the same Python paths, arguments and writers with a micro Swin at 64 px,
# batch 2, one round, gloo instead of NCCL, no AMP, torch.compile with the cheap `eager` backend,
# and without the Triton tests; its folder is <date>-cpu-rehearsal. GPU_CHECK_BUDGET_S sets the
# budget in seconds (default 510 on a GPU: steps that would start past it are skipped).
set -uo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
REHEARSAL=${GPU_CHECK_REHEARSAL:-0}
if [ "$REHEARSAL" = 1 ]; then
  DEVICE=cpu IMAGE=64 BATCH=2 ROUNDS=1 WARMUP=1 CPA_ROUNDS=1 BACKBONE=swin_micro COMPILE_BACKEND=eager
  E2E_BATCH=2 E2E_TRAIN=4 E2E_VAL=2 E2E_EPOCHS=2 E2E_EVAL_EVERY=1 E2E_WORKERS=0 MIN_RUN_TIME=0.01
  BUDGET=${GPU_CHECK_BUDGET_S:-7200} SCALE=10  # step times: a small shared CPU, not an H100
  export OMP_NUM_THREADS=1  # the CPU machines are small and shared
  EXPECT=(--expect device=cpu --expect amp=False --expect kernel=torch) PG_BACKEND=gloo
  E2E_MODEL=(--backbone swin_micro --set image_size="$IMAGE")
else
  DEVICE=cuda IMAGE=448 BATCH=32 ROUNDS=10 WARMUP=2 CPA_ROUNDS=20 BACKBONE=swin_tiny_patch4_window7_224
  COMPILE_BACKEND=inductor E2E_BATCH=32 E2E_TRAIN=128 E2E_VAL=4 E2E_EPOCHS=5 E2E_EVAL_EVERY=2 E2E_WORKERS=4
  MIN_RUN_TIME=0.2
  BUDGET=${GPU_CHECK_BUDGET_S:-510} SCALE=1
  EXPECT=(--expect device=cuda --expect amp=True --expect kernel=triton) PG_BACKEND=nccl
  E2E_MODEL=()
fi
# Under torchrun even one process joins the process group and trains inside DDP
# (mtpeft_bench/train/distributed.py), so the records name the backend.
EXPECT+=(--expect world_size=1 --expect backend=$PG_BACKEND --expect "evaluation=original size")

# Where everything goes: $OUT comes back from the device machine.
GPU=$($PY - "$DEVICE" "$REHEARSAL" <<'PYEOF'
import re, sys, torch
if sys.argv[2] == "1" or sys.argv[1] == "cpu" or not torch.cuda.is_available():
    print("cpu-rehearsal" if sys.argv[2] == "1" else "cpu"); sys.exit()
name = torch.cuda.get_device_name()
match = re.search(r"[HAL]\d{2,3}S?|V100|RTX \d{4}", name)  # H100, H200, A100, L40S, L4 ... else the whole name
fragment = match.group(0) if match else name
print(re.sub(r"[^a-z0-9]+", "-", fragment.lower()).strip("-"))
PYEOF
)
GPU=${GPU:-unknown}
if [ -n "${OUT:-}" ]; then BASE="$OUT/measurements"; else BASE="$PWD/benchmarks/measurements"; fi
DIR="$BASE/$(date -u +%F)-$GPU"
mkdir -p "$DIR"
LOG="$DIR/gpu_check.log"
exec > >(tee "$LOG") 2>&1
WORK=$(mktemp -d)
step() { echo; echo "== $* ($(date -u +%T), ${SECONDS}s of ${BUDGET}s)"; }
# budget WANT NEED: the seconds a step may take (WANT, or what is left of the budget); fails, printing
# nothing, when less than NEED seconds are left (the step would be cut off before it wrote anything).
budget() {
  local left=$((BUDGET - SECONDS - 10)) want=$(($1 * SCALE)) need=$(($2 * SCALE))
  [ "$left" -ge "$need" ] && echo $((left < want ? left : want))
}
META=$($PY -c "import json, sys, datetime, torch; print(json.dumps({'date': datetime.date.today().isoformat(), 'device': sys.argv[1], 'torch': torch.__version__, 'git': sys.argv[2], 'rehearsal': sys.argv[3] == '1'}))" \
  "$( [ "$DEVICE" = cuda ] && nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1 || echo cpu)" \
  "$(git log --oneline -1 2>/dev/null | cut -c1-60)" "$REHEARSAL")
report() {
  timeout 60 $PY benchmarks/check_report.py --out-dir "$DIR" --meta "$META" \
    --speed "$DIR/speed_eager.json" "$DIR/speed_compile_full.json" "$DIR/speed_compile_ditask.json" --traffic "$DIR/traffic_weight.json" \
    --e2e "$DIR/e2e.json" > "$WORK/report.txt" && echo "tables: ${DIR}/gpu_check.md" || echo "check_report.py failed"
}
echo "writing into $DIR"

step "environment"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
$PY -c "import sys, torch; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda)"
$PY -c "import triton; print('triton', triton.__version__)" 2>/dev/null || echo "no triton"
git log --oneline -1 2>/dev/null || true

step "install (no network)"
if ! $PY -c "import mtpeft_bench.methods.ditask" 2>/dev/null; then
  if ! timeout 90 $PY -m pip install --no-deps --no-build-isolation -q -e . ; then
    # Fallback: the package layout maps methods/ and tasks/ under mtpeft_bench; rebuild it with links.
    SHIM=$WORK/shim
    mkdir -p "$SHIM/mtpeft_bench"
    for f in mtpeft_bench/*; do ln -s "$PWD/$f" "$SHIM/mtpeft_bench/"; done
    ln -s "$PWD/methods" "$SHIM/mtpeft_bench/methods"
    ln -s "$PWD/tasks" "$SHIM/mtpeft_bench/tasks"
    export PYTHONPATH="$SHIM${PYTHONPATH:+:$PYTHONPATH}"
    echo "editable install failed; running from $SHIM"
  fi
fi
$PY -c "import mtpeft_bench.methods.ditask as d; print('mtpeft_bench ok:', d.__file__)"

step "side by side: $BACKBONE, $IMAGE px, batch $BATCH, AMP on CUDA (medians of $ROUNDS alternating steps)"
timeout "$(budget 240 60 || echo 1)" $PY benchmarks/ditask_speed.py --device "$DEVICE" --backbone "$BACKBONE" \
  --image "$IMAGE" --batch "$BATCH" --rounds "$ROUNDS" --warmup "$WARMUP" --cpa-rounds "$CPA_ROUNDS" --flops \
  --variants full,full_streams,ditask,ditask_dense,ditask_factored,ditask_residual,ditask_shared,lora,mtlora \
  --profile "$DIR/profiles.txt" --json "$DIR/speed_eager.json"

step "DiTASK's mode chooser: traffic weight measured beside its estimate"
timeout "$(budget 60 20 || echo 1)" $PY benchmarks/cost_weight.py --device "$DEVICE" --batch "$BATCH" --image "$IMAGE" \
  --min-run-time "$MIN_RUN_TIME" --json "$DIR/traffic_weight.json"
report

step "miniature PASCAL_MT and NYUD_MT"
DATA=$WORK/data
timeout 120 $PY benchmarks/make_mini_datasets.py "$DATA" --train "$E2E_TRAIN" --val "$E2E_VAL"

RESULTS=$WORK/results
for dataset in pascal_mt nyud; do
  for method in ditask mtlora; do
    T=$(budget 120 60) || { echo "no budget left for $dataset/$method"; continue; }
    step "end to end: $method on miniature $dataset, paper preset, torchrun 1 process"
    timeout "$T" $PY -m torch.distributed.run --standalone --nproc_per_node 1 -m mtpeft_bench run \
      --method "$method" --dataset "$dataset" --data-root "$DATA" --preset paper --weights none "${E2E_MODEL[@]}" \
      --device "$DEVICE" --batch-size "$E2E_BATCH" --epochs "$E2E_EPOCHS" --set warmup_epochs=1 --set eval_every="$E2E_EVAL_EVERY" \
      --set data.protocol=mtinet --set num_workers="$E2E_WORKERS" --set measure_repeats=5 \
      --set runs_dir="$WORK/runs" --no-progress --out "$RESULTS" 2>&1 | grep -v "^Cosine annealing" | tail -12
  done
done
timeout 60 $PY benchmarks/e2e_check.py "$RESULTS" "${EXPECT[@]}" \
  --runs pascal_mt:ditask,pascal_mt:mtlora,nyud:ditask,nyud:mtlora --json "$DIR/e2e.json"
mkdir -p "$DIR/e2e_results" && find "$RESULTS" -name "*.json" -exec cp {} "$DIR/e2e_results/" \; 2>/dev/null
report

if [ "$DEVICE" = cuda ]; then
  if T=$(budget 90 45); then
    step "Triton kernel tests on CUDA; metric meters on CUDA"
    timeout "$T" $PY -m pytest -q -p no:cacheprovider -m "" -rs -x tests/test_ditask_triton.py
    timeout 30 $PY -m pytest -q -p no:cacheprovider -m gpu tests/test_metrics.py
  else
    echo "no budget left for the Triton tests"
  fi
fi

# One process per model: a compilation cut off by the budget loses only its own pair.
for variant in full ditask; do
  if T=$(budget 200 90); then
    step "eager vs torch.compile ($COMPILE_BACKEND): $variant"
    timeout "$T" $PY benchmarks/ditask_speed.py --device "$DEVICE" --backbone "$BACKBONE" --image "$IMAGE" \
      --batch "$BATCH" --rounds "$ROUNDS" --warmup 2 --cpa-rounds 0 --flops --compile-backend "$COMPILE_BACKEND" \
      --variants "$variant,$variant+compile" --json "$DIR/speed_compile_$variant.json"
    report
  else
    echo "no budget left for torch.compile of $variant"
  fi
done
cat "$WORK/report.txt" 2>/dev/null

step "done in ${SECONDS}s; everything in $DIR"
