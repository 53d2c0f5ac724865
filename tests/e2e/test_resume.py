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


def test_a_damaged_finished_shard_is_written_again_not_kept(tmp_path, tree):
    """The manifest lost and one finished shard damaged inside a frame (zstd
    may still decode it: only the record checksum tells): a rerun checks
    each shard it would keep, says which one is damaged and why, writes it
    again, and ends with the bytes of the first run."""
    out = tmp_path / "o"
    args = ["shards", "--imagenet", tree["root"], "--shard-size", "7", "--jobs", "2", "--out", out]
    run(*args)
    original = {n: (out / n).read_bytes() for n in os.listdir(out) if n.endswith(".shard")}
    os.remove(out / "manifest.json")
    name = "train-00001.shard"
    rec = read_shard(out / name)["records"][2]
    data = bytearray(original[name])
    data[rec["offset"] + rec["len"] // 2] ^= 0x10
    (out / name).write_bytes(bytes(data))
    p = run(*args)
    assert f"{out / name}" in p.stderr and "written again" in p.stderr, p.stderr
    kept = int(p.stdout.split("(kept ")[1].split()[0])
    assert kept == sum(len(read_shard(out / n)["records"]) for n in original if n != name), p.stdout
    for n, b in original.items():
        assert (out / n).read_bytes() == b, n
