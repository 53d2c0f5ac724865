import json
import os
import subprocess
import sys

import pytest

from make_tree import make_tree

PIPELINE = os.environ.get("PIPELINE_BIN", "target/release/pipeline")
TRAINER = os.environ.get("TRAINER_BIN", "target/release/trainer")
SCRIPTS = os.path.join(os.path.dirname(__file__), "..", "..", "scripts")
FASHION_SRC = "/usr/share/datasets/fashion-mnist"
PHOTOS = os.environ.get("PHOTOS", os.path.expanduser("~/.cache/alexnet-rs/photos"))


def run(*args, check=True):
    """Runs the pipeline binary; returns the CompletedProcess."""
    p = subprocess.run([PIPELINE, *map(str, args)], capture_output=True, text=True, timeout=600)
    if check and p.returncode != 0:
        raise AssertionError(f"pipeline {' '.join(map(str, args))} failed:\n{p.stderr}")
    return p


def trainer(*args, check=True, timeout=900, env=None):
    """Runs the trainer binary; returns the CompletedProcess."""
    p = subprocess.run([TRAINER, *map(str, args)], capture_output=True, text=True,
                       timeout=timeout, env=env)
    if check and p.returncode != 0:
        raise AssertionError(f"trainer {' '.join(map(str, args))} failed:\n{p.stderr}")
    return p


@pytest.fixture(scope="session")
def fashion(tmp_path_factory):
    """Fashion-MNIST (Debian's dataset-fashion-mnist: 3,000 train / 500 val
    JPEGs) as an ILSVRC-style tree, its shards and stats."""
    assert os.path.isdir(FASHION_SRC), "run `make setup-apt` (dataset-fashion-mnist)"
    root = tmp_path_factory.mktemp("fashion")
    subprocess.run([sys.executable, os.path.join(SCRIPTS, "fashion_mnist_tree.py"),
                    "--out", root / "tree"], check=True, capture_output=True)
    run("shards", "--imagenet", root / "tree", "--out", root / "shards")
    run("stats", "--shards", root / "shards")
    return root


def load_manifest(d):
    with open(f"{d}/manifest.json") as f:
        return json.load(f)


@pytest.fixture(scope="session")
def photos_dir():
    assert os.path.isdir(PHOTOS), f"run `make setup-python` first (no {PHOTOS})"
    return PHOTOS


@pytest.fixture(scope="session")
def tree(tmp_path_factory, photos_dir):
    """The mini ILSVRC tree with val in <wnid>/ folders, and its shards."""
    root = tmp_path_factory.mktemp("ilsvrc")
    made = make_tree(str(root), photos_dir, "folders")
    out = tmp_path_factory.mktemp("shards")
    p = run("shards", "--imagenet", root, "--out", out, "--shard-size", "7", "--jobs", "2")
    return dict(root=root, out=out, made=made, stdout=p.stdout, stderr=p.stderr,
                manifest=load_manifest(out))
