#!/usr/bin/env python3
"""Benchmark: our loader against DALI, FFCV and the PyTorch DataLoader doing
the same job on the same images, in one run, in alternating rounds.

The job, per image of an epoch (a fresh random order each epoch, batches of
--batch-size, --threads worker threads or processes): a random 224x224
window of the stored 256x256 image, mirrored with probability 1/2, handed
over as
- u8: a uint8 batch (HWC), or
- f32: a float32 CHW batch with the mean subtracted (ours: the paper's
  per-pixel mean image and PCA lighting; the peers: a per-channel mean,
  which is less work).

Peers:
- `ours, zstd shards` and `ours, raw shards`: `pipeline bench --json`.
- `ours from Python` on each: the `alexnet_pipeline` package (when it
  imports: `make python`), its batches as torch tensors, as a PyTorch
  training loop would take them; the table gives its rate against
  `pipeline bench`'s on the same shards.
- `DALI external_source`: DALI's CPU pipeline (`device_id=None`) fed from
  one memory-mapped uint8 array of all images, cropped, mirrored and
  normalised by `fn.crop_mirror_normalize`.
- `PyTorch DataLoader`: a Dataset over the same mapped array, numpy crops,
  worker processes, default collate.
- `PyTorch DataLoader, our zstd shards`: a Dataset over the zstd shards
  themselves, as `make bench-loader` runs it (benches/loader_vs_torch.py:
  pread of a frame, python-zstandard, torch undoes the delta filter on the
  crop's rows, lighting draws); for f32 the crop is then made float CHW
  with the channel mean subtracted, in the worker.
- `FFCV` (when the ffcv package imports): a .beton of raw pixels
  (`RGBImageField(write_mode="raw")`) read by FFCV's random resized crop
  held to a 224x224 window of the 256x256 image, its mirror, and for f32
  its `NormalizeImage`; left out, with a line saying so, where it does not
  import.

Each measurement runs --epochs epochs in a fresh process and keeps the rate
of the epochs after the first (the first fills the caches and the pipeline),
as `pipeline bench` reports it; each is preceded by a wait for a quiet CPU
(at most --quiet-wait seconds). Rounds alternate the peers so that a noisy
spell hits them alike; the table gives medians.

Data (built once under --work from --sample): the photos linked --copies
times over (8,000 images from the 1000-photo sample), their zstd and raw
shards with stats, and the raw shards' pixels as one array (images.u8,
labels.npy) for the Python peers.

Writes peers.jsonl (every measurement) and peers.md (the table, with the
CPU's name and SIMD flags) to --out, and prints the table.
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import numpy as np

CROP = 224
SIDE = 256
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "e2e"))
from shardfmt import read_index  # noqa: E402
from sample_tree import link_tree  # noqa: E402  (this folder)

PEERS = ["ours-zstd", "python-zstd", "ours-raw", "python-raw", "dali", "dataloader",
         "dataloader-shards", "ffcv"]
NAMES = {
    "ours-zstd": "ours, zstd shards (`pipeline bench`)",
    "python-zstd": "ours from Python, zstd shards (`alexnet_pipeline`)",
    "ours-raw": "ours, raw shards (`pipeline bench`)",
    "python-raw": "ours from Python, raw shards (`alexnet_pipeline`)",
    "dali": "DALI external_source + crop_mirror_normalize",
    "dataloader": "PyTorch DataLoader",
    "dataloader-shards": "PyTorch DataLoader, our zstd shards",
    "ffcv": "FFCV, raw-pixel .beton",
}


# --- data -----------------------------------------------------------------

def prepare(pipeline, sample, work, copies):
    """Tree, zstd and raw shards with stats, and the pixel array; reused
    when already there."""
    tree = os.path.join(work, "tree")
    if not os.path.isdir(tree):
        link_tree(sample, tree, copies)
    for codec in ("zstd", "raw"):
        shards = os.path.join(work, f"shards-{codec}")
        if not os.path.isfile(os.path.join(shards, "stats.json")):
            subprocess.run([pipeline, "shards", "--imagenet", tree, "--out", shards,
                            "--codec", codec], check=True)
            subprocess.run([pipeline, "stats", "--shards", shards], check=True)
    array = os.path.join(work, "images.u8")
    if not os.path.isfile(array):
        write_array(os.path.join(work, "shards-raw"), array, os.path.join(work, "labels.npy"))
    return tree


def write_array(raw_shards, array, labels_path):
    """Every train image of a raw shard set, in stored order, as one
    N x 256 x 256 x 3 uint8 file."""
    manifest = json.load(open(os.path.join(raw_shards, "manifest.json")))
    labels = []
    with open(array + ".partial", "wb") as out:
        for info in manifest["splits"]["train"]["shards"]:
            path = os.path.join(raw_shards, info["file"])
            shard = read_index(path)
            data = open(path, "rb").read()
            for r in shard["records"]:
                out.write(data[r["offset"]:r["offset"] + r["len"]])
                labels.append(r["label"])
    np.save(labels_path, np.array(labels, np.int64))
    os.rename(array + ".partial", array)


def channel_mean(images):
    """The per-channel mean of the first 500 images: what the peers'
    float32 output subtracts."""
    return images[: min(len(images), 500)].reshape(-1, 3).mean(0)


def load_array(work):
    labels = np.load(os.path.join(work, "labels.npy"))
    images = np.memmap(os.path.join(work, "images.u8"), np.uint8, "r",
                       shape=(len(labels), SIDE, SIDE, 3))
    return images, labels


# --- one measurement, in its own process ----------------------------------

def epoch_rates(run_epoch, epochs):
    """Images/s of each epoch; `run_epoch(epoch)` returns its image count."""
    rates = []
    for epoch in range(epochs):
        started = time.perf_counter()
        n = run_epoch(epoch)
        rates.append((n, time.perf_counter() - started))
    return rates


def dali_rates(work, output, threads, batch, epochs):
    from nvidia.dali import fn, pipeline_def, types

    images, labels = load_array(work)
    n = len(labels) // batch * batch
    mean = [float(m) for m in channel_mean(images)]

    class Source:
        """Batches of views into the mapped array, a new order each epoch."""

        def __init__(self):
            self.order = np.arange(len(labels))

        def __call__(self, info):
            if info.iteration == 0:
                self.order = np.random.default_rng(info.epoch_idx).permutation(len(labels))
            if (info.iteration + 1) * batch > n:
                raise StopIteration
            ids = self.order[info.iteration * batch:(info.iteration + 1) * batch]
            return [images[i] for i in ids], [labels[i:i + 1].astype(np.int32) for i in ids]

    @pipeline_def(batch_size=batch, num_threads=threads, device_id=None)
    def pipe():
        img, lab = fn.external_source(source=Source(), num_outputs=2, batch=True,
                                      batch_info=True, dtype=[types.UINT8, types.INT32])
        common = dict(crop=(CROP, CROP), crop_pos_x=fn.random.uniform(range=[0.0, 1.0]),
                      crop_pos_y=fn.random.uniform(range=[0.0, 1.0]),
                      mirror=fn.random.coin_flip(probability=0.5))
        if output == "u8":
            out = fn.crop_mirror_normalize(img, dtype=types.UINT8, output_layout="HWC", **common)
        else:
            out = fn.crop_mirror_normalize(img, dtype=types.FLOAT, output_layout="CHW",
                                           mean=mean, std=[1.0, 1.0, 1.0], **common)
        return out, lab

    p = pipe()
    p.build()

    def run_epoch(_):
        count = 0
        try:
            while True:
                out, _ = p.run()
                count += len(out)
        except StopIteration:
            p.reset()
        return count

    return epoch_rates(run_epoch, epochs)


def dataloader_rates(work, output, threads, batch, epochs):
    import torch
    from torch.utils.data import DataLoader, Dataset

    images, labels = load_array(work)
    mean = channel_mean(images).astype(np.float32)

    class Crops(Dataset):
        def __len__(self):
            return len(labels)

        def __getitem__(self, i):
            y, x = np.random.randint(0, SIDE - CROP + 1, 2)
            view = images[i, y:y + CROP, x:x + CROP]
            if np.random.rand() < 0.5:
                view = view[:, ::-1]
            if output == "u8":
                return torch.from_numpy(np.ascontiguousarray(view)), int(labels[i])
            chw = (view.astype(np.float32) - mean).transpose(2, 0, 1)
            return torch.from_numpy(np.ascontiguousarray(chw)), int(labels[i])

    loader = DataLoader(Crops(), batch_size=batch, shuffle=True, num_workers=threads,
                        drop_last=True, persistent_workers=True, prefetch_factor=2)

    def run_epoch(_):
        return sum(len(x) for x, _ in loader)

    return epoch_rates(run_epoch, epochs)


def dataloader_shards_rates(work, output, threads, batch, epochs):
    import torch
    from torch.utils.data import DataLoader

    from loader_vs_torch import ShardCrops

    mean = torch.from_numpy(channel_mean(load_array(work)[0]).astype(np.float32))

    class Crops(ShardCrops):
        def __getitem__(self, i):
            crop, label, alphas = super().__getitem__(i)
            if output == "f32":
                crop = (crop.float() - mean).permute(2, 0, 1).contiguous()
            return crop, label

    loader = DataLoader(Crops(os.path.join(work, "shards-zstd")), batch_size=batch, shuffle=True,
                        num_workers=threads, drop_last=True, persistent_workers=True,
                        prefetch_factor=2)

    def run_epoch(_):
        return sum(len(x) for x, _ in loader)

    return epoch_rates(run_epoch, epochs)


def python_rates(codec):
    """Ours through the Python package, batches as torch tensors (each
    epoch a fresh order, as `pipeline bench` runs it)."""
    def rates(work, output, threads, batch, epochs):
        import alexnet_pipeline as ap

        loader = ap.Loader(os.path.join(work, f"shards-{codec}"), batch_size=batch, mode="train",
                           output=output, threads=threads)

        def run_epoch(epoch):
            loader.set_epoch(epoch)
            return sum(len(x) for x, _ in loader)

        return epoch_rates(run_epoch, epochs)

    return rates


def ffcv_rates(work, output, threads, batch, epochs):
    from ffcv.fields import IntField, RGBImageField
    from ffcv.fields.decoders import IntDecoder, RandomResizedCropRGBImageDecoder
    from ffcv.loader import Loader, OrderOption
    from ffcv.transforms import NormalizeImage, RandomHorizontalFlip, ToTensor
    from ffcv.writer import DatasetWriter

    images, labels = load_array(work)
    beton = os.path.join(work, "images.beton")
    if not os.path.isfile(beton):
        class Pairs:
            def __len__(self):
                return len(labels)

            def __getitem__(self, i):
                return np.asarray(images[i]), int(labels[i])

        fields = {"image": RGBImageField(write_mode="raw"), "label": IntField()}
        DatasetWriter(beton + ".partial", fields, num_workers=threads).from_indexed_dataset(Pairs())
        os.rename(beton + ".partial", beton)
    # FFCV has no plain random crop: a resized crop of exactly 224/256 of
    # each side (area 0.765625, aspect 1) is one, resized to its own size.
    side = (CROP / SIDE) ** 2
    image_pipe = [RandomResizedCropRGBImageDecoder((CROP, CROP), scale=(side, side), ratio=(1, 1)),
                  RandomHorizontalFlip()]
    if output == "f32":
        mean = channel_mean(images)
        image_pipe.append(NormalizeImage(mean, np.ones(3), np.float32))
    image_pipe.append(ToTensor())
    loader = Loader(beton, batch_size=batch, num_workers=threads, order=OrderOption.RANDOM,
                    drop_last=True, pipelines={"image": image_pipe, "label": [IntDecoder()]})

    def run_epoch(_):
        return sum(len(x) for x, _ in loader)

    return epoch_rates(run_epoch, epochs)


def ours_rates(pipeline, shards, output, threads, batch, epochs):
    out = subprocess.run([pipeline, "bench", "--shards", shards, "--threads", str(threads),
                          "--batch-size", str(batch), "--epochs", str(epochs),
                          "--output", output, "--json"],
                         check=True, capture_output=True, text=True)
    b = json.loads(out.stdout)
    per_epoch = b["images"] / epochs
    extra = {k: b[k] for k in ("simd", "ratio", "steady_ratio", "decode")}
    return [(per_epoch, per_epoch / r) for r in b["images_per_sec_each_epoch"]], extra


# --- the series -----------------------------------------------------------

def wait_for_quiet_cpu(limit_s, idle_wanted=0.85):
    """Waits (at most `limit_s`) until the CPUs were idle for `idle_wanted`
    of one second; returns the idle fraction last seen."""
    def times():
        fields = [int(v) for v in open("/proc/stat").readline().split()[1:]]
        return fields[3] + fields[4], sum(fields)

    deadline = time.time() + limit_s
    while True:
        idle0, total0 = times()
        time.sleep(1.0)
        idle1, total1 = times()
        idle = (idle1 - idle0) / max(1, total1 - total0)
        if idle >= idle_wanted or time.time() > deadline:
            return idle


def steady(rates):
    later = rates[1:] or rates
    return sum(n for n, _ in later) / sum(s for _, s in later)


def measure_in_child(args, peer, output):
    """Runs one Python peer in a fresh interpreter; its epoch rates."""
    cmd = [sys.executable, os.path.abspath(__file__), "--child", peer, "--output", output,
           "--work", args.work, "--threads", str(args.threads), "--batch-size",
           str(args.batch_size), "--epochs", str(args.epochs)]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(p.stderr.strip().splitlines()[-1] if p.stderr.strip() else "failed")
    return json.loads(p.stdout.strip().splitlines()[-1])


def available(peer):
    module = {"dali": "nvidia.dali", "dataloader": "torch", "dataloader-shards": "torch",
              "ffcv": "ffcv",
              "python-zstd": "alexnet_pipeline", "python-raw": "alexnet_pipeline"}.get(peer)
    if module is None:
        return True
    probe = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True)
    return probe.returncode == 0


def cpu_description():
    name, flags = platform.processor() or "unknown CPU", set()
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            name = line.split(":", 1)[1].strip()
        elif line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
    simd = [f for f in ("ssse3", "avx2", "avx512f", "avx512bw", "avx512vbmi", "avx512_vnni")
            if f in flags]
    return f"{name}, {os.cpu_count()} CPUs, {' '.join(simd)}"


def table(rows, threads, batch, images, cpu):
    """The markdown table of medians, ratios to ours on zstd shards."""
    def median(peer, output):
        rates = [r["steady"] for r in rows if (r["peer"], r["output"]) == (peer, output)]
        return statistics.median(rates) if rates else None

    base = median("ours-zstd", "u8")
    lines = [f"command: {' '.join(sys.argv)}", f"CPU: {cpu}",
             f"{images} images, batch {batch}, {threads} threads; medians over alternating "
             "rounds of the rate after the first epoch", "",
             "| loader | uint8 img/s | vs ours (zstd) | float32 img/s | vs ours (zstd) |",
             "|---|---|---|---|---|"]
    base_f32 = median("ours-zstd", "f32")
    show = lambda v: f"{v:,.0f}" if v else "-"  # noqa: E731
    ratio = lambda v, b: f"{v / b:.2f}" if v and b else "-"  # noqa: E731
    for peer in PEERS:
        u8, f32 = median(peer, "u8"), median(peer, "f32")
        if u8 or f32:
            lines.append(f"| {NAMES[peer]} | {show(u8)} | {ratio(u8, base)} | {show(f32)} | "
                         f"{ratio(f32, base_f32)} |")
    lines += ["", "From Python (`alexnet_pipeline`, torch tensors) against `pipeline bench` "
              "on the same shards:", "", "| shards | uint8 | float32 |", "|---|---|---|"]
    for codec in ("zstd", "raw"):
        cells = [ratio(median(f"python-{codec}", o), median(f"ours-{codec}", o))
                 for o in ("u8", "f32")]
        if any(c != "-" for c in cells):
            lines.append(f"| {codec} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pipeline", default="target/release/pipeline")
    ap.add_argument("--sample", default="../shared/data/imagenet-sample")
    ap.add_argument("--work", default=os.path.expanduser("~/.cache/alexnet-rs/bench-peers"))
    ap.add_argument("--out", help="folder for peers.jsonl and peers.md")
    ap.add_argument("--copies", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--quiet-wait", type=float, default=60)
    ap.add_argument("--peers", default=",".join(PEERS))
    ap.add_argument("--outputs", default="u8,f32")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--output", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        run = {"dali": dali_rates, "dataloader": dataloader_rates,
               "dataloader-shards": dataloader_shards_rates, "ffcv": ffcv_rates,
               "python-zstd": python_rates("zstd"), "python-raw": python_rates("raw")}[args.child]
        print(json.dumps(run(args.work, args.output, args.threads, args.batch_size, args.epochs)))
        return
    prepare(args.pipeline, args.sample, args.work, args.copies)
    images = len(np.load(os.path.join(args.work, "labels.npy")))
    peers = []
    for peer in args.peers.split(","):
        if available(peer):
            peers.append(peer)
        else:
            print(f"left out: {peer} (its package does not import here)", file=sys.stderr)
    cpu = cpu_description()
    rows = []
    out_dir = args.out
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
    log = open(os.path.join(out_dir, "peers.jsonl"), "w") if out_dir else None
    for round_ in range(1, args.rounds + 1):
        for peer in peers:
            for output in args.outputs.split(","):
                idle = wait_for_quiet_cpu(args.quiet_wait)
                row = dict(round=round_, peer=peer, output=output, idle_before=round(idle, 3))
                try:
                    if peer.startswith("ours-"):
                        shards = os.path.join(args.work, "shards-" + peer[5:])
                        rates, extra = ours_rates(args.pipeline, shards, output, args.threads,
                                                  args.batch_size, args.epochs)
                        row.update(extra)
                    else:
                        rates = measure_in_child(args, peer, output)
                except (RuntimeError, subprocess.CalledProcessError) as e:
                    print(f"{peer} {output}: failed: {e}", file=sys.stderr)
                    continue
                row.update(epochs=[n / s for n, s in rates], steady=steady(rates))
                rows.append(row)
                print(f"round {round_} {peer:11} {output:3} {row['steady']:8.0f} img/s",
                      file=sys.stderr)
                if log:
                    log.write(json.dumps(row) + "\n")
                    log.flush()
    text = table(rows, args.threads, args.batch_size, images, cpu)
    print(text)
    if out_dir:
        open(os.path.join(out_dir, "peers.md"), "w").write(text + "\n")


if __name__ == "__main__":
    main()
