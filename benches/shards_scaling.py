#!/usr/bin/env python3
"""Benchmark: how `pipeline shards` scales with cores, against the Pillow +
python-zstandard script of shards_vs_pillow.py run as N processes.

Both write the same tree (the sample's photos linked `--copies` times) at
each job count in `--jobs`; a job count's rate is images / wall seconds,
and its parallel efficiency is rate(N) / (N x rate(1)). Each count runs
`--repeats` times (alternating ours and the peer) and the median is kept.

Prints a table and one JSON line. Usage:
  benches/shards_scaling.py --pipeline target/release/pipeline --sample DIR \
      --copies 8 --jobs 1 2 4 8 16
"""
import argparse
import json
import multiprocessing
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from sample_tree import link_tree
from shards_vs_pillow import pillow_job


def tree_files(root):
    return sorted(os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs)


def run_ours(pipeline, tree, out, jobs, level):
    shutil.rmtree(out, ignore_errors=True)
    t = time.perf_counter()
    subprocess.run([pipeline, "shards", "--imagenet", tree, "--out", out, "--jobs", str(jobs),
                    "--level", str(level)], check=True, capture_output=True)
    return time.perf_counter() - t


def run_peer(files, work, jobs, level):
    """`jobs` processes, each writing its own contiguous part of the files."""
    parts = [files[i::jobs] for i in range(jobs)]
    outs = [os.path.join(work, f"peer-{i}.out") for i in range(jobs)]
    t = time.perf_counter()
    with multiprocessing.get_context("fork").Pool(jobs) as pool:
        pool.starmap(pillow_job, [(p, o, level) for p, o in zip(parts, outs)])
    return time.perf_counter() - t


def cpu_name():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pipeline", default="target/release/pipeline")
    ap.add_argument("--sample", default="../shared/data/imagenet-sample")
    ap.add_argument("--copies", type=int, default=8, help="links per sample photo")
    ap.add_argument("--jobs", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    ap.add_argument("--level", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=1)
    args = ap.parse_args()
    if not os.path.isdir(args.sample):
        sys.exit(f"error: no sample folder {args.sample}")
    work = tempfile.mkdtemp(prefix="bench-scaling-")
    link_tree(args.sample, os.path.join(work, "tree"), copies=args.copies)
    tree = os.path.join(work, "tree")
    files = tree_files(os.path.join(tree, "train"))
    n = len(files)
    rows = []
    for jobs in args.jobs:
        ours, peer = [], []
        for _ in range(args.repeats):
            ours.append(run_ours(args.pipeline, tree, os.path.join(work, "shards"), jobs, args.level))
            peer.append(run_peer(files, work, jobs, args.level))
        rows.append(dict(jobs=jobs, ours=n / statistics.median(ours), peer=n / statistics.median(peer),
                         ours_seconds=ours, peer_seconds=peer))
    base = rows[0]
    print(f"{n} images, zstd level {args.level}, {os.cpu_count()} cores: {cpu_name()}")
    print(f"{'jobs':>5}{'ours img/s':>12}{'eff':>7}{'peer img/s':>12}{'eff':>7}{'ratio':>8}")
    for r in rows:
        scale = r["jobs"] / base["jobs"]
        r["ours_efficiency"] = r["ours"] / (scale * base["ours"])
        r["peer_efficiency"] = r["peer"] / (scale * base["peer"])
        r["ratio"] = r["ours"] / r["peer"]
        print(f"{r['jobs']:>5}{r['ours']:>12.0f}{r['ours_efficiency']:>7.0%}{r['peer']:>12.0f}"
              f"{r['peer_efficiency']:>7.0%}{r['ratio']:>7.2f}x")
    print(json.dumps(dict(images=n, level=args.level, cores=os.cpu_count(), cpu=cpu_name(), rows=rows)))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
