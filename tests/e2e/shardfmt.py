"""An independent reader of the shard format, written from shards/README.md
with numpy + python-zstandard + xxhash only. The tests read what the Rust
writer wrote through this, so a format bug cannot hide behind a matching
Rust reader."""
import struct

import numpy as np
import xxhash
import zstandard

HEADER_V1 = struct.Struct("<8sIIIIIiQI4x")
IDENTITY = struct.Struct("<IIIQ")  # split, shard number, planned files, first file (format 2)
CODEC = struct.Struct("<I12s")  # codec, reserved (format 3)
SPLITS = {0: "train", 1: "val"}
CODECS = {0: "zstd", 1: "raw"}
FOOTER = struct.Struct("<QQQ8s")


class ShardFormatError(Exception):
    pass


def read_index(path):
    """Header fields, records (offset, len, label, checksum, frame_checksum,
    name) and skipped files of a shard, read from its header, footer and
    index only. Format 2 adds the identity and the frame checksums, format 3
    the codec."""
    with open(path, "rb") as f:
        size = f.seek(0, 2)
        if size < HEADER_V1.size + FOOTER.size:
            raise ShardFormatError(f"{path}: too short")
        f.seek(0)
        magic, version, h, w, c, filt, level, plan_id, search = HEADER_V1.unpack(f.read(HEADER_V1.size))
        if magic != b"ALXSHARD" or version not in (1, 2, 3):
            raise ShardFormatError(f"{path}: bad magic/version")
        identity, codec = None, "zstd"
        if version >= 2:
            f.seek(44)
            split, number, planned, first = IDENTITY.unpack(f.read(IDENTITY.size))
            identity = dict(split=SPLITS[split], number=number, planned=planned, first=first)
        if version >= 3:
            code, reserved = CODEC.unpack(f.read(CODEC.size))
            if code not in CODECS or reserved != bytes(12):
                raise ShardFormatError(f"{path}: codec {code}, reserved {reserved!r}")
            codec = CODECS[code]
        f.seek(size - FOOTER.size)
        index_offset, index_len, index_sum, end_magic = FOOTER.unpack(f.read(FOOTER.size))
        if end_magic != b"ALXSHEND":
            raise ShardFormatError(f"{path}: no footer")
        f.seek(index_offset)
        index = f.read(index_len)
    if xxhash.xxh3_64_intdigest(index) != index_sum:
        raise ShardFormatError(f"{path}: index checksum")
    pos = 0

    def take(fmt):
        nonlocal pos
        vals = struct.unpack_from(fmt, index, pos)
        pos += struct.calcsize(fmt)
        return vals

    def string():
        (n,) = take("<I")
        nonlocal pos
        s = index[pos:pos + n].decode()
        pos += n
        return s

    records = []
    (count,) = take("<I")
    for _ in range(count):
        offset, length, label, checksum = take("<QIIQ")
        (frame_checksum,) = take("<Q") if version >= 2 else (None,)
        records.append(dict(offset=offset, len=length, label=label, checksum=checksum,
                            frame_checksum=frame_checksum, name=string()))
    (nskipped,) = take("<I")
    skipped = [dict(path=string(), reason=string()) for _ in range(nskipped)]
    assert pos == len(index)
    return dict(version=version, height=h, width=w, channels=c, filter=filt, level=level, plan_id=plan_id,
                search=search, identity=identity, codec=codec, index_xxh3=index_sum, size=size, records=records,
                skipped=skipped)


def read_shard(path):
    """`read_index` plus every record's pixels, checked against its checksum."""
    shard = read_index(path)
    h, w, c, filt = shard["height"], shard["width"], shard["channels"], shard["filter"]
    data = open(path, "rb").read()
    dctx = zstandard.ZstdDecompressor()
    images = []
    for r in shard["records"]:
        frame = data[r["offset"]:r["offset"] + r["len"]]
        if r["frame_checksum"] is not None and xxhash.xxh3_64_intdigest(frame) != r["frame_checksum"]:
            raise ShardFormatError(f"{path}: record {r['name']} frame checksum")
        raw = frame if shard["codec"] == "raw" else dctx.decompress(frame, max_output_size=h * w * c)
        a = np.frombuffer(raw, np.uint8).reshape(h, w, c)
        if filt == 1:  # delta: each byte minus the same channel one pixel left
            a = np.cumsum(a.astype(np.uint64), axis=1).astype(np.uint8)
        elif filt != 0:
            raise ShardFormatError(f"{path}: unknown filter {filt}")
        if xxhash.xxh3_64_intdigest(a.tobytes()) != r["checksum"]:
            raise ShardFormatError(f"{path}: record {r['name']} checksum")
        images.append(a)
    return dict(shard, images=images)


def read_split(shard_dir, manifest, split):
    """All (name, label, image) of a split, in stored order."""
    out = []
    for number, info in enumerate(manifest["splits"][split]["shards"]):
        s = read_shard(f"{shard_dir}/{info['file']}")
        assert len(s["records"]) == info["records"]
        assert s["size"] == info["bytes"]
        if s["identity"] is not None:
            assert (s["identity"]["split"], s["identity"]["number"]) == (split, number)
            assert f"{s['plan_id']:016x}" == info["plan_id"]
            assert f"{s['index_xxh3']:016x}" == info["index_xxh3"]
        out += [(r["name"], r["label"], im) for r, im in zip(s["records"], s["images"])]
    return out
