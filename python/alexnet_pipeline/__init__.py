"""The alexnet-rs loader from Python.

    import alexnet_pipeline as ap
    shards = ap.Shards("shards")
    loader = ap.Loader(shards, split="train", batch_size=256, mode="train", output="u8")
    for epoch in range(90):
        loader.set_epoch(epoch)
        for images, labels in loader:
            ...

Batches view the loader's own buffers (no copy): a batch's buffer goes
back to the loader's pool when the last array or tensor made from it is
dropped. Holding a batch is always safe; holding many keeps that many
buffers (each batch_size x 224 x 224 x 3 bytes in uint8, 4x that in
float32) beyond the loader's own prefetch.
"""
import json
import os

import numpy as np

from . import _native
from ._native import DamagedShardError

__all__ = ["Shards", "Loader", "Batch", "DamagedShardError", "VIEW_DTYPE", "RECORD_DTYPE"]
__version__ = _native.__version__

CROP = 224
#: One view of an image: its window's top-left corner in the stored 256 x
#: 256 image, whether it is mirrored, and the RGB lighting offset added to
#: every pixel (zero outside train mode).
VIEW_DTYPE = np.dtype({"names": ["x", "y", "mirrored", "light"],
                       "formats": ["<u2", "<u2", "?", ("<f4", 3)],
                       "offsets": [0, 2, 4, 8], "itemsize": 20})
#: Where an image is stored: its shard's number in the split and its index
#: in that shard.
RECORD_DTYPE = np.dtype([("shard", "<u4"), ("index", "<u4")])


class Shards:
    """A shard folder (`pipeline shards`): its manifest, classes and, once
    `pipeline stats` has run, the mean image and the RGB eigen pairs."""

    def __init__(self, path):
        self.path = os.fspath(path)
        manifest = os.path.join(self.path, "manifest.json")
        if not os.path.isfile(manifest):
            raise FileNotFoundError(
                f"{self.path}: no manifest.json (make a shard folder with `pipeline shards`)")
        with open(manifest) as f:
            self.manifest = json.load(f)
        #: (index, wnid, name) of each class, in label order.
        self.classes = [(c["index"], c["wnid"], c["name"]) for c in self.manifest["classes"]]
        self.mean = self.eigenvalues = self.eigenvectors = None
        mean = os.path.join(self.path, "mean.npy")
        if os.path.isfile(mean):
            #: The per-pixel mean image, float32 256 x 256 x 3 (HWC).
            self.mean = np.load(mean)
        stats = os.path.join(self.path, "stats.json")
        if os.path.isfile(stats):
            with open(stats) as f:
                s = json.load(f)
            self.eigenvalues = np.asarray(s["eigenvalues"], np.float64)
            self.eigenvectors = np.asarray(s["eigenvectors"], np.float64)

    def __repr__(self):
        codec = self.manifest.get("codec", "zstd")
        return f"Shards({self.path!r}, {len(self.classes)} classes, {codec})"


class Batch(tuple):
    """(images, labels), with `views`: a numpy array (VIEW_DTYPE) of each
    view's x, y, mirrored and light, for applying the mean and lighting to
    uint8 crops on the GPU; `records`: a numpy array (RECORD_DTYPE) of each
    image's shard number and index in the shard; and `index`, the batch's
    position in its epoch. In "tencrop" mode an image's ten views are
    consecutive: images and views have 10x the length of labels and
    records."""

    views = ()
    records = ()
    index = 0


def _torch():
    try:
        import torch
        return torch
    except ImportError:
        return None


def _dist_rank_world():
    torch = _torch()
    if torch is not None and torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class Loader:
    """Batches of augmented crops from a split of `shards`.

    mode: "train" (random crop, mirror, lighting), "center", or "tencrop"
    (ten views per image, kept together). output: "u8" (uint8 N x 224 x 224
    x 3, plus each view's parameters) or "f32" (float32 N x 3 x 224 x 224,
    mean subtracted and lighting added). rank/world default to
    torch.distributed's when it is initialised. Batches are torch tensors
    when torch imports (tensors=False: numpy arrays). Iterating twice
    without `set_epoch` repeats the same epoch.
    """

    def __init__(self, shards, split="train", batch_size=256, mode="train", output="u8",
                 threads=None, prefetch=None, seed=0, rank=None, world=None, drop_last=True,
                 skip_damaged=False, tensors=None):
        if not isinstance(shards, Shards):
            shards = Shards(shards)
        if rank is None or world is None:
            rank, world = _dist_rank_world()
        threads = threads or os.cpu_count() or 1
        prefetch = prefetch or 2 * threads
        self.shards, self.output, self.mode = shards, output, mode
        self._native = _native.Loader(shards.path, split, batch_size, mode, output, threads,
                                      prefetch, seed, rank, world, drop_last, skip_damaged)
        self._torch = _torch() if tensors in (None, True) else None
        if tensors and self._torch is None:
            raise ImportError("tensors=True needs torch")

    def set_epoch(self, epoch):
        """The epoch the next iteration runs (its order and draws)."""
        self._native.set_epoch(epoch)

    def __len__(self):
        return len(self._native)

    def __iter__(self):
        self._native.start()
        while True:
            got = self._native.next_batch()
            if got is None:
                return
            yield self._batch(*got)

    def _batch(self, buffer, labels, views, records):
        dtype = np.uint8 if buffer.dtype == "u8" else np.float32
        views = np.frombuffer(views, dtype=VIEW_DTYPE)
        records = np.frombuffer(records, dtype=RECORD_DTYPE)
        n = len(views)
        shape = (n, CROP, CROP, 3) if dtype == np.uint8 else (n, 3, CROP, CROP)
        images = np.frombuffer(buffer, dtype=dtype).reshape(shape)
        labels = np.frombuffer(labels, dtype="<i8")
        if self._torch is not None:
            images, labels = self._torch.from_numpy(images), self._torch.from_numpy(labels)
        batch = Batch((images, labels))
        batch.views = views
        batch.records = records
        batch.index = buffer.index
        return batch

    def state_dict(self):
        """Where iteration stands, to continue mid-epoch (`load_state_dict`)."""
        epoch, batch = self._native.position()
        return {"epoch": epoch, "batch": batch}

    def load_state_dict(self, state):
        """The next iteration continues epoch `state["epoch"]` from batch
        `state["batch"]`, with exactly the batches an uninterrupted run
        would have given."""
        self._native.seek(int(state["epoch"]), int(state["batch"]))
