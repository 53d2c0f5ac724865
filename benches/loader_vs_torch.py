#!/usr/bin/env python3
"""Benchmark: our loader (`pipeline bench`) against the PyTorch DataLoader
doing the same job on the same machine, in one run.

The job, per image of an epoch (random order, batches of --batch-size):
take a random 224x224 window of the stored 256x256 image, mirror it with
probability 1/2, draw the three PCA lighting alphas, and hand over a uint8
batch (the trainer subtracts the mean and adds the lighting on the GPU).

Peers, each with --threads worker processes:
- `torch, our shards`: a torch Dataset over our shard files, written the way
  a careful PyTorch user would: pread of one frame, python-zstandard, torch
  undoes the delta filter on the crop's rows only, default collate. This
  isolates the loader from the storage format.
- `torch, JPEG tree` (with --jpeg-tree): the usual torchvision recipe,
  decoding every JPEG every epoch (Pillow: RGB, shorter side to 256, random
  224 crop, flip). This is what a DataLoader user runs without shards.

Without --shards it builds its data from --sample once, into --work: the
photos linked --copies times over (8,000 images from the 1000-photo sample:
enough that an epoch lasts long enough to time), their shards and stats, and
a one-copy JPEG tree for the JPEG peer.

Prints a table and one JSON line. Needs torch, numpy, Pillow and zstandard
(`make bench-loader` runs it with them).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np
import torch
import zstandard
from torch.utils.data import DataLoader, Dataset

CROP = 224
# The shard format's independent reader, shared with the tests.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "e2e"))
from shardfmt import read_index  # noqa: E402
from sample_tree import link_tree  # noqa: E402  (this folder)


def shard_index(path):
    """(offset, length, label) of every record of a 256x256x3 delta shard."""
    shard = read_index(path)
    layout = tuple(shard[k] for k in ("height", "width", "channels", "filter"))
    if layout != (256, 256, 3, 1):
        sys.exit(f"error: {path}: expected 256x256x3 delta-filtered records")
    return [(r["offset"], r["len"], r["label"]) for r in shard["records"]]


class ShardCrops(Dataset):
    def __init__(self, shard_dir):
        manifest = json.load(open(os.path.join(shard_dir, "manifest.json")))
        self.paths, self.records = [], []
        for i, info in enumerate(manifest["splits"]["train"]["shards"]):
            self.paths.append(os.path.join(shard_dir, info["file"]))
            self.records += [(i, *r) for r in shard_index(self.paths[-1])]
        self.fds = None  # opened in each worker

    def __len__(self):
        return len(self.records)

    def __getitem__(self, i):
        if self.fds is None:
            self.fds = [os.open(p, os.O_RDONLY) for p in self.paths]
            self.dctx = zstandard.ZstdDecompressor()
            self.rng = np.random.default_rng(torch.initial_seed() % 2**32)
        shard, offset, length, label = self.records[i]
        raw = self.dctx.decompress(os.pread(self.fds[shard], length, offset), max_output_size=256 * 256 * 3)
        y, x = self.rng.integers(0, 256 - CROP + 1, size=2)
        rows = torch.frombuffer(raw, dtype=torch.uint8).view(256, 256, 3)[y:y + CROP, :x + CROP]
        # Undo the delta filter (wraps mod 256): torch's uint8 cumsum is 3.5x
        # numpy's here.
        crop = torch.cumsum(rows, dim=1, dtype=torch.uint8)[:, x:]
        crop = crop.flip(1) if self.rng.random() < 0.5 else crop.contiguous()
        alphas = torch.from_numpy(self.rng.normal(0.0, 0.1, 3).astype(np.float32))
        return crop, label, alphas


class JpegCrops(Dataset):
    def __init__(self, tree):
        train = os.path.join(tree, "train")
        classes = sorted(os.listdir(train))
        self.files = [(os.path.join(train, c, f), k) for k, c in enumerate(classes)
                      for f in sorted(os.listdir(os.path.join(train, c)))]
        self.rng = None

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        from PIL import Image
        if self.rng is None:
            self.rng = np.random.default_rng(torch.initial_seed() % 2**32)
        path, label = self.files[i]
        im = Image.open(path).convert("RGB")
        w, h = im.size
        im = im.resize((w * 256 // h, 256) if w >= h else (256, h * 256 // w), Image.BILINEAR)
        x = self.rng.integers(0, im.size[0] - CROP + 1)
        y = self.rng.integers(0, im.size[1] - CROP + 1)
        crop = np.array(im.crop((x, y, x + CROP, y + CROP)))
        if self.rng.random() < 0.5:
            crop = crop[:, ::-1]
        alphas = torch.from_numpy(self.rng.normal(0.0, 0.1, 3).astype(np.float32))
        return torch.from_numpy(np.ascontiguousarray(crop)), label, alphas


def torch_rates(dataset, threads, batch, epochs):
    """Images/s of each epoch (worker start-up inside the first, as ours)."""
    loader = DataLoader(dataset, batch_size=batch, shuffle=True, num_workers=threads,
                        persistent_workers=True, prefetch_factor=2)
    rates = []
    for _ in range(epochs):
        started, images = time.perf_counter(), 0
        for pixels, labels, alphas in loader:
            assert pixels.dtype == torch.uint8 and pixels.shape[1:] == (CROP, CROP, 3)
            images += len(labels)
        rates.append(images / (time.perf_counter() - started))
    del loader
    return rates


def ours_rates(pipeline, shards, threads, batch, epochs):
    out = subprocess.run([pipeline, "bench", "--shards", shards, "--threads", str(threads),
                          "--batch-size", str(batch), "--epochs", str(epochs), "--json"],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out)["images_per_sec_each_epoch"]


def summary(rates):
    """(whole run, epochs after the first), each the harmonic mean of the
    epochs' rates (equal image counts per epoch)."""
    whole = len(rates) / sum(1 / r for r in rates)
    steady = (len(rates) - 1) / sum(1 / r for r in rates[1:]) if len(rates) > 1 else whole
    return whole, steady


