import json
import os
import subprocess

import pytest

from make_tree import make_tree

PIPELINE = os.environ.get("PIPELINE_BIN", "target/release/pipeline")
PHOTOS = os.environ.get("PHOTOS", os.path.expanduser("~/.cache/alexnet-rs/photos"))


def run(*args, check=True):
    """Runs the pipeline binary; returns the CompletedProcess."""
    p = subprocess.run([PIPELINE, *map(str, args)], capture_output=True, text=True, timeout=600)
    if check and p.returncode != 0:
        raise AssertionError(f"pipeline {' '.join(map(str, args))} failed:\n{p.stderr}")
    return p


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
