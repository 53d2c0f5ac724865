#!/usr/bin/env bash
# An experiment, not part of the build: how much faster `pipeline shards`
# gets when libjpeg-turbo's Huffman decoding (decode_mcu_fast in jdhuff.c)
# uses two well-known tricks, from libjpeg-turbo-fast-ac.patch:
#   - one table probe decodes an AC code together with its magnitude bits
#     (10-bit table; EOB, ZRL and long codes fall back to the usual path);
#   - the bit buffer is refilled 6 bytes at once when none of them is 0xFF,
#     instead of one byte and one 0xFF test at a time.
# It builds libjpeg-turbo twice from the copy turbojpeg-sys vendors (as is,
# and patched), links `pipeline` against each, checks that both write the
# same shard bytes, and times them alternately on one core.
#
# Usage: docs/experiments/fast_ac_ab.sh [SAMPLE_DIR] [ROUNDS]
# Needs what `make setup` installs (cmake, nasm, the Rust toolchain).
set -euo pipefail
cd "$(dirname "$0")/../.."
sample=${1:-../shared/data/imagenet-sample}
rounds=${2:-5}
work=${WORK:-/tmp/fast-ac-ab}
eval "$(make -s env)"
cargo fetch -q
src=$(find "${CARGO_HOME:-$HOME/.cargo}/registry/src" -maxdepth 2 -type d -name 'turbojpeg-sys-*' | sort | tail -1)/libjpeg-turbo
[ -d "$src/src" ] || { echo "error: no vendored libjpeg-turbo under $src" >&2; exit 1; }
rm -rf "$work" && mkdir -p "$work"
for variant in base fast; do
  cp -r "$src" "$work/ljt-$variant"
  if [ $variant = fast ]; then
    patch -s -d "$work/ljt-$variant" -p1 < docs/experiments/libjpeg-turbo-fast-ac.patch
  fi
  cmake -S "$work/ljt-$variant" -B "$work/ljt-$variant/build" -DENABLE_SHARED=0 -DENABLE_STATIC=1 \
    -DREQUIRE_SIMD=ON -DCMAKE_BUILD_TYPE=Release > /dev/null
  make -s -C "$work/ljt-$variant/build" -j"$(nproc)" turbojpeg-static > /dev/null 2>&1
  TURBOJPEG_SOURCE=explicit TURBOJPEG_STATIC=1 TURBOJPEG_LIB_DIR="$work/ljt-$variant/build" \
    TURBOJPEG_INCLUDE_DIR="$work/ljt-$variant/src" CARGO_TARGET_DIR="$work/target-$variant" \
    cargo build -q --release -p pipeline
done
tree="$work/tree"
python3 -c "import sys; sys.path.insert(0, 'benches'); from sample_tree import link_tree; link_tree(sys.argv[1], sys.argv[2])" \
  "$sample" "$tree"
for r in $(seq "$rounds"); do
  for variant in base fast; do
    rm -rf "$work/out-$variant"
    start=$(date +%s.%N)
    taskset -c 0 "$work/target-$variant/release/pipeline" shards --imagenet "$tree" \
      --out "$work/out-$variant" --jobs 1 > /dev/null 2>&1
    echo "$variant $(echo "$(date +%s.%N) - $start" | bc)"
  done
done | sort -k1,1 -k2,2n | awk '{t[$1] = t[$1] " " $2; n[$1]++; v[$1, n[$1]] = $2}
  END { for (k in n) printf "%s: median %.3f s of%s\n", k, v[k, int((n[k] + 1) / 2)], t[k] }'
for f in "$work/out-base"/*.shard; do
  cmp -s "$f" "$work/out-fast/$(basename "$f")" || { echo "error: $(basename "$f") differs" >&2; exit 1; }
done
echo "shard bytes identical"
