from os import PathLike
from typing import Iterator, Literal, Optional, Sequence, Tuple, Union

import numpy as np

__version__: str

class DamagedShardError(Exception):
    """A shard file or record failed its checks; the message names both."""

class Shards:
    path: str
    manifest: dict
    classes: list[Tuple[int, str, str]]
    mean: Optional[np.ndarray]
    eigenvalues: Optional[np.ndarray]
    eigenvectors: Optional[np.ndarray]
    def __init__(self, path: Union[str, PathLike]) -> None: ...

class Batch(tuple):
    views: Sequence[Tuple[int, int, bool, Tuple[float, float, float]]]
    records: Sequence[Tuple[int, int]]
    index: int

class Loader:
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
    ) -> None: ...
    def set_epoch(self, epoch: int) -> None: ...
    def __len__(self) -> int: ...
    def __iter__(self) -> Iterator[Batch]: ...
    def state_dict(self) -> dict: ...
    def load_state_dict(self, state: dict) -> None: ...
