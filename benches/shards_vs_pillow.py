#!/usr/bin/env python3
"""Benchmark: `pipeline shards` against a Pillow + python-zstandard script
that does the same job, both on one core, in one run.

The same job: read each JPEG, convert to RGB, rescale the shorter side to 256
(BILINEAR, antialiased; long side floor(long*256/short)), crop the central
256x256, delta-filter, compress with zstd (same level), checksum the pixels
(xxh3) and append to a shard file. The peer is the plain way to write this
(no Image.draft DCT shortcut, as torchvision-style code does it).

Ours runs twice per repeat: with its default match search (`sparse`: 2.6%
more bytes on the sample) and with `--zstd-search full`, zstd's own level-1
search, which is what the peer's python-zstandard runs: the second ratio is
the one at identical compression settings.

Prints a table and one JSON line. Usage:
  benches/shards_vs_pillow.py --pipeline target/release/pipeline --sample DIR
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import xxhash
import zstandard
from PIL import Image

from sample_tree import link_tree


def pillow_job(files, out_path, level):
    cctx = zstandard.ZstdCompressor(level=level)
    with open(out_path, "wb") as out:
        for path in files:
            im = Image.open(path).convert("RGB")
            w, h = im.size
            size = (w * 256 // h, 256) if w >= h else (256, h * 256 // w)
            im = im.resize(size, Image.BILINEAR)
            left, top = (size[0] - 256) // 2, (size[1] - 256) // 2
            a = np.asarray(im.crop((left, top, left + 256, top + 256)))
            checksum = xxhash.xxh3_64_intdigest(a.tobytes())
            d = a.copy()
            d[:, 1:, :] -= a[:, :-1, :]  # uint8 wraps, like ours
            frame = cctx.compress(d.tobytes())
            out.write(frame)
            out.write(checksum.to_bytes(8, "little"))


def one_core(cmd):
    return ["taskset", "-c", "0", *cmd]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pipeline", default="target/release/pipeline")
    ap.add_argument("--sample", default="../shared/data/imagenet-sample")
    ap.add_argument("--level", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:  # the Pillow job itself, run pinned to one core
        files = open(args.worker).read().split("\n")
        pillow_job(files, args.worker + ".out", args.level)
        return
    if not os.path.isdir(args.sample):
        sys.exit(f"error: no sample folder {args.sample}")
    tmp = tempfile.mkdtemp(prefix="bench-shards-")
    files = link_tree(args.sample, os.path.join(tmp, "tree"))
    listing = os.path.join(tmp, "files.txt")
    open(listing, "w").write("\n".join(files))
    searches = ["sparse", "full"] if args.level == 1 else ["full"]
    ours = {s: [] for s in searches}
    peer = []
    outs = {}
    for r in range(args.repeats):
        for search in searches:
            out = outs[search] = os.path.join(tmp, f"shards-{search}{r}")
            t = time.perf_counter()
            subprocess.run(one_core([args.pipeline, "shards", "--imagenet", os.path.join(tmp, "tree"),
                                     "--out", out, "--jobs", "1", "--level", str(args.level),
                                     "--zstd-search", search]),
                           check=True, capture_output=True)
            ours[search].append(time.perf_counter() - t)
        t = time.perf_counter()
        subprocess.run(one_core([sys.executable, __file__, "--worker", listing, "--level", str(args.level)]),
                       check=True)
        peer.append(time.perf_counter() - t)
    n = len(files)
    peer_bytes = os.path.getsize(listing + ".out")
    peer_rate = n / statistics.median(peer)
    print(f"{'':32}{'images/s (median of ' + str(args.repeats) + ')':>28}{'bytes':>14}{'ratio':>8}")
    result = dict(images=n, level=args.level, pillow_images_per_sec=round(peer_rate, 1),
                  pillow_seconds=peer, pillow_bytes=peer_bytes)
    for search in searches:
        out = outs[search]
        shard_bytes = sum(os.path.getsize(os.path.join(out, f)) for f in os.listdir(out)
                          if f.endswith(".shard"))
        rate = n / statistics.median(ours[search])
        print(f"{'pipeline shards (' + search + ')':32}{rate:>28.0f}{shard_bytes:>14}{rate / peer_rate:>7.2f}x")
        result[search] = dict(images_per_sec=round(rate, 1), ratio=round(rate / peer_rate, 3),
                              seconds=ours[search], bytes=shard_bytes)
    print(f"{'Pillow + zstandard':32}{peer_rate:>28.0f}{peer_bytes:>14}")
    print(f"({n} images, one core each, zstd level {args.level})")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
