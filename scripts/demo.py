"""`make demo`: the whole chain on real data from the package registries.

1. An ILSVRC-style tree: Fashion-MNIST (Debian's dataset-fashion-mnist; 10
   classes, train/<wnid>/ JPEGs, flat val/ + LOC_val_solution.csv) together
   with the 20 labelled ImageNet photos in foolbox's wheel (train only: one
   photo per class cannot be both learned and tested).
2. pipeline shards, pipeline stats, pipeline bench, pipeline sheet.
3. trainer run (quarter width on the CPU; full width when a GPU is seen),
   then trainer eval with the paper's ten crops.
4. A summary table, also written to WORK/summary.md.
"""
import argparse
import glob
import json
import os
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fashion_mnist_tree  # noqa: E402


def sh(*args, capture=False):
    print("$", " ".join(map(str, args)), flush=True)
    p = subprocess.run(list(map(str, args)), text=True,
                       stdout=subprocess.PIPE if capture else None)
    if p.returncode != 0:
        sys.exit(f"demo: `{' '.join(map(str, args))}` failed (exit {p.returncode})")
    return p.stdout


def make_tree(root, photos, train_per_class, val_per_class):
    if os.path.exists(os.path.join(root, "LOC_val_solution.csv")):
        return
    shutil.rmtree(root, ignore_errors=True)
    sh(sys.executable, fashion_mnist_tree.__file__, "--out", root,
       "--train-per-class", train_per_class, "--val-per-class", val_per_class)
    add_photos(root, photos)


def add_photos(root, photos):
    """foolbox's 20 labelled ImageNet photos as 20 more train classes."""
    files = sorted(glob.glob(os.path.join(photos, "foolbox", "data", "imagenet_*.jpg")))
    if len(files) != 20:
        sys.exit(f"demo: expected foolbox's 20 photos under {photos} (make setup-python)")
    names = {}
    for f in files:
        index = int(os.path.basename(f).split("_")[2].split(".")[0])  # imagenet_07_609.jpg
        wnid = f"n8{index:08d}"  # WordNet-shaped; the real wnid list is not bundled
        names[wnid] = f"ImageNet class {index} (foolbox photo)"
        os.makedirs(os.path.join(root, "train", wnid), exist_ok=True)
        shutil.copyfile(f, os.path.join(root, "train", wnid, os.path.basename(f)[:-4] + ".JPEG"))
    with open(os.path.join(root, "LOC_synset_mapping.txt"), "a") as out:
        for wnid, name in sorted(names.items()):
            out.write(f"{wnid} {name}\n")


def gpu_present():
    return shutil.which("nvidia-smi") is not None and \
        subprocess.run(["nvidia-smi", "-L"], capture_output=True).returncode == 0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pipeline", required=True)
    ap.add_argument("--trainer", required=True)
    ap.add_argument("--photos", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--train-per-class", type=int, default=300)
    ap.add_argument("--val-per-class", type=int, default=50)
    ap.add_argument("--steps", type=int, default=240)
    a = ap.parse_args()
    started = time.time()
    work = os.path.abspath(a.work)
    tree, shards, run = (os.path.join(work, d) for d in ("tree", "shards", "run"))
    os.makedirs(work, exist_ok=True)

    make_tree(tree, a.photos, a.train_per_class, a.val_per_class)
    sh(a.pipeline, "shards", "--imagenet", tree, "--out", shards)
    sh(a.pipeline, "stats", "--shards", shards)
    bench = json.loads(sh(a.pipeline, "bench", "--shards", shards, "--epochs", "3",
                          "--batch-size", "128", "--json", capture=True))
    sheet = os.path.join(work, "sheet.png")
    sh(a.pipeline, "sheet", "--shards", shards, "--out", sheet, "--batch-size", "16")

    shutil.rmtree(run, ignore_errors=True)
    if gpu_present():
        model = ["--devices", "cuda:0", "--batch-size", "128", "--epochs", "10", "--amp", "bf16"]
        model_desc = "full width, cuda:0, bf16, batch 128, 10 epochs"
    else:
        model = ["--devices", "cpu", "--width-mult", "0.25", "--batch-size", "64",
                 "--max-steps", a.steps]
        model_desc = f"width 0.25, CPU, batch 64, {a.steps} steps"
    sh(a.trainer, "run", "--shards", shards, "--out", run, "--init", "kaiming", "--quiet", *model)
    devices = model[model.index("--devices") + 1]
    ten = json.loads(sh(a.trainer, "eval", "--checkpoint", run, "--shards", shards,
                        "--devices", devices, "--ten-crop", "--json", capture=True))
    centre = json.loads(sh(a.trainer, "eval", "--checkpoint", run, "--shards", shards,
                           "--devices", devices, "--json", capture=True))

    manifest = json.load(open(os.path.join(shards, "manifest.json")))
    stats = json.load(open(os.path.join(shards, "stats.json")))
    shard_bytes = sum(os.path.getsize(p) for p in glob.glob(os.path.join(shards, "*.shard")))
    splits = manifest["splits"]
    images = {k: v["images"] for k, v in splits.items()}
    eig = "; ".join(f"{v:.1f} ({', '.join(f'{x:+.3f}' for x in vec)})"
                    for v, vec in zip(stats["eigenvalues"], stats["eigenvectors"]))
    rows = [
        ("images (train / val)", f"{images.get('train', 0)} / {images.get('val', 0)} in {len(manifest['classes'])} classes"),
        ("shard bytes", f"{shard_bytes / 1e6:.1f} MB"),
        ("RGB eigen pairs", eig),
        ("loader (train, u8, batch 128)", f"{bench['images_per_sec']:.0f} img/s = {100 * bench['ratio']:.0f}% "
                                          f"of {bench['ceiling_images_per_sec']:.0f} img/s (threads x zstd)"),
        ("model", model_desc + ", --init kaiming"),
        ("val top-1 / top-5, centre crop", f"{100 * centre['top1']:.1f}% / {100 * centre['top5']:.1f}%"),
        ("val top-1 / top-5, ten crops", f"{100 * ten['top1']:.1f}% / {100 * ten['top5']:.1f}%"),
        ("training curves", os.path.join(run, "curves.png")),
        ("augmented batch", sheet),
        ("wall time", f"{time.time() - started:.0f} s"),
    ]
    width = max(len(k) for k, _ in rows)
    table = "\n".join(f"| {k:<{width}} | {v} |" for k, v in rows)
    text = f"| {'what':<{width}} | value |\n|{'-' * (width + 2)}|-------|\n{table}\n"
    with open(os.path.join(work, "summary.md"), "w") as f:
        f.write(text)
    print("\n" + text)
    print("sheet: stored image with its crop window (green; magenta = mirrored) | the crop with lighting")


if __name__ == "__main__":
    main()
