#!/usr/bin/env bash
# `make demo`: the product end to end on built-in synthetic clips, CPU only, no downloads.
#   train -> evaluate (+ shuffled-frame control) -> ONNX fp32 + fp16 (verified) + int8 for CPUs (calibrated, gated by
#   agreement) -> TensorRT engines (if a TensorRT is installed; TensorRT for RTX builds on a CPU) -> runtime.load vs
#   PyTorch + streaming -> quick latency look.
set -euo pipefail
PY=${PY:-python3}
DIR=${DEMO_DIR:-runs/demo}
start=$(date +%s)
step() { printf '\n=== [%3ss] %s\n' "$(( $(date +%s) - start ))" "$*"; }

step "1/6 train on synthetic clips (class = direction of motion, so frame order matters)"
$PY -m train --preset demo --out "$DIR" --force --no-progress

step "2/6 evaluate on held-out clips, and on the same clips with their frames shuffled"
$PY -m train.evaluate "$DIR/best.pt" --data synthetic --frames 8 --val-clips 512 --confusion "$DIR/confusion.png" --json "$DIR/eval.json" --force

step "3/6 export model/cnn/bilstm graphs in fp32 and fp16 (each verified against PyTorch), and int8 for CPUs"
$PY -m export.to_onnx "$DIR/best.pt" --out "$DIR/onnx" --precision all-default
echo "int8 for ONNX Runtime on CPUs: calibrated on training clips, checked against fp32 on held-out clips"
$PY -m export.quantize "$DIR/onnx/fp32" --out "$DIR/onnx/int8" --data synthetic --frames 8 --force

step "4/6 build TensorRT FP16 engines (whichever TensorRT is installed)"
# A builder is used only when it really builds here (a one-layer network), not merely because its module imports.
if why=$($PY -c "from export.to_trt import builder_unavailable_reason as r; print(r() or '')") && [ -z "$why" ]; then
    for g in model cnn bilstm; do
        # --force: a previous demo run's engines (of other graphs once retrained) are the demo's own to replace.
        $PY -m export.to_trt "$DIR/onnx/fp16/$g.onnx" --out "$DIR/engines/$g.engine" \
            --timing-cache "$DIR/engines/timing.cache" --force
    done
    echo "Engines built. Running them needs a GPU that the installed TensorRT supports (TensorRT for RTX: RTX-class"
    echo "GPUs, compute capability 8.6/8.9/12.0; full TensorRT: any recent NVIDIA GPU)."
else
    echo "skipped the TensorRT engine builds: ${why:-the probe failed} (pip install '.[trt-rtx]' or '.[trt]')"
fi

step "5/6 runtime: load the exported graphs, compare with PyTorch on held-out clips, stream a clip frame by frame"
$PY scripts/demo_runtime.py "$DIR"

step "6/6 quick latency look (B=1, T=16; a quick look, the full suite is: make bench)"
$PY -m benchmarks.quick "$DIR/best.pt" --onnx-dir "$DIR/onnx/fp32" --int8-dir "$DIR/onnx/int8"

step "done: artifacts in $DIR"
