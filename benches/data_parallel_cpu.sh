#!/usr/bin/env bash
# Data-parallel training on this machine's CPU, through c10d's Gloo:
#   1. `trainer bench` alone and under `trainer launch` (2 ranks, float32 and
#      bfloat16 gradients): img/s per rank and the share of a step spent
#      waiting for the gradient all-reduce.
#   2. The learn-fashion recipe (width 0.25, global batch 64, 240 steps,
#      Kaiming init) on 1 process and on 2 ranks with float32 and bfloat16
#      gradients: the loss curves and val top-1 side by side.
#
# Usage: benches/data_parallel_cpu.sh OUT_DIR [FASHION_SHARDS]
# Needs `make build` and the Fashion-MNIST shards of `make learn-fashion`.
set -euo pipefail
out=${1:?usage: benches/data_parallel_cpu.sh OUT_DIR [FASHION_SHARDS]}
shards=${2:-$HOME/.cache/alexnet-rs/fashion-mnist/shards}
trainer=${TRAINER:-target/release/trainer}
mkdir -p "$out"

bench=(bench --devices cpu --width-mult 0.25 --batch-size 64 --steps 10 --warmup 2)
{
  echo "# $(date -u +%FT%TZ) $(nproc) cores: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2)"
  echo "## one process, batch 64"
  "$trainer" "${bench[@]}" 2>/dev/null
  for comm in f32 bf16; do
    echo "## 2 ranks of batch 64 each (global 128), --grad-comm $comm"
    "$trainer" launch --nproc-per-node 2 -- "${bench[@]}" --grad-comm "$comm" 2>/dev/null
  done
} | tee "$out/bench-ranks.txt"

run=(run --shards "$shards" --devices cpu --width-mult 0.25 --batch-size 64 --max-steps 240
     --init kaiming --quiet)
rm -rf "$out/fashion-1" "$out/fashion-2-f32" "$out/fashion-2-bf16"
"$trainer" "${run[@]}" --out "$out/fashion-1" > "$out/fashion-1.txt"
for comm in f32 bf16; do
  "$trainer" launch --nproc-per-node 2 -- "${run[@]}" --out "$out/fashion-2-$comm" \
    --grad-comm "$comm" > "$out/fashion-2-$comm.txt"
done
python3 - "$out" <<'EOF' | tee "$out/fashion-curves.txt"
import json, sys
out = sys.argv[1]
runs = ["fashion-1", "fashion-2-f32", "fashion-2-bf16"]
lines = {r: [json.loads(l) for l in open(f"{out}/{r}/metrics.jsonl")] for r in runs}
steps = {r: [l for l in lines[r] if "loss" in l] for r in runs}
print("mean loss over 20-step windows (1 process | 2 ranks f32 | 2 ranks bf16)")
for w in range(0, 240, 20):
    means = [sum(l["loss"] for l in steps[r][w:w + 20]) / 20 for r in runs]
    print(f"steps {w + 1:3d}-{w + 20:3d}: " + "  ".join(f"{m:.4f}" for m in means))
for r in runs:
    ev = [l for l in lines[r] if "val_top1" in l][-1]
    print(f"{r}: val top-1 {100 * ev['val_top1']:.1f}%  top-5 {100 * ev['val_top5']:.1f}%  "
          f"loss {ev['val_loss']:.4f} at step {ev['step']}")
EOF
for r in fashion-1 fashion-2-f32 fashion-2-bf16; do
  mv "$out/$r/metrics.jsonl" "$out/$r.jsonl" && rm -rf "${out:?}/$r"
done
