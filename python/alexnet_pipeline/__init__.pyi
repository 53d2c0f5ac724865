from os import PathLike
from typing import Any, Iterator, Literal, Optional, Tuple, Union

import numpy as np

__version__: str

VIEW_DTYPE: np.dtype
"""x (uint16), y (uint16): the window's top-left corner in the stored
256 x 256 image; mirrored (bool); light (3 x float32): the RGB offset added
to every pixel (zero outside train mode)."""
RECORD_DTYPE: np.dtype
"""shard (uint32): the shard's number in the split; index (uint32): the
record's index in that shard."""

class DamagedShardError(Exception):
    """A shard file or record failed its checks; the message names both."""

class Shards:
    """A shard folder made by `pipeline shards` (and `pipeline stats`)."""

    path: str
    manifest: dict
    """manifest.json as written by `pipeline shards`."""
    classes: list[Tuple[int, str, str]]
    """(label, wnid, name) of each class, in label order."""
    mean: Optional[np.ndarray]
    """The per-pixel mean image, float32 256 x 256 x 3 (None before `pipeline stats`)."""
    eigenvalues: Optional[np.ndarray]
    """The RGB covariance's eigenvalues (None before `pipeline stats`)."""
    eigenvectors: Optional[np.ndarray]
    """The RGB covariance's eigenvectors, one per column."""
    def __init__(self, path: Union[str, PathLike]) -> None:
        """Reads `path`/manifest.json (FileNotFoundError when missing) and,
        where present, mean.npy and stats.json."""

class Batch(tuple):
    """(images, labels) with the views and records they came from.

    images: uint8 N x 224 x 224 x 3 or float32 N x 3 x 224 x 224 (a torch
    tensor, or numpy with tensors=False), viewing the loader's buffer;
    labels: int64, one per stored image (in tencrop mode N / 10)."""

    views: np.ndarray
    """VIEW_DTYPE, one per image row (ten per stored image in tencrop mode)."""
    records: np.ndarray
    """RECORD_DTYPE, one per stored image."""
    index: int
    """The batch's position in its epoch."""

class Loader:
    """Batches of augmented 224 x 224 crops from one split of a shard folder."""

    shards: Shards
    output: str
    mode: str
    def __init__(
        self,
        shards: Union[Shards, str, PathLike],
        split: Literal["train", "val"] = "train",
        batch_size: int = 256,
        mode: Literal["train", "center", "tencrop"] = "train",
        output: Literal["u8", "f32"] = "u8",
        threads: Optional[int] = None,
        prefetch: Optional[int] = None,
        seed: int = 0,
        rank: Optional[int] = None,
        world: Optional[int] = None,
        drop_last: bool = True,
        skip_damaged: bool = False,
        tensors: Optional[bool] = None,
    ) -> None:
        """
        shards: the folder, or a Shards.
        split: "train" or "val".
        batch_size: stored images per batch (tencrop: 10 views each).
        mode: "train" (random crop, mirror, PCA lighting; a new order each
            epoch), "center" (the centre crop, stored order) or "tencrop"
            (four corners, centre and their mirrors, stored order).
        output: "u8" (uint8 NHWC; apply mean and lighting yourself, e.g. on
            the GPU, from `Batch.views`) or "f32" (float32 NCHW with the
            per-pixel mean subtracted and the lighting added).
        threads: worker threads (default: every CPU).
        prefetch: batches made ahead of the one taken (default 2 x threads).
        seed: with the epoch, decides the order, crops, mirrors and lighting.
        rank, world: this process's share of each epoch (default:
            torch.distributed's when it is initialised, else 0 and 1).
        drop_last: leave out the epoch's last, short batch.
        skip_damaged: leave a damaged record out with a warning instead of
            raising DamagedShardError.
        tensors: torch tensors (default when torch imports) or numpy arrays.

        Raises FileNotFoundError (no shard folder), ValueError (bad
        arguments, missing stats for f32 or lighting)."""
    def set_epoch(self, epoch: int) -> None:
        """The epoch the next iteration runs. Without it, iterating again
        repeats the same epoch."""
    def __len__(self) -> int:
        """Batches this rank gets in each epoch."""
    def __iter__(self) -> Iterator[Batch]: ...
    def state_dict(self) -> dict[str, Any]:
        """{"epoch", "batch"}: where iteration stands."""
    def load_state_dict(self, state: dict[str, Any]) -> None:
        """The next iteration continues from `state`, with exactly the batches
        an uninterrupted run would have given."""
