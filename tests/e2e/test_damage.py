"""Damaged and misplaced shard files: caught before their bytes reach
training, with the file and the record named.

- a flipped byte that zstd still decodes (other pixels, no zstd error):
  `pipeline bench`, `pipeline stats` and `trainer run` stop on it, or, with
  `--skip-damaged`, leave the record out and say so;
- a shard file in another's place (swapped, or copied from the val split or
  from another shard set), a resized one, one the manifest does not list:
  `pipeline verify` reports each, and the loader refuses to open the set."""
import json
import os
import shutil

import xxhash
import zstandard

from conftest import run, trainer
from shardfmt import read_index, read_shard


def copy_of(src, dst):
    shutil.copytree(src, dst)
    return dst


def flip_a_byte_zstd_still_decodes(path, record):
    """Flips one byte of `record`'s frame such that the frame still
    decompresses, to other pixels: only a checksum can tell. Returns the
    record's name."""
    shard = read_index(path)
    rec = shard["records"][record]
    size = shard["height"] * shard["width"] * shard["channels"]
    data = bytearray(open(path, "rb").read())
    frame = bytes(data[rec["offset"]:rec["offset"] + rec["len"]])
    original = zstandard.ZstdDecompressor().decompress(frame, max_output_size=size)
    for at in range(len(frame) // 2, len(frame) - 4):
        spoiled = bytearray(frame)
        spoiled[at] ^= 0x04
        try:
            pixels = zstandard.ZstdDecompressor().decompress(bytes(spoiled), max_output_size=size)
        except zstandard.ZstdError:
            continue
        if len(pixels) == size and pixels != original:
            data[rec["offset"] + at] ^= 0x04
            open(path, "wb").write(bytes(data))
            return rec["name"]
    raise AssertionError(f"{path}: no byte of record {record} flips into another valid frame")


def test_a_flip_zstd_decodes_stops_bench_stats_and_training(fashion, tmp_path):
    bad = copy_of(fashion / "shards", tmp_path / "bad")
    stats_before = (bad / "stats.json").read_bytes(), (bad / "mean.npy").read_bytes()
    # Every tenth record of every train shard: the first training batch
    # (64 of 3,000, in the seeded order) holds some.
    names = {}
    for shard in sorted(bad.glob("train-*.shard")):
        for record in range(0, len(read_index(shard)["records"]), 10):
            names[(shard.name, record)] = flip_a_byte_zstd_still_decodes(shard, record)

    p = run("bench", "--shards", bad, "--epochs", "1", "--threads", "2", check=False)
    assert p.returncode == 1, p.stderr
    assert ".shard: record " in p.stderr and "frame checksum mismatch" in p.stderr, p.stderr

    p = run("stats", "--shards", bad, check=False)
    assert p.returncode == 1, p.stderr
    assert ".shard: record " in p.stderr and "frame checksum mismatch" in p.stderr, p.stderr
    assert ((bad / "stats.json").read_bytes(), (bad / "mean.npy").read_bytes()) == stats_before

    args = ["--width-mult", "0.0625", "--batch-size", "64", "--quiet", "--devices", "cpu"]
    p = trainer("run", "--shards", bad, "--out", tmp_path / "run", "--max-steps", "1", *args,
                check=False)
    assert p.returncode == 1, p.stderr
    named = [k for k in names if f"{k[0]}: record {k[1]} ({names[k]})" in p.stderr]
    assert len(named) == 1 and "frame checksum mismatch" in p.stderr, p.stderr

    p = trainer("run", "--shards", bad, "--out", tmp_path / "skip", "--max-steps", "2",
                "--skip-damaged", *args)
    warned = [l for l in p.stderr.splitlines() if l.startswith("warning: left out of training:")]
    assert warned and all("frame checksum mismatch" in l for l in warned), p.stderr
    assert f"damaged records left out: {len(warned)}" in p.stdout, p.stdout

    p = run("verify", "--shards", bad, check=False)
    assert p.returncode == 1
    assert f"FAILED: {len(names)} problems" in p.stdout, p.stdout


def test_misplaced_resized_and_unlisted_shard_files(tree, tmp_path):
    """Each case in a fresh copy of the mini set: `verify` names it; the
    loader (`pipeline bench`) refuses to open the split, naming the file."""
    def spoiled(name):
        return copy_of(tree["out"], tmp_path / name)

    def verify_says(d, *parts):
        p = run("verify", "--shards", d, check=False)
        assert p.returncode == 1, p.stdout
        bad = [l for l in p.stderr.splitlines() if l.startswith("bad: ")]
        assert any(all(part in l for part in parts) for l in bad), (parts, p.stderr)
        return p

    def bench_refuses(d, *parts):
        p = run("bench", "--shards", d, "--epochs", "1", "--mode", "center", check=False)
        assert p.returncode == 1 and all(part in p.stderr for part in parts), p.stderr

    # Two train shards swapped: both whole, both in the wrong place.
    d = spoiled("swapped")
    a, b = (d / "train-00000.shard").read_bytes(), (d / "train-00002.shard").read_bytes()
    (d / "train-00000.shard").write_bytes(b)
    (d / "train-00002.shard").write_bytes(a)
    verify_says(d, "train-00000.shard", "not the file manifest.json lists")
    verify_says(d, "train-00002.shard", "not the file manifest.json lists")
    bench_refuses(d, "train-00000.shard", "not the file manifest.json lists")

    # The val shard copied over a train shard, sizes made to match by
    # rewriting the manifest's size: the header's identity still tells.
    d = spoiled("val-over-train")
    shutil.copy(d / "val-00000.shard", d / "train-00001.shard")
    m = json.load(open(d / "manifest.json"))
    m["splits"]["train"]["shards"][1]["bytes"] = os.path.getsize(d / "train-00001.shard")
    json.dump(m, open(d / "manifest.json", "w"))
    verify_says(d, "train-00001.shard", "it holds val shard 0", "not train shard 1")
    bench_refuses(d, "train-00001.shard", "it holds val shard 0")

    # A shard of another set in the right place: same split and number,
    # another plan (its size and checksums fixed up in the manifest too,
    # all but the plan id, as a careless merge of two folders would).
    other = tmp_path / "other-set"
    run("shards", "--imagenet", tree["root"], "--out", other, "--shard-size", "7",
        "--seed", "5", "--splits", "train")
    d = spoiled("foreign")
    shutil.copy(other / "train-00001.shard", d / "train-00001.shard")
    m = json.load(open(d / "manifest.json"))
    listed = m["splits"]["train"]["shards"][1]
    foreign = read_index(d / "train-00001.shard")
    listed.update(bytes=foreign["size"], records=len(foreign["records"]),
                  index_xxh3=f"{foreign['index_xxh3']:016x}")
    json.dump(m, open(d / "manifest.json", "w"))
    verify_says(d, "train-00001.shard", "a shard of another set")
    bench_refuses(d, "train-00001.shard", "a shard of another set")

    # Resized: bytes appended after the footer.
    d = spoiled("resized")
    with open(d / "train-00003.shard", "ab") as f:
        f.write(b"\0" * 10)
    verify_says(d, "train-00003.shard")
    bench_refuses(d, "train-00003.shard")

    # Unlisted: a shard file the manifest has lost (or never had).
    d = spoiled("unlisted")
    m = json.load(open(d / "manifest.json"))
    lost = m["splits"]["train"]["shards"].pop()
    m["splits"]["train"]["images"] -= lost["records"]
    json.dump(m, open(d / "manifest.json", "w"))
    p = verify_says(d, lost["file"], "not listed in manifest.json")
    assert "FAILED: 1 problems" in p.stdout, p.stdout


def test_the_manifest_ties_each_file_to_its_place(tree):
    """What the checks above rely on, read by the independent reader: each
    header's identity, and the manifest's size, plan id and index checksum
    of each file; the index checksum covers every frame's checksum."""
    m = tree["manifest"]
    assert m["version"] == 3
    for split, info in m["splits"].items():
        first = 0
        for number, listed in enumerate(info["shards"]):
            shard = read_shard(tree["out"] / listed["file"])
            assert shard["version"] == 3
            assert shard["identity"] == dict(split=split, number=number, first=first,
                                             planned=len(shard["records"]) + len(shard["skipped"]))
            first += shard["identity"]["planned"]
            assert listed["bytes"] == shard["size"]
            assert listed["plan_id"] == f"{shard['plan_id']:016x}"
            assert listed["index_xxh3"] == f"{shard['index_xxh3']:016x}"
            data = open(tree["out"] / listed["file"], "rb").read()
            for r in shard["records"]:
                frame = data[r["offset"]:r["offset"] + r["len"]]
                assert xxhash.xxh3_64_intdigest(frame) == r["frame_checksum"]
