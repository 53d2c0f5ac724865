"""A killed `pipeline shards` leaves no finished-looking partial shard, and a
second run completes it to the same bytes as an uninterrupted run."""
import os
import signal
import subprocess
import time

from conftest import PIPELINE, load_manifest, run
from make_tree import make_tree
from shardfmt import read_shard


def test_kill_and_resume_equals_an_uninterrupted_run(tmp_path, photos_dir):
    root = tmp_path / "tree"
    make_tree(str(root), photos_dir, "folders", copies=4)
    args = ["shards", "--imagenet", str(root), "--shard-size", "6", "--jobs", "1"]

    whole = tmp_path / "whole"
    run(*args, "--out", whole)

    part = tmp_path / "part"
    proc = subprocess.Popen([PIPELINE, *args, "--out", str(part)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline:
        done = [n for n in os.listdir(part)] if part.exists() else []
        if sum(n.endswith(".shard") for n in done) >= 3:
            break
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    left = os.listdir(part)
    assert "manifest.json" not in left, "the run finished before it could be killed"
    finished = [n for n in left if n.endswith(".shard") and not n.startswith(".")]
    assert len(finished) >= 3
    for n in finished:  # whatever carries a final name is whole
        read_shard(part / n)

    p = run(*args, "--out", part)
    kept = int(p.stdout.split("(kept ")[1].split()[0])
    assert kept >= 3 * 6 - 6, p.stdout  # finished shards were not redone
    assert sorted(os.listdir(part)) == sorted(os.listdir(whole))
    for n in os.listdir(whole):
        if n != "manifest.json":
            assert (part / n).read_bytes() == (whole / n).read_bytes(), n
    a, b = load_manifest(part), load_manifest(whole)
    assert a == b
