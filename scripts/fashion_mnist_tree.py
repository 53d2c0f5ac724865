"""Writes Fashion-MNIST (Debian's dataset-fashion-mnist) as an ILSVRC-2012-style
JPEG tree: a real labelled set for learning checks and the demo.

    train/<wnid>/<wnid>_<n>.JPEG        from the 60k training images
    val/<name>.JPEG + LOC_val_solution.csv   (flat val, Kaggle form) from t10k
    LOC_synset_mapping.txt              wnid -> class name

The first N (M) images of each class are taken, in file order, so the tree is
the same on every machine.

    python fashion_mnist_tree.py --out DIR [--train-per-class 300] [--val-per-class 50]
"""
import argparse
import gzip
import os
import sys

import numpy as np
from PIL import Image

SOURCE = "/usr/share/datasets/fashion-mnist"
NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


def wnid(label):
    # WordNet-id-shaped, sorted in label order, so class index == label.
    return f"n9{label:08d}"


def read_idx(path, magic):
    with gzip.open(path, "rb") as f:
        data = f.read()
    got = int.from_bytes(data[:4], "big")
    if got != magic:
        sys.exit(f"{path}: not an IDX file (magic {got:#x}, expected {magic:#x})")
    dims = data[3]
    shape = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(data, np.uint8, offset=4 + 4 * dims).reshape(shape)


def load(source, prefix):
    images = read_idx(os.path.join(source, f"{prefix}-images-idx3-ubyte.gz"), 0x803)
    labels = read_idx(os.path.join(source, f"{prefix}-labels-idx1-ubyte.gz"), 0x801)
    return images, labels


def first_per_class(labels, n):
    picked = []
    for c in range(10):
        picked.extend(np.flatnonzero(labels == c)[:n].tolist())
    return sorted(picked)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--source", default=SOURCE)
    ap.add_argument("--train-per-class", type=int, default=300)
    ap.add_argument("--val-per-class", type=int, default=50)
    a = ap.parse_args()
    if not os.path.isdir(a.source):
        sys.exit(f"{a.source}: missing; install Debian's dataset-fashion-mnist (make setup-fashion)")
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "LOC_synset_mapping.txt"), "w") as f:
        for c, name in enumerate(NAMES):
            f.write(f"{wnid(c)} {name}\n")

    images, labels = load(a.source, "train")
    for i in first_per_class(labels, a.train_per_class):
        d = os.path.join(a.out, "train", wnid(labels[i]))
        os.makedirs(d, exist_ok=True)
        Image.fromarray(images[i], "L").save(os.path.join(d, f"{wnid(labels[i])}_{i}.JPEG"), quality=95)

    images, labels = load(a.source, "t10k")
    val = os.path.join(a.out, "val")
    os.makedirs(val, exist_ok=True)
    rows = []
    for i in first_per_class(labels, a.val_per_class):
        name = f"FMNIST_val_{i:05d}"
        Image.fromarray(images[i], "L").save(os.path.join(val, name + ".JPEG"), quality=95)
        rows.append(f"{name},{wnid(labels[i])} 0 0 27 27")
    with open(os.path.join(a.out, "LOC_val_solution.csv"), "w") as f:
        f.write("ImageId,PredictionString\n" + "\n".join(rows) + "\n")
    print(f"{a.out}: {10 * a.train_per_class} train + {len(rows)} val JPEGs in 10 classes")


if __name__ == "__main__":
    main()
