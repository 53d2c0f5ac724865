"""`pipeline shards` end to end on a real mini ILSVRC tree."""
import json
import os

import numpy as np
import pytest
from PIL import Image

from conftest import load_manifest, run
from make_tree import make_tree
from shardfmt import read_shard, read_split


def pillow_reference(path, side=256):
    """The paper's preprocessing done the usual way with Pillow: shorter side
    to 256 (BILINEAR, antialiased), long side floor(long*256/short), then the
    central crop at floor((long'-256)/2)."""
    im = Image.open(path).convert("RGB")
    w, h = im.size
    size = (w * side // h, side) if w >= h else (side, h * side // w)
    im = im.resize(size, Image.BILINEAR)
    left, top = (size[0] - side) // 2, (size[1] - side) // 2
    return np.asarray(im.crop((left, top, left + side, top + side)))


def test_manifest_lists_classes_counts_and_skips(tree):
    m, made = tree["manifest"], tree["made"]
    assert [c["wnid"] for c in m["classes"]] == made["classes"]
    assert [c["index"] for c in m["classes"]] == list(range(len(made["classes"])))
    assert m["classes"][0]["name"] == made["names"][made["classes"][0]]
    assert m["geometry"] == {"height": 256, "width": 256, "channels": 3}
    assert m["splits"]["train"]["images"] == len(made["train"])
    assert m["splits"]["val"]["images"] == len(made["val"])
    skipped = {os.path.basename(s["path"]): s["reason"] for s in m["splits"]["train"]["skipped"]}
    assert sorted(skipped) == made["broken"]
    assert "truncated" in skipped["truncated.JPEG"]
    assert skipped["empty.JPEG"] == "empty file"
    assert "not an image" in skipped["notes.JPEG"]
    for name in made["broken"]:
        assert name in tree["stderr"], "each skipped file is reported as it happens"
    assert "skipped 3" in tree["stdout"] and "compression" in tree["stdout"]


def test_every_record_has_its_label_and_train_is_shuffled(tree):
    m, made = tree["manifest"], tree["made"]
    index = {c["wnid"]: c["index"] for c in m["classes"]}
    for split in ("train", "val"):
        stored = read_split(tree["out"], m, split)
        expected = {name: index[wn] for name, wn in made[split]}
        assert {n: l for n, l, _ in stored} == expected
    train_names = [n for n, _, _ in read_split(tree["out"], m, "train")]
    assert train_names != sorted(train_names), "train is stored in a shuffled order"
    val_names = [n for n, _, _ in read_split(tree["out"], m, "val")]
    assert val_names == sorted(val_names)


def test_stored_images_match_pillow(tree):
    """Pillow parity on real photos and on the odd files (CMYK, grey, PNG,
    progressive, large enough for DCT scaling): mean abs difference <= 1.0."""
    m = tree["manifest"]
    worst = {}
    for split in ("train", "val"):
        for name, _, img in read_split(tree["out"], m, split):
            ref = pillow_reference(f"{tree['root']}/{split}/{name}")
            worst[name] = np.abs(img.astype(float) - ref).mean()
    assert len(worst) == m["splits"]["train"]["images"] + m["splits"]["val"]["images"]
    bad = {n: d for n, d in worst.items() if d > 1.0}
    assert not bad, bad
    odd = [n for n in worst if os.path.basename(n) in
           ("cmyk.JPEG", "gray.JPEG", "png_named.JPEG", "progressive.JPEG", "large.JPEG")]
    assert len(odd) == 5


def test_gray_source_is_stored_as_equal_channels(tree):
    m = tree["manifest"]
    for name, _, img in read_split(tree["out"], m, "train"):
        if name.endswith("gray.JPEG"):
            assert (img[..., 0] == img[..., 1]).all() and (img[..., 1] == img[..., 2]).all()
            return
    pytest.fail("gray.JPEG not stored")


@pytest.mark.parametrize("form", ["kaggle", "ground_truth"])
def test_flat_val_label_forms(tmp_path, photos_dir, form):
    made = make_tree(str(tmp_path / "tree"), photos_dir, form)
    out = tmp_path / "shards"
    run("shards", "--imagenet", tmp_path / "tree", "--out", out, "--splits", "val")
    m = load_manifest(out)
    assert list(m["splits"]) == ["val"]
    index = {c["wnid"]: c["index"] for c in m["classes"]}
    stored = {n: l for n, l, _ in read_split(out, m, "val")}
    assert stored == {name: index[wn] for name, wn in made["val"]}


def test_any_thread_count_gives_identical_bytes(tmp_path, tree):
    outs = []
    for jobs in (1, 2):
        out = tmp_path / f"jobs{jobs}"
        run("shards", "--imagenet", tree["root"], "--out", out, "--shard-size", "7", "--jobs", jobs)
        outs.append(out)
    names = sorted(os.listdir(outs[0]))
    assert names == sorted(os.listdir(outs[1])) and len(names) > 3
    for n in names:
        assert open(outs[0] / n, "rb").read() == open(outs[1] / n, "rb").read(), n
    # And the same as the shared test tree's run, made with --jobs 2 earlier.
    for n in names:
        assert open(outs[0] / n, "rb").read() == open(tree["out"] / n, "rb").read(), n


def test_full_and_sparse_match_search_store_the_same_pixels(tmp_path, tree):
    """The default at level 1 is the sparse search; `full` writes other zstd
    frames (read here by python-zstandard, which knows nothing of the
    choice) holding the same pixels, and the header and manifest say which."""
    m = tree["manifest"]
    assert m["zstd_level"] == 1 and m["zstd_search"] == "sparse"
    full = tmp_path / "full"
    run("shards", "--imagenet", tree["root"], "--out", full, "--shard-size", "7",
        "--zstd-search", "full")
    mf = load_manifest(full)
    assert mf["zstd_search"] == "full"
    frames_differ = False
    for a, b in zip(m["splits"]["train"]["shards"], mf["splits"]["train"]["shards"]):
        assert a["file"] == b["file"]
        sa, sb = read_shard(tree["out"] / a["file"]), read_shard(full / b["file"])
        assert (sa["search"], sb["search"]) == (1, 0)
        assert [r["checksum"] for r in sa["records"]] == [r["checksum"] for r in sb["records"]]
        for ia, ib in zip(sa["images"], sb["images"]):
            np.testing.assert_array_equal(ia, ib)
        frames_differ |= open(tree["out"] / a["file"], "rb").read() != open(full / b["file"], "rb").read()
    assert frames_differ, "the search changed the frames"


def test_sparse_search_is_refused_at_other_levels(tmp_path, tree):
    p = run("shards", "--imagenet", tree["root"], "--out", tmp_path / "l3", "--level", "3",
            "--zstd-search", "sparse", check=False)
    assert p.returncode != 0
    assert "--zstd-search full" in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
    run("shards", "--imagenet", tree["root"], "--out", tmp_path / "l3", "--level", "3",
        "--splits", "val")
    assert load_manifest(tmp_path / "l3")["zstd_search"] == "full", "level 3's default"


def test_raw_codec_stores_the_pixels_as_they_are(tmp_path, tree):
    """`--codec raw`: each record's stored bytes are the image (read here by
    slicing the file, with no decoder), the same pixels the zstd shards
    hold; verify passes and catches a flipped byte; bench reads the set."""
    m = tree["manifest"]
    raw = tmp_path / "raw"
    p = run("shards", "--imagenet", tree["root"], "--out", raw, "--shard-size", "7", "--codec", "raw")
    mr = load_manifest(raw)
    assert (mr["codec"], mr["pixel_filter"], mr["zstd_level"]) == ("raw", "none", 0)
    assert m["codec"] == "zstd"
    for split in ("train", "val"):
        for a, b in zip(m["splits"][split]["shards"], mr["splits"][split]["shards"]):
            sa, sb = read_shard(tree["out"] / a["file"]), read_shard(raw / b["file"])
            assert (sa["version"], sb["version"], sb["codec"]) == (3, 3, "raw")
            data = (raw / b["file"]).read_bytes()
            assert [r["name"] for r in sa["records"]] == [r["name"] for r in sb["records"]]
            for r, ia, ib in zip(sb["records"], sa["images"], sb["images"]):
                np.testing.assert_array_equal(ia, ib)
                assert data[r["offset"]:r["offset"] + r["len"]] == ia.tobytes(), r["name"]
    total = lambda d: sum(os.path.getsize(d / f) for f in os.listdir(d) if f.endswith(".shard"))
    assert total(raw) > 1.2 * total(tree["out"]), "raw takes the room zstd saves"
    assert "ok:" in run("verify", "--shards", raw).stdout
    bench = json.loads(run("bench", "--shards", raw, "--threads", "2", "--epochs", "1",
                           "--mode", "center", "--batch-size", "4", "--json").stdout)
    assert (bench["codec"], bench["decode"]) == ("raw", "raw check + copy")
    assert bench["images"] == mr["splits"]["train"]["images"]
    rec = read_shard(raw / "train-00001.shard")["records"][3]
    data = bytearray((raw / "train-00001.shard").read_bytes())
    data[rec["offset"] + 1000] ^= 0x01
    (raw / "train-00001.shard").write_bytes(bytes(data))
    p = run("verify", "--shards", raw, check=False)
    assert p.returncode == 1
    assert f"train-00001.shard: record 3 ({rec['name']})" in p.stderr and "checksum" in p.stderr


def test_zstd_settings_are_refused_with_the_raw_codec(tmp_path, tree):
    for extra in (["--level", "3"], ["--pixel-filter", "delta"], ["--zstd-search", "full"]):
        p = run("shards", "--imagenet", tree["root"], "--out", tmp_path / "r", "--codec", "raw",
                *extra, check=False)
        assert p.returncode != 0 and "apply to --codec zstd" in p.stderr, (extra, p.stderr)
    assert not (tmp_path / "r").exists(), "refused before any work"


def test_verify_names_the_bad_shard_and_record(tmp_path, tree):
    out = tmp_path / "copy"
    out.mkdir()
    for n in os.listdir(tree["out"]):
        (out / n).write_bytes((tree["out"] / n).read_bytes())
    assert "ok:" in run("verify", "--shards", out).stdout
    shard = read_shard(out / "train-00001.shard")
    rec = shard["records"][2]
    data = bytearray((out / "train-00001.shard").read_bytes())
    data[rec["offset"] + rec["len"] // 2] ^= 0xFF
    (out / "train-00001.shard").write_bytes(bytes(data))
    data = (out / "val-00000.shard").read_bytes()
    (out / "val-00000.shard").write_bytes(data[: len(data) - 100])
    p = run("verify", "--shards", out, check=False)
    assert p.returncode == 1
    assert f"train-00001.shard: record 2 ({rec['name']})" in p.stderr
    assert "val-00000.shard: damaged or truncated shard" in p.stderr


def test_export_writes_the_stored_image_and_says_what_it_is(tmp_path, tree):
    m = tree["manifest"]
    name, label, img = read_split(tree["out"], m, "train")[5]
    png = tmp_path / "x.png"
    p = run("export", "--shards", tree["out"], "--split", "train", "--name", name, "--out", png)
    assert (np.asarray(Image.open(png)) == img).all()
    wnid = m["classes"][label]["wnid"]
    for part in ("split=train", "record=5", f"label={label}", f"wnid={wnid}",
                 m["classes"][label]["name"], f"source={name}"):
        assert part in p.stdout, (part, p.stdout)
    p = run("export", "--shards", tree["out"], "--split", "train", "--record", 5, "--out", png)
    assert f"source={name}" in p.stdout
    p = run("export", "--shards", tree["out"], "--record", 10**6, "--out", png, check=False)
    assert p.returncode != 0 and "out of range" in p.stderr


def test_a_split_with_nothing_stored_fails_naming_why(tmp_path):
    """Links that lead nowhere, or files that are all not images, leave a
    split with nothing in it: the run exits non-zero with one line that says
    why, where a zero status would let a script go on to train on nothing."""
    links = tmp_path / "links" / "train" / "n01440764"
    links.mkdir(parents=True)
    for k in range(3):
        os.symlink(tmp_path / f"gone{k}.JPEG", links / f"{k}.JPEG")
    p = run("shards", "--imagenet", tmp_path / "links", "--out", tmp_path / "a",
            "--splits", "train", check=False)
    assert p.returncode != 0
    assert "no image file to store in train; 3 could not be read, e.g. " in p.stderr, p.stderr
    assert "0.JPEG: cannot stat file" in p.stderr, p.stderr
    assert not (tmp_path / "a").exists(), "nothing written"
    notes = tmp_path / "notes" / "train" / "n01440764"
    notes.mkdir(parents=True)
    for k in range(3):
        (notes / f"{k}.JPEG").write_text("not an image\n")
    p = run("shards", "--imagenet", tmp_path / "notes", "--out", tmp_path / "b",
            "--splits", "train", check=False)
    assert p.returncode != 0
    assert "train: none of its 3 files could be stored" in p.stderr, p.stderr
    for k in range(3):
        assert f"{k}.JPEG: not an image" in p.stderr, "each is named with its reason"
