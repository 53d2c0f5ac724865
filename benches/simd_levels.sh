#!/usr/bin/env bash
# The loader and the statistics pass at each SIMD level this CPU has
# (`PIPELINE_SIMD`), alternated in one call, against their zstd ceilings.
#
#   benches/simd_levels.sh PIPELINE SHARD_DIR OUT_DIR [ROUNDS] [LEVELS]
#
# SHARD_DIR needs stats.json (`pipeline stats`). LEVELS defaults to
# "ssse3 avx2" (plus avx512 where the CPU has it). Writes levels-loader.jsonl
# (`pipeline bench --threads 2 --epochs 4 --json`, plus output f32) and
# levels-stats.txt (`pipeline stats --jobs 2 --bench`) to OUT_DIR and
# prints medians per level.
set -euo pipefail
bin=$(realpath "$1"); shards=$(realpath "$2"); out=$(realpath -m "$3")
rounds=${4:-3}
levels=${5:-"ssse3 avx2 $(grep -q avx512vbmi /proc/cpuinfo && echo avx512)"}
mkdir -p "$out"
: >"$out/levels-loader.jsonl"; : >"$out/levels-stats.txt"
for round in $(seq 1 "$rounds"); do
  for level in $levels; do
    for output in u8 f32; do
      PIPELINE_SIMD=$level "$bin" bench --shards "$shards" --threads 2 --epochs 4 --output "$output" --json 2>/dev/null \
        | python3 -c "import json,sys; d=json.load(sys.stdin); d.update(round=$round); print(json.dumps(d))" \
        >>"$out/levels-loader.jsonl"
    done
    echo "# $level round $round" >>"$out/levels-stats.txt"
    PIPELINE_SIMD=$level "$bin" stats --shards "$shards" --jobs 2 --bench 2>/dev/null \
      | grep -E 'passes|single-thread|simd' >>"$out/levels-stats.txt"
  done
done
python3 - "$out" <<'PY'
import json, statistics, sys
out = sys.argv[1]
rows = [json.loads(l) for l in open(f"{out}/levels-loader.jsonl")]
for output in ("u8", "f32"):
    for level in dict.fromkeys(r["simd"] for r in rows):
        sel = [r for r in rows if r["simd"] == level and r["output"] == output]
        med = lambda k: statistics.median(r[k] for r in sel)
        print(f"loader {output} {level}: {med('images_per_sec'):.0f} img/s, "
              f"{100 * med('ratio'):.1f}% of the ceiling (steady {100 * med('steady_ratio'):.1f}%), {len(sel)} runs")
level, passes, ceil = None, {}, {}
for line in open(f"{out}/levels-stats.txt"):
    if line.startswith("# "):
        level = line.split()[1]
    elif line.startswith("passes"):
        passes.setdefault(level, []).append(statistics.median(float(x) for x in line.split(":")[1].split(",")))
    elif line.startswith("single-thread zstd"):
        ceil.setdefault(level, []).append(float(line.split(":")[1].split()[0]))
for level in passes:
    rate, c = statistics.median(passes[level]), statistics.median(ceil[level])
    print(f"stats {level}: {rate:.0f} img/s, {100 * rate / (2 * c):.1f}% of 2 x single-thread zstd")
PY
