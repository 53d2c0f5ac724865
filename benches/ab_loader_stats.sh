#!/usr/bin/env bash
# The loader and the statistics pass of two `pipeline` binaries, alternated
# on the same machine in one call: for changes that must not cost speed.
#
#   benches/ab_loader_stats.sh BEFORE AFTER OUT_DIR [ROUNDS] [SAMPLE]
#
# LOADER_ARGS adds options to `pipeline bench` (e.g. "--output f32");
# STATS=0 leaves the statistics pass out, LOADER=0 the loader.
#
# Each binary writes its own shards of the same 8,000-image train split (the
# 1,000-photo ImageNet sample linked 8 times, `benches/sample_tree.py`), so
# that each reads the format it writes; then `pipeline stats --bench` and
# `pipeline bench --epochs 4 --json` run ROUNDS times each, before and after
# in turn (which goes first alternates between rounds). Raw output goes to
# OUT_DIR (ab-loader.jsonl, ab-stats.txt); the medians, each round's
# after/before and the rounds "after" won are printed at the end.
set -euo pipefail
before=$(realpath "$1"); after=$(realpath "$2"); out=$(realpath -m "$3")
rounds=${4:-5}
sample=${5:-$(dirname "$0")/../../shared/data/imagenet-sample}
sample=$(realpath "$sample")
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$out"

python3 -c "import sys; sys.path.insert(0, '$here'); import sample_tree; sample_tree.link_tree('$sample', '$work/tree', copies=8)"
for side in before after; do
  bin=${!side}
  "$bin" shards --imagenet "$work/tree" --out "$work/$side" --splits train --jobs 2 >/dev/null 2>&1
  "$bin" stats --shards "$work/$side" >/dev/null 2>&1
done

: >"$out/ab-loader.jsonl"; : >"$out/ab-stats.txt"
for round in $(seq 1 "$rounds"); do
  # Which binary goes first alternates between rounds: the second of a pair
  # runs on a machine the first has just warmed (or slowed).
  order="before after"
  [ $((round % 2)) = 0 ] && order="after before"
  for side in $order; do
    bin=${!side}
    if [ "${STATS:-1}" != 0 ]; then
      echo "# $side round $round" >>"$out/ab-stats.txt"
      "$bin" stats --shards "$work/$side" --jobs 2 --bench 2>/dev/null \
        | grep -E 'passes|single-thread|threads of zstd' >>"$out/ab-stats.txt"
    fi
    [ "${LOADER:-1}" = 0 ] && continue
    # shellcheck disable=SC2086 # LOADER_ARGS is a list of options
    "$bin" bench --shards "$work/$side" --threads 2 --epochs 4 --json ${LOADER_ARGS:-} 2>/dev/null \
      | python3 -c "import json,sys; d=json.load(sys.stdin); d.update(binary='$side', round=$round); print(json.dumps(d))" \
      >>"$out/ab-loader.jsonl"
  done
done

python3 - "$out" <<'PY'
import json, re, statistics, sys
out = sys.argv[1]
rows = [json.loads(l) for l in open(f"{out}/ab-loader.jsonl")]


def paired(before, after):
    """Each round's after/before (the two ran back to back), their median,
    and in how many rounds after was the faster: on a noisy machine a
    change that wins most rounds is more telling than one median."""
    ratios = [a / b for b, a in zip(before, after)]
    wins = sum(r > 1 for r in ratios)
    return f"per round after/before median {statistics.median(ratios):.3f}, faster in {wins} of {len(ratios)}"


for key in ("images_per_sec", "steady_images_per_sec", "ratio") if rows else ():
    by = {s: [r[key] for r in rows if r["binary"] == s] for s in ("before", "after")}
    m = {s: statistics.median(v) for s, v in by.items()}
    print(f"loader {key}: before {m['before']:.3f}, after {m['after']:.3f}, after/before {m['after']/m['before']:.3f}; "
          + paired(by["before"], by["after"]))
stats = {"before": [], "after": []}
ceiling = {"before": [], "after": []}
side = None
for line in open(f"{out}/ab-stats.txt"):
    if line.startswith("# "):
        side = line.split()[1]
    elif line.startswith("passes"):
        rates = [float(x) for x in line.split(":")[1].split(",")]
        stats[side].append(statistics.median(rates))
    elif line.startswith("2 threads of zstd"):
        ceiling[side].append(int(re.search(r"pass = (\d+)%", line).group(1)))
if not stats["before"]:
    sys.exit(0)
m = {s: statistics.median(v) for s, v in stats.items()}
print(f"stats images/s (median of rounds' medians): before {m['before']:.0f}, after {m['after']:.0f}, after/before {m['after']/m['before']:.3f}; "
      + paired(stats["before"], stats["after"]))
if ceiling["before"]:
    print("stats pass / 2 threads of zstd at once (median of rounds): "
          + ", ".join(f"{s} {statistics.median(v)}%" for s, v in ceiling.items()))
PY
