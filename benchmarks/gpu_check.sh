#!/usr/bin/env bash
# masksmith's CUDA paths end to end, on a machine with a GPU: train the clothing data for two minutes (the default
# command: the plan's GPU size cap, its choices timed on the GPU, 16-bit mixed precision, channels_last), evaluate,
# predict, export to ONNX (and run it on ONNX Runtime's CUDA provider when onnxruntime-gpu is installed), serve one
# request with --device cuda, train with --devices N when there are N >= 2 GPUs; then print one table: images/s of
# training (mixed precision on and off) and inference, GPU memory, the plan's choices.
#
#   benchmarks/gpu_check.sh [--data DIR] [--minutes 2] [--devices N] [--out DIR]
#   benchmarks/gpu_check.sh --dry-run [--out DIR]     # every command on the CPU at toy size, in about a minute
#
# --dry-run runs the same commands on the CPU with 12 generated 64x64 images, a small random-weight network and
# seconds of training (two processes for --devices), so a broken command shows before a GPU is lent; its numbers
# are CPU numbers of a toy and say nothing about a GPU. Without --dry-run and without a GPU it stops (exit 2).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DATA="${MASKSMITH_CLOTHING:-$REPO/../shared/data/clothing-co-parsing}"
MINUTES=2
DEVICES=""
OUT=""
DRY=0
while [[ $# -gt 0 ]]; do
    case "$1" in
        --dry-run) DRY=1; shift ;;
        --data) DATA="$2"; shift 2 ;;
        --minutes) MINUTES="$2"; shift 2 ;;
        --devices) DEVICES="$2"; shift 2 ;;
        --out) OUT="$2"; shift 2 ;;
        -h|--help) sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "gpu_check.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
OUT="${OUT:-$REPO/runs/gpu_check}"
PY="${PYTHON:-python}"
HELPER=("$PY" "$REPO/benchmarks/gpu_check.py")
CHECK="$OUT/check"
if [[ -e "$OUT/run" ]]; then
    echo "gpu_check.sh: $OUT already holds a check; give another --out or remove it" >&2
    exit 2
fi
mkdir -p "$CHECK"

if [[ $DRY == 1 ]]; then
    DEVICE=cpu
    "${HELPER[@]}" toy-data "$OUT/toy"
    DATA="$OUT/toy"
    # A random-weight EfficientNet-Lite0 U-Net at a toy size; the budget plan still times it (and its precision).
    TRAIN_OPTIONS=(--encoder efficientnet_lite0 --size 64 --batch-size 4 --epochs 2 --max-time 0.5 --workers 0)
    DDP_COUNT=2
else
    DEVICE=cuda
    if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
        echo "gpu_check.sh: no CUDA GPU here (torch.cuda.is_available() is False); --dry-run checks the commands" >&2
        exit 2
    fi
    [[ -d "$DATA" ]] || { echo "gpu_check.sh: no data folder $DATA (give --data)" >&2; exit 2; }
    TRAIN_OPTIONS=(--max-time "$MINUTES")
    GPUS=$("$PY" -c 'import torch; print(torch.cuda.device_count())')
    DDP_COUNT="${DEVICES:-$GPUS}"
fi
export PYTHONUNBUFFERED=1

step() { echo; echo "== $*"; }

# GPU memory in use, sampled every 200 ms while training (nvidia-smi counts every process, the DDP ones too).
SAMPLER=""
start_sampling() {
    if command -v nvidia-smi > /dev/null && [[ $DEVICE == cuda ]]; then
        nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 200 > "$CHECK/gpu_memory.csv" &
        SAMPLER=$!
    fi
}
stop_sampling() {
    if [[ -n "$SAMPLER" ]]; then
        kill "$SAMPLER" 2> /dev/null || true
        wait "$SAMPLER" 2> /dev/null || true
        SAMPLER=""
        sort -n "$CHECK/gpu_memory.csv" | tail -1 > "$CHECK/gpu_memory_peak.txt"
    fi
}
SERVER=""
cleanup() {
    stop_sampling
    if [[ -n "$SERVER" ]]; then kill "$SERVER" 2> /dev/null || true; fi
}
trap cleanup EXIT

step "device"
"${HELPER[@]}" device --device "$DEVICE" --out "$CHECK/device.json"

step "train: masksmith train $DATA --device $DEVICE ${TRAIN_OPTIONS[*]}"
start_sampling
masksmith train "$DATA" --device "$DEVICE" "${TRAIN_OPTIONS[@]}" --out "$OUT/run" -q
stop_sampling
BUNDLE="$OUT/run/model.msb"

step "train step, mixed precision on and off"
"${HELPER[@]}" train-speed "$OUT/run" --device "$DEVICE" --out "$CHECK/train_speed.json"

step "evaluate"
masksmith evaluate "$BUNDLE" "$DATA" --out "$OUT/evaluate" -q

step "inference speed"
"${HELPER[@]}" infer-speed "$BUNDLE" --device "$DEVICE" --out "$CHECK/infer_speed.json"

step "predict"
mapfile -t IMAGES < <(find "$DATA/images" -maxdepth 1 -type f | sort | head -8)
masksmith predict "$BUNDLE" "${IMAGES[@]}" --device "$DEVICE" --out "$OUT/predict" -q

step "export"
masksmith export "$BUNDLE" --out "$OUT/model.onnx"
"${HELPER[@]}" ort "$OUT/model.onnx" --device "$DEVICE" --out "$CHECK/ort.json"

step "serve one request"
masksmith serve "$BUNDLE" --device "$DEVICE" --port 0 -q > "$CHECK/serve.log" 2>&1 &
SERVER=$!
URL=""
for _ in $(seq 600); do  # up to 60 s for the model to load and the URL to be printed
    URL=$(grep -o 'http://127\.0\.0\.1:[0-9]*/' "$CHECK/serve.log" | head -1 || true)
    READY="import sys, urllib.request; urllib.request.urlopen(sys.argv[1] + 'readyz', timeout=2)"
    [[ -n "$URL" ]] && "$PY" -c "$READY" "$URL" 2> /dev/null && break
    kill -0 "$SERVER" 2> /dev/null || { cat "$CHECK/serve.log" >&2; echo "gpu_check.sh: serve exited" >&2; exit 1; }
    URL=""
    sleep 0.1
done
[[ -n "$URL" ]] || { cat "$CHECK/serve.log" >&2; echo "gpu_check.sh: serve did not become ready" >&2; exit 1; }
"${HELPER[@]}" request "$URL" "${IMAGES[0]}" "$OUT/served.png" --out "$CHECK/serve.json"
kill "$SERVER"
wait "$SERVER" 2> /dev/null || true
SERVER=""

if [[ "${DDP_COUNT:-0}" -ge 2 ]]; then
    step "train --devices $DDP_COUNT"
    masksmith train "$DATA" --device "$DEVICE" --devices "$DDP_COUNT" "${TRAIN_OPTIONS[@]}" --out "$OUT/ddp" -q
else
    echo "skipped: one GPU (--devices needs 2 or more)" > "$CHECK/ddp_skipped.txt"
fi

"${HELPER[@]}" table "$OUT"