def prepare(pipeline, sample, work, copies):
    """(shard folder, one-copy JPEG tree), made once."""
    shards, tree, tree1 = (os.path.join(work, d) for d in ("shards", "tree", "tree1"))
    if not os.path.exists(os.path.join(shards, "stats.json")):
        if not os.path.isdir(sample):
            sys.exit(f"error: no sample folder {sample} (or pass --shards)")
        for d in (tree, tree1):
            subprocess.run(["rm", "-rf", d], check=True)
        link_tree(sample, tree, copies)
        link_tree(sample, tree1, 1)
        subprocess.run([pipeline, "shards", "--imagenet", tree, "--out", shards], check=True)
        subprocess.run([pipeline, "stats", "--shards", shards], check=True)
    return shards, tree1


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pipeline", default="target/release/pipeline")
    ap.add_argument("--shards", help="shard folder with a train split and stats.json")
    ap.add_argument("--jpeg-tree", help="ILSVRC-style tree (train/<wnid>/*.JPEG) for the JPEG peer")
    ap.add_argument("--sample", default="../shared/data/imagenet-sample")
    ap.add_argument("--copies", type=int, default=8)
    ap.add_argument("--work", default=os.path.expanduser("~/.cache/alexnet-rs/bench-loader"))
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    if not args.shards:
        args.shards, tree = prepare(args.pipeline, args.sample, args.work, args.copies)
        args.jpeg_tree = args.jpeg_tree or tree
    peers = [("pipeline bench (ours)", lambda: ours_rates(args.pipeline, args.shards, args.threads,
                                                          args.batch_size, args.epochs)),
             ("torch DataLoader, our shards", lambda: torch_rates(ShardCrops(args.shards), args.threads,
                                                                  args.batch_size, args.epochs))]
    if args.jpeg_tree:
        # Decoding every epoch is ~30x slower: one epoch, once.
        peers.append(("torch DataLoader, JPEG tree", lambda: torch_rates(JpegCrops(args.jpeg_tree),
                                                                         args.threads, args.batch_size, 1)))
    runs = {name: [] for name, _ in peers}
    for r in range(args.repeats):
        for name, run in peers:
            if r > 0 and name.endswith("JPEG tree"):
                continue
            runs[name].append(summary(run()))
    ours_whole = statistics.median(w for w, _ in runs[peers[0][0]])
    ours_steady = statistics.median(s for _, s in runs[peers[0][0]])
    print(f"{args.threads} threads, batch {args.batch_size}, {args.epochs} epochs, "
          f"medians of {args.repeats} (img/s)")
    print(f"{'':32}{'whole run':>12}{'steady':>12}{'ours is':>10}")
    result = dict(threads=args.threads, batch_size=args.batch_size, epochs=args.epochs, peers={})
    for name, _ in peers:
        whole = statistics.median(w for w, _ in runs[name])
        steady = statistics.median(s for _, s in runs[name])
        print(f"{name:32}{whole:>12.0f}{steady:>12.0f}{ours_whole / whole:>9.1f}x")
        result["peers"][name] = dict(whole=round(whole, 1), steady=round(steady, 1),
                                     ours_over_peer=round(ours_whole / whole, 2), runs=runs[name])
    print(json.dumps(result))


if __name__ == "__main__":
    main()
