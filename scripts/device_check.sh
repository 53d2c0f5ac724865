#!/usr/bin/env bash
# The GPU checks of the trainer issue, as one script for the device tool.
# Prepare here with `make device-stage` (stripped release binaries and the
# Fashion-MNIST JPEG tree under device/), then run there:
#
#   run(command="bash scripts/device_check.sh", carry=["device"], timeout_s=540)
#
# 1. `trainer bench` for the paper model next to the PyTorch eager reference
#    (benches/torch_alexnet_ref.py --groups), same machine, same call.
# 2. The paper's N(0, 0.01) init at full width learning Fashion-MNIST over a
#    few epochs on the GPU.
# Everything it prints is also written under $OUT.
set -uo pipefail
OUT=${OUT:-/tmp/device-out}
mkdir -p "$OUT"
TORCH_LIB=$(python3 -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')
export LD_LIBRARY_PATH="$TORCH_LIB:$PWD/device/lib:${LD_LIBRARY_PATH:-}"
# The shared libraries travel gzipped (the carry limit is 64 MiB).
for z in device/lib/*.gz; do [ -f "${z%.gz}" ] || gunzip -k "$z"; done
T=device/trainer
P=device/pipeline
log() { echo "== $*" | tee -a "$OUT/log.txt"; }
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee -a "$OUT/log.txt"

log "bench: ours vs PyTorch eager reference"
for args in "--batch-size 128" "--batch-size 128 --amp bf16" "--batch-size 512 --amp bf16"; do
  timeout 120 $T bench --devices cuda:0 $args --steps 40 --warmup 10 2>&1 | tee -a "$OUT/bench.txt"
done
timeout 240 python3 benches/torch_alexnet_ref.py --groups --batch 128 512 2>&1 | tee -a "$OUT/bench.txt"

log "paper init, full width, Fashion-MNIST"
W=$(mktemp -d)
$P shards --imagenet device/fashion-tree --out "$W/shards" >/dev/null && $P stats --shards "$W/shards" >/dev/null
timeout 200 $T run --devices cuda:0 --shards "$W/shards" --out "$OUT/fashion-paper" --epochs 15 \
  --batch-size 128 --init paper --quiet 2>&1 | tee -a "$OUT/log.txt"
rm -rf "$OUT/fashion-paper/checkpoints"
grep val_top1 "$OUT/fashion-paper/metrics.jsonl" | tee -a "$OUT/log.txt"
