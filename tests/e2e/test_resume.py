"""A killed `pipeline shards` leaves no finished-looking partial shard, and a
second run completes it to the same bytes as an uninterrupted run."""
import contextlib
import fcntl
import os
import re
import signal
import subprocess
import threading
import time

from conftest import PIPELINE, load_manifest, run
from make_tree import make_tree
from shardfmt import read_shard

SHARD = re.compile(r"(train|val)-\d{5}\.shard")


@contextlib.contextmanager
def held_open(path):
    """A write lease on `path` (fcntl F_SETLEASE): another process opening
    it blocks in open() until the lease is let go (or the kernel's
    lease-break-time, 45 s by default, passes), and this process gets
    SIGIO the moment it tries. Yields an Event set by that SIGIO."""
    opened = threading.Event()
    previous = signal.signal(signal.SIGIO, lambda *_: opened.set())
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_WRLCK)
        yield opened
    finally:
        os.close(fd)
        signal.signal(signal.SIGIO, previous)


def test_kill_and_resume_equals_an_uninterrupted_run(tmp_path, photos_dir):
    """Killed while three shards are finished and the fourth is under way
    (held there by a lease on its second source file, so no timing is
    involved), the run leaves those three whole and nothing that looks
    finished; a rerun keeps exactly their records and ends with the bytes
    of an uninterrupted run."""
    root = tmp_path / "tree"
    make_tree(str(root), photos_dir, "folders", copies=4)
    args = ["shards", "--imagenet", str(root), "--shard-size", "6", "--jobs", "1"]

    whole = tmp_path / "whole"
    run(*args, "--out", whole)
    fourth = read_shard(whole / "train-00003.shard")["records"][1]["name"]

    part = tmp_path / "part"
    with held_open(root / "train" / fourth) as opened:
        proc = subprocess.Popen([PIPELINE, *args, "--out", str(part)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            assert opened.wait(120), "the run never reached the fourth shard's second file"
            # The worker waits in open(); the writer finishes shard 3.
            while len([n for n in os.listdir(part) if SHARD.fullmatch(n)]) < 3:
                assert proc.poll() is None, proc.communicate()
                time.sleep(0.01)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
    left = os.listdir(part)
    assert "manifest.json" not in left
    finished = sorted(n for n in left if SHARD.fullmatch(n))
    assert finished == ["train-00000.shard", "train-00001.shard", "train-00002.shard"], left
    for n in finished:  # whatever carries a final name is whole
        assert (part / n).read_bytes() == (whole / n).read_bytes(), n

    p = run(*args, "--out", part)
    kept = int(p.stdout.split("(kept ")[1].split()[0])
    assert kept == 3 * 6, p.stdout  # the finished shards' records, not redone
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
