#!/usr/bin/env bash
# Everything this project checks on an NVIDIA GPU, in one run of about 8 minutes:
#   1. benchmarks/gpu_run.sh without its variants step: GPU-marked tests, the latency suite at the default CUDA
#      grid, the report;
#   2. the reference CIFAR-10 experiment on the GPU (--preset cifar10-gpu: ResNet-34, cifar stem, T=8 clips of one
#      class) for CIFAR_EPOCHS epochs (default 15) within CIFAR_TIMEOUT seconds (default 180), then
#      `python -m train.evaluate` on the test split (frame, clip and per-class accuracy, shuffled control).
# Usage (repository root; the repo on PYTHONPATH, not installed):
#   bash scripts/gpu_session.sh OUTDIR [CIFAR10_ZIP]
# CIFAR10_ZIP holds cifar10/{train,test}/<class>/*.jpg (an ImageFolder tree); without it step 2 is skipped.
# OUTDIR stays flat with at most 8 files (7 from gpu_run.sh + cifar.log).
set -u -o pipefail
OUT=${1:?usage: bash scripts/gpu_session.sh OUTDIR [CIFAR10_ZIP]}
ZIP=${2:-.gpu_data/cifar10.zip}
PY=${PY:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
T0=$(date +%s)

# The fast-path variants (gpu_run.sh step 5, ~3 min) do not fit beside training: run gpu_run.sh alone for them.
VARIANTS=${VARIANTS:-none} GPU_TESTS_TIMEOUT=${GPU_TESTS_TIMEOUT:-100} BENCH_TIMEOUT=${BENCH_TIMEOUT:-210} \
  bash benchmarks/gpu_run.sh "$OUT"

CIFAR_EPOCHS=${CIFAR_EPOCHS:-15}
CIFAR_TIMEOUT=${CIFAR_TIMEOUT:-180}
if [ -f "$ZIP" ]; then
  {
    echo "=== CIFAR-10 on the GPU: ResNet-34 cifar stem, T=8, $CIFAR_EPOCHS epochs (cap ${CIFAR_TIMEOUT}s), data $ZIP"
    timeout 60 "$PY" -c "import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])" "$ZIP" /tmp/gpu_data
    timeout -s INT -k 15 "$CIFAR_TIMEOUT" "$PY" -m train --preset cifar10-gpu --data-dir /tmp/gpu_data/cifar10 \
      --epochs "$CIFAR_EPOCHS" --workers 12 --out /tmp/cifar-gpu --force --no-progress
    echo "train rc=$? after $(( $(date +%s) - T0 ))s"
    echo "=== metrics.json"; cat /tmp/cifar-gpu/metrics.json
    echo "=== evaluate best.pt on the test split"
    timeout 90 "$PY" -m train.evaluate /tmp/cifar-gpu/best.pt --data cifar10 --data-dir /tmp/gpu_data/cifar10 \
      --frames 8 --workers 12 --json /tmp/cifar-gpu/eval.json --force
    echo "evaluate rc=$?"
  } > "$OUT/cifar.log" 2>&1
  tail -n 25 "$OUT/cifar.log"
else
  echo "no $ZIP: CIFAR-10 step skipped"
fi
echo "gpu_session done in $(( $(date +%s) - T0 ))s; files: $(ls "$OUT" | tr '\n' ' ')"
