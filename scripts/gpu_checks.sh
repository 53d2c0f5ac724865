#!/usr/bin/env bash
# The measurements that need an NVIDIA GPU and a many-core host, as one
# script. It needs no Rust and no network there: `make gpu-stage` puts
# stripped release binaries, the shared libraries they may miss, a
# python-zstandard wheel, the Fashion-MNIST tree, foolbox's 20 photos and
# 120 ImageNet photos under gpu-stage/ (about 55 MB). The host needs python3
# with torch (the libtorch the binaries link), numpy and Pillow.
#
#   bash scripts/gpu_checks.sh            # default sections, ~6 minutes
#   SECTIONS="bench ceiling" bash scripts/gpu_checks.sh
#
# Sections:
#   bench    `trainer bench` at batch 128 and 512, float32 and bf16, our
#            kernels on and off, eager (`--cuda-graph off`) and CUDA-graph
#            replay, the defaults (`auto`), and the PyTorch eager reference
#            (benches/torch_alexnet_ref.py --groups) in the same call.
#   ceiling  the same net without LRN (benches/alexnet_ops_profile.py
#            --lrn none --graph): the ceiling of this design.
#   train    `trainer run` fed by the loader on shards of real photos (the
#            120 photos linked 67 times: 8,040 images), bf16, eager and
#            replayed from a graph (the default with one GPU): img/s and
#            the time each step waits for the loader.
#   pipeline `pipeline shards` against Pillow + python-zstandard at 1..16
#            jobs (benches/shards_scaling.py), `pipeline bench` at 1..16
#            threads and `pipeline stats --bench` at 16, each against its
#            zstd ceiling.
#   fashion  the paper's N(0, 0.01) init at full width, float32, leaving
#            chance on Fashion-MNIST.
#   demo     scripts/demo.py as a user with a GPU runs it (`make demo`).
#   threads  (not by default) `trainer run` at 16, 15 and 8 loader threads,
#            eager, and 15 with --cuda-graph: whether the loader's workers
#            take the training thread's core; the losses of eager and graph
#            runs side by side.
#   graphcheck (not by default) per-step losses of the same 24 steps
#            (Fashion-MNIST, float32, seed 0) eager and replayed from a CUDA
#            graph, side by side.
#   nccl     (not by default) one rank through the data-parallel path with
#            NCCL (`trainer launch --nproc-per-node 1 -- ... --dist-backend
#            nccl`) beside the plain process: `trainer bench` img/s (the
#            all-reduce path's overhead) and 24 Fashion-MNIST steps' losses
#            (the same: a sum over one rank changes nothing).
#   levels   (not by default) the loader (`pipeline bench --threads 2`) and
#            the stats pass (`--jobs 2`) against their zstd ceilings, 3
#            rounds at the CPU's widest kernels and 3 with PIPELINE_SIMD=avx2,
#            alternated: the 2-thread ceiling goals on an AVX-512 host.
#   scale    (not by default) the loader and stats at 16 threads on 40,200
#            images, and `pipeline shards` at 1 and 16 jobs on 4,800: runs
#            long enough that start-up costs do not hide the scaling.
#
# Output: $OUT (default gpu-out/) gets log.txt and one file per section.
# Exit status 1 when a check failed (the kernels' self-checks, --check-lrn's
# comparison of the fused and band LRN steps): log.txt names each.
set -uo pipefail
OUT=${OUT:-$PWD/gpu-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
STAGE=$PWD/gpu-stage
T=$STAGE/trainer
P=$STAGE/pipeline
TORCH_LIB=${TORCH_LIB:-$(python3 -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')}
# The shared libraries travel gzipped; they are unpacked outside the stage.
LIBS=$(mktemp -d)
for z in "$STAGE"/lib/*.gz; do gunzip -c "$z" > "$LIBS/$(basename "${z%.gz}")"; done
export LD_LIBRARY_PATH="$TORCH_LIB:$LIBS:${LD_LIBRARY_PATH:-}"
if ! python3 -c 'import zstandard' 2>/dev/null && ls "$STAGE"/wheels/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site "$STAGE"/wheels/*.whl \
    && export PYTHONPATH=/tmp/site
fi
log() { echo "== $(date +%T) $*" | tee -a "$OUT/log.txt"; }
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c 'import torch; print("torch", torch.__version__, "cudnn", torch.backends.cudnn.version())'
  echo "cores $(nproc): $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2)"
  # Whether the cores are hyperthread siblings bounds the scaling to 16 jobs.
  lscpu | grep -E "^(Thread\(s\) per core|Core\(s\) per socket|Socket\(s\)|NUMA node\(s\))"
  echo "simd: $(grep -o -w -E 'avx2|avx512f|avx512bw|avx512vbmi|avx512_vnni' /proc/cpuinfo | sort -u | tr '\n' ' ')"
  ldd "$T" | grep -E "not found"; "$T" --version; } 2>&1 | tee -a "$OUT/log.txt"

# Per-step losses of two runs' metrics.jsonl, side by side:
# side_by_side TAG NAME_A NAME_B A.jsonl B.jsonl
side_by_side() {
  python3 - "$@" <<'EOF' 2>&1
import json, sys
tag, name_a, name_b, *paths = sys.argv[1:]
runs = [[json.loads(l) for l in open(p)] for p in paths]
losses = [[x["loss"] for x in r if "loader_wait" in x] for r in runs]
for step, (a, b) in enumerate(zip(*losses), 1):
    print(f"{tag} step {step:2d} {name_a} {a:.6f} {name_b} {b:.6f} rel {abs(a - b) / abs(a):.2e}")
EOF
}

SECTIONS=${SECTIONS:-bench ceiling train pipeline fashion demo}
# Checks that must pass; the script exits 1 naming them when one did not.
FAILED=()
want() { [[ " $SECTIONS " == *" $1 "* ]]; }
W=$(mktemp -d)

if want bench; then
  log "bench: trainer bench (every configuration) and the PyTorch eager reference"
  # A bench that fails (a kernel's self-check when it loads, --check-lrn's
  # comparison, a crash) fails the script: see FAILED.
  bench() { echo "# trainer bench $*" >>"$OUT/bench.txt"
            timeout 90 "$T" bench --devices cuda:0 "$@" 2>&1 | tee -a "$OUT/bench.txt"
            [ "${PIPESTATUS[0]}" = 0 ] || FAILED+=("trainer bench $*"); }
  bench --batch-size 128 --kernels on --check-lrn --steps 20
  bench --batch-size 128 --kernels on --check-lrn --amp bf16 --steps 20
  bench --batch-size 128                     # the defaults
  bench --batch-size 128 --amp bf16
  for b in 128 512; do for amp in "" "--amp bf16"; do for k in on off; do
    bench --batch-size $b $amp --kernels $k --cuda-graph off
    bench --batch-size $b $amp --kernels $k --cuda-graph on
  done; done; done
  timeout 150 python3 benches/torch_alexnet_ref.py --groups --batch 128 512 2>&1 | tee -a "$OUT/bench.txt"
fi

if want ceiling; then
  log "ceiling: the net without LRN, whole step in a CUDA graph (PyTorch ops)"
  for cfg in "--batch 128 --prec f32" "--batch 128 --prec bf16" "--batch 512 --prec bf16"; do
    timeout 90 python3 benches/alexnet_ops_profile.py $cfg --lrn none --graph --steps 30 2>&1 \
      | grep -E "^OPS|Error" | tee -a "$OUT/bench.txt"
  done
fi

# An ILSVRC-style tree at $1 of the staged photos, each linked $2 times
# (benches/sample_tree.py, as the CPU benchmarks make theirs).
link_sample() {
  python3 -c 'import sys; sys.path.insert(0, "benches"); import sample_tree; \
    sample_tree.link_tree(sys.argv[1], sys.argv[2], copies=int(sys.argv[3]))' "$STAGE/sample" "$1" "$2"
}

# The 120 staged photos linked 67 times: an 8,040-image train split.
sample_shards() {
  [ -f "$W/sample/stats.json" ] && return
  link_sample "$W/sample-tree" 67
  "$P" shards --imagenet "$W/sample-tree" --out "$W/sample" 2>&1 | tail -1 | tee -a "$OUT/log.txt"
  "$P" stats --shards "$W/sample" 2>&1 | tail -1 | tee -a "$OUT/log.txt"
}

# Median img/s over the run's steps past the first window, and the loader
# wait per step against the step's time.
waits() {
  python3 - "$1" "$2" <<'EOF' 2>&1 | tee -a "$OUT/train.txt"
import json, statistics, sys
r = [json.loads(l) for l in open(sys.argv[1])]
s = [x for x in r if "loader_wait" in x][16:]
rate = statistics.median(x["img_per_sec"] for x in s)
step = 128 / rate
w = sorted(x["loader_wait"] for x in s)
print(f"TRAIN {sys.argv[2]} steps={len(s)} img/s median={rate:.0f} step_ms={1e3 * step:.2f} "
      f"loader_wait_ms median={1e3 * statistics.median(w):.3f} p90={1e3 * w[int(0.9 * len(w))]:.3f} "
      f"max={1e3 * w[-1]:.1f} median_share={statistics.median(w) / step:.2%}")
print("val", [round(x["val_top1"], 3) for x in r if "val_top1" in x])
losses = [x["loss"] for x in r if "loader_wait" in x]
print("mean loss, steps 1-32 / last 32:", round(sum(losses[:32]) / 32, 4), round(sum(losses[-32:]) / 32, 4))
EOF
}

if want train; then
  log "train: trainer run fed by the loader, 8,040 photos, bf16, defaults"
  sample_shards
  timeout 60 "$T" bench --devices cuda:0 --batch-size 128 --amp bf16 2>&1 | tee -a "$OUT/train.txt"
  for name in eager graph; do
    g=on; [ $name = eager ] && g=off
    timeout 120 "$T" run --shards "$W/sample" --out "$W/run-$name" --epochs 3 --amp bf16 \
      --init kaiming --cuda-graph $g --quiet 2>&1 | tail -3 | tee -a "$OUT/train.txt"
    waits "$W/run-$name/metrics.jsonl" "$name"
  done
fi

if want pipeline; then
  log "pipeline: shards at 1..16 jobs against Pillow + zstandard; loader and stats against their ceilings"
  timeout 200 python3 benches/shards_scaling.py --pipeline "$P" --sample "$STAGE/sample" --copies 12 \
    --jobs 1 2 4 8 16 2>&1 | tee -a "$OUT/pipeline.txt"
  sample_shards
  for t in 1 2 4 8 16; do
    timeout 60 "$P" bench --shards "$W/sample" --threads $t --epochs 4 --json 2>&1 | tee -a "$OUT/pipeline.txt"
  done
  timeout 60 "$P" stats --shards "$W/sample" --jobs 16 --bench 2>&1 | tail -4 | tee -a "$OUT/pipeline.txt"
fi

if want fashion; then
  log "fashion: paper init, full width, float32"
  "$P" shards --imagenet "$STAGE/fashion-tree" --out "$W/fashion" 2>&1 | tail -1 | tee -a "$OUT/log.txt"
  "$P" stats --shards "$W/fashion" 2>&1 | tail -1 | tee -a "$OUT/log.txt"
  # An epoch here is 23 steps: the plateau rule would cut the lr while the
  # paper init still sits at chance, so it is kept out of the way.
  timeout 150 "$T" run --devices cuda:0 --shards "$W/fashion" --out "$W/paper" --epochs 12 \
    --init paper --patience 100 --quiet 2>&1 | tail -2 | tee -a "$OUT/fashion.txt"
  grep val_top1 "$W/paper/metrics.jsonl" | cut -c1-80 | tee -a "$OUT/fashion.txt"
  cp "$W/paper/curves.png" "$OUT/paper-curves.png" 2>/dev/null
fi

if want demo; then
  log "demo: scripts/demo.py (make demo) on the GPU"
  # The demo's tree: the Fashion-MNIST tree plus foolbox's 20 photos,
  # put together here as scripts/demo.py does (the Debian package that
  # holds Fashion-MNIST is not on this machine).
  mkdir -p "$W/demo" && cp -r "$STAGE/fashion-tree" "$W/demo/tree"
  python3 -c 'import sys; sys.path.insert(0, "scripts"); import demo; demo.add_photos(sys.argv[1], sys.argv[2])' \
    "$W/demo/tree" "$STAGE/photos" 2>&1 | tee -a "$OUT/log.txt"
  timeout 240 python3 scripts/demo.py --pipeline "$P" --trainer "$T" --photos "$STAGE/photos" --work "$W/demo" \
    >"$OUT/demo.txt" 2>&1
  echo "demo exit $?" | tee -a "$OUT/demo.txt"
  tail -14 "$OUT/demo.txt" | tee -a "$OUT/log.txt"
fi
if want threads; then
  log "threads: trainer run at 16, 15 and 8 loader threads (eager), 15 with --cuda-graph"
  sample_shards
  for cfg in "16 off" "15 off" "8 off" "15 on"; do
    set -- $cfg
    name="t$1"; [ "$2" = on ] && name="t$1-graph"
    timeout 120 "$T" run --shards "$W/sample" --out "$W/run-$name" --epochs 3 --amp bf16 \
      --init kaiming --loader-threads $1 --cuda-graph $2 --quiet 2>&1 | grep -E "^(warning|Error)" | tee -a "$OUT/train.txt"
    waits "$W/run-$name/metrics.jsonl" "$name"
  done
fi

if want nccl; then
  log "nccl: one rank with NCCL through the data-parallel path, beside the plain process"
  for amp in "" "--amp bf16"; do
    timeout 90 "$T" bench --devices cuda:0 --batch-size 128 $amp --cuda-graph off 2>&1 \
      | grep -E "BENCH|rror" | tee -a "$OUT/nccl.txt"
    timeout 120 "$T" launch --nproc-per-node 1 -- bench --devices cuda:0 --batch-size 128 $amp \
      --dist-backend nccl 2>&1 | grep -E "BENCH|rror" | tee -a "$OUT/nccl.txt"
  done
  "$P" shards --imagenet "$STAGE/fashion-tree" --out "$W/fashion" 2>&1 | tail -1 | tee -a "$OUT/log.txt"
  "$P" stats --shards "$W/fashion" 2>&1 | tail -1 | tee -a "$OUT/log.txt"
  timeout 90 "$T" run --devices cuda:0 --shards "$W/fashion" --out "$W/plain" --max-steps 24 \
    --init kaiming --quiet --cuda-graph off 2>&1 | grep -E "^(warning|Error)" | tee -a "$OUT/nccl.txt"
  timeout 120 "$T" launch --nproc-per-node 1 -- run --devices auto --shards "$W/fashion" \
    --out "$W/nccl1" --max-steps 24 --init kaiming --quiet --dist-backend nccl 2>&1 \
    | grep -E "(warning|rror)" | tee -a "$OUT/nccl.txt"
  side_by_side NCCL1 plain nccl-world-1 "$W/plain/metrics.jsonl" "$W/nccl1/metrics.jsonl" \
    | tee -a "$OUT/nccl.txt"
fi

if want graphcheck; then
  log "graphcheck: the same 24 steps eager and with --cuda-graph"
  "$P" shards --imagenet "$STAGE/fashion-tree" --out "$W/fashion" 2>&1 | tail -1 | tee -a "$OUT/log.txt"
  "$P" stats --shards "$W/fashion" 2>&1 | tail -1 | tee -a "$OUT/log.txt"
  for g in off on; do
    timeout 90 "$T" run --devices cuda:0 --shards "$W/fashion" --out "$W/check-$g" --max-steps 24 \
      --init kaiming --quiet --cuda-graph $g 2>&1 | grep -E "^(val|warning|Error)" | tee -a "$OUT/train.txt"
  done
  side_by_side GRAPHCHECK eager graph "$W/check-off/metrics.jsonl" "$W/check-on/metrics.jsonl" \
    | tee -a "$OUT/train.txt"
fi

if want levels; then
  log "levels: loader and stats at 2 threads against their ceilings, widest kernels and avx2"
  sample_shards
  widest=$("$P" bench --shards "$W/sample" --threads 1 --epochs 1 --json 2>/dev/null \
    | python3 -c 'import json, sys; print(json.load(sys.stdin)["simd"])')
  for round in 1 2 3; do for level in "$widest" avx2; do
    echo "# round $round simd $level" >>"$OUT/pipeline.txt"
    PIPELINE_SIMD=$level timeout 60 "$P" stats --shards "$W/sample" --jobs 2 --bench 2>&1 \
      | tail -5 | tee -a "$OUT/pipeline.txt"
    PIPELINE_SIMD=$level timeout 60 "$P" bench --shards "$W/sample" --threads 2 --epochs 4 --json \
      2>>"$OUT/pipeline.txt" | tee -a "$OUT/pipeline.txt" >"$W/levels-$level-$round.json"
  done; done
  python3 - "$W" "$widest" <<'EOF' 2>&1 | tee -a "$OUT/pipeline.txt"
import json, statistics, sys
work, widest = sys.argv[1:]
for level in dict.fromkeys([widest, "avx2"]):
    runs = [json.load(open(f"{work}/levels-{level}-{r}.json")) for r in (1, 2, 3)]
    for key in ("ratio", "steady_ratio", "ratio_to_parallel_ceiling", "images_per_sec"):
        values = [x[key] for x in runs]
        print(f"LEVELS {level} loader {key}: {', '.join(f'{v:.3f}' for v in values)}; "
              f"median {statistics.median(values):.3f}")
EOF
fi

if want scale; then
  log "scale: loader and stats at 16 threads on 40,200 images; shards at 1 and 16 jobs on 4,800"
  link_sample "$W/big-tree" 335
  "$P" shards --imagenet "$W/big-tree" --out "$W/big" 2>&1 | tail -1 | tee -a "$OUT/pipeline.txt"
  # The stats first: the loader's train mode needs them (PCA lighting).
  timeout 90 "$P" stats --shards "$W/big" --jobs 16 --bench 2>&1 | tail -4 | tee -a "$OUT/pipeline.txt"
  for t in 1 16; do
    timeout 90 "$P" bench --shards "$W/big" --threads $t --epochs 2 --json 2>&1 | tee -a "$OUT/pipeline.txt"
  done
  timeout 150 python3 benches/shards_scaling.py --pipeline "$P" --sample "$STAGE/sample" --copies 40 \
    --jobs 1 16 2>&1 | tee -a "$OUT/pipeline.txt"
fi
if ((${#FAILED[@]})); then
  log "FAILED: ${#FAILED[@]} check(s)"
  printf '  %s\n' "${FAILED[@]}" | tee -a "$OUT/log.txt"
  exit 1
fi
log "done"
