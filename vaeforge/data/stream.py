"""Streaming WebDataset loader for multi-process training.

Every rank gets disjoint shards and exactly the same number of batches per epoch (ranks that ran out would
deadlock DDP), and the sample order is a pure function of (seed, epoch, rank, worker): resuming mid-epoch
replays the epoch's stream and skips the batches already trained on.

Bad data: with ``on_error="raise"`` a truncated, missing or unreachable shard (a remote one is first read again:
``sources.read``), an undecodable image or an image of the wrong size stops the run with the shard and sample
named; with ``"skip"`` it is skipped, counted (each batch carries
``skipped``, the errors met since the previous batch of its worker) and warned about, and the batch is filled
from the following samples, so no rank runs short.
"""
from __future__ import annotations

import io
import random
import traceback
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
import webdataset as wds
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ..config.schema import ON_ERROR
from ..errors import DataError, unknown_choice
from .npy import read_npy
from .tarstream import shard_samples



@dataclass(frozen=True)
class StreamSpec:
    """What one rank streams in one epoch."""

    shards: tuple[str, ...]  # the split's shards, all of them (each rank picks its own)
    batch_size: int
    batches: int  # per rank, per epoch
    rank: int
    world: int
    seed: int
    epoch: int
    shuffle_buffer: int
    image_size: int | None = None  # checked when given
    on_error: str = "raise"


def check_on_error(on_error: str) -> None:
    if on_error not in ON_ERROR:
        raise unknown_choice("data.on_error", on_error, ON_ERROR)


class ErrorPolicy:
    """Raise bad-data errors with the shard named, or count and warn about them and go on."""

    def __init__(self, on_error: str) -> None:
        check_on_error(on_error)
        self.skip = on_error == "skip"
        self.count = 0

    def __call__(self, error: Exception) -> bool:
        """The handler of a shard that cannot be read (missing, truncated, not a tar, unreachable) or a bad sample:
        ``error``, a DataError naming them, is raised, or counted and warned about."""
        if not self.skip:
            raise error
        self.count += 1
        warnings.warn(f"skipped: {error}", stacklevel=2)
        return True

    def decode(self, samples: Iterable[dict], image_size: int | None) -> Iterator[tuple[torch.Tensor, str]]:
        for sample in samples:
            try:
                yield decode_sample(sample, image_size)
            except DataError as exc:
                self(exc)


def decode_sample(sample: dict, image_size: int | None = None) -> tuple[torch.Tensor, str]:
    """Pixels (``npy``; ``png`` in shards of format 1) -> uint8 tensor ``[C, H, W]``; a broken or wrong-size
    image names its shard and key."""
    where = f"shard {sample.get('__url__')}: sample '{sample.get('__key__')}'"
    if "npy" not in sample and "png" not in sample:
        has = ", ".join(k for k in sample if not k.startswith("__"))
        raise DataError(f"{where} has no npy or png image (has: {has})")
    try:
        if "npy" in sample:
            array = read_npy(sample["npy"])
            if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
                raise ValueError(f"array of {array.dtype} {list(array.shape)}, expected uint8 [H, W, 3]")
        else:
            with Image.open(io.BytesIO(sample["png"])) as img:
                array = np.array(img.convert("RGB"))  # writable: torch shares its memory
    except Exception as exc:
        raise DataError(f"{where} is unreadable ({exc})") from None
    if image_size is not None and array.shape[:2] != (image_size, image_size):
        raise DataError(f"{where} is {array.shape[1]}x{array.shape[0]}, the dataset's size is {image_size}x{image_size}")
    return torch.from_numpy(array).permute(2, 0, 1), sample["__key__"]


def _read(shards: list[str], policy: ErrorPolicy) -> Iterator[dict]:
    return shard_samples(shards, policy)


class ShardStream(IterableDataset):
    """Batches ``{"image": uint8 [B, C, H, W], "key": [str], "skipped": int}`` for one rank and epoch."""

    def __init__(self, spec: StreamSpec) -> None:
        super().__init__()
        self.spec = spec

    def _my_shards(self, worker: int, workers: int) -> list[str]:
        s = self.spec
        order = list(s.shards)
        random.Random(f"{s.seed}/{s.epoch}/shards").shuffle(order)
        mine = order[s.rank :: s.world][worker::workers]
        if not mine:
            raise DataError(
                f"{len(s.shards)} shards are too few for {s.world} ranks x {workers} workers: "
                "prepare more shards (train_shards=...) or use fewer loader workers"
            )
        return mine

    def _samples(self, shards: list[str], rng: random.Random, policy: ErrorPolicy) -> Iterator[dict]:
        """The worker's shards in a new random order on each pass, forever (the quota decides when to stop)."""
        while True:
            order = list(shards)
            rng.shuffle(order)
            produced = False
            for sample in _read(order, policy):
                produced = True
                yield sample
            if not produced:
                raise DataError(f"no readable sample in shards {', '.join(order)}")

    def __iter__(self) -> Iterator[dict]:
        s = self.spec
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        quota = s.batches // workers + (1 if worker < s.batches % workers else 0)
        rng = random.Random(f"{s.seed}/{s.epoch}/{s.rank}/{worker}")
        policy = ErrorPolicy(s.on_error)
        shuffled = wds.shuffle(s.shuffle_buffer, initial=s.shuffle_buffer, rng=rng)(
            self._samples(self._my_shards(worker, workers), rng, policy)
        )
        decoded = policy.decode(shuffled, s.image_size)
        reported = 0
        for _ in range(quota):
            batch = _collate([next(decoded) for _ in range(s.batch_size)])
            batch["skipped"], reported = policy.count - reported, policy.count
            yield batch


def train_loader(spec: StreamSpec, num_workers: int, pin_memory: bool = False) -> DataLoader:
    """A DataLoader over one rank's epoch; batches come out in a fixed order (round-robin over workers).

    It gets its own generator: drawing worker seeds from the global RNG would make a resumed run's random
    stream differ from an uninterrupted one. ``pin_memory`` (for a GPU) puts batches in page-locked memory,
    from which a non-blocking copy to the device overlaps with compute.
    """
    generator = torch.Generator().manual_seed(hash((spec.seed, spec.epoch, spec.rank)) & 0x7FFFFFFF)
    return DataLoader(
        ShardStream(spec), batch_size=None, num_workers=num_workers, persistent_workers=False,
        prefetch_factor=4 if num_workers else None, generator=generator, pin_memory=pin_memory,
    )


def worker_death(exc: BaseException) -> DataError | None:
    """A DataError for a loader worker process that died (killed, out of memory); None for any other error.

    PyTorch reports the death as a RuntimeError from its SIGCHLD handler wherever the main process is; when the
    worker dies while it hands a batch over, the main process instead fails to fetch the batch's shared memory
    from it (a ConnectionError, EOFError or FileNotFoundError raised in the hand-over code)."""
    if isinstance(exc, RuntimeError) and "DataLoader worker" in str(exc):
        detail = str(exc).splitlines()[0].strip()
    elif isinstance(exc, (ConnectionError, EOFError, FileNotFoundError)) and _in_handover(exc):
        detail = f"it was handing a batch over: {type(exc).__name__}: {exc}"
    else:
        return None
    return DataError(f"a data loader worker process died ({detail}): out of memory? "
                     "lower data.num_workers or data.shuffle_buffer")


HANDOVER_CODE = ("multiprocessing/resource_sharer.py", "multiprocessing/reductions.py")  # python's and torch's


def _in_handover(exc: BaseException) -> bool:
    """Whether ``exc`` was raised while receiving a batch's shared tensors from a worker process."""
    files = [frame.filename for frame in traceback.extract_tb(exc.__traceback__)]
    return any(name.endswith(HANDOVER_CODE) for name in files)


def eval_batches(shards: list[str], batch_size: int, rank: int, world: int, image_size: int | None = None,
                 on_error: str = "raise") -> Iterator[dict]:
    """The split's samples in file order, this rank's shards only (for validation and tasks)."""
    policy = ErrorPolicy(on_error)
    batch: list[tuple[torch.Tensor, str]] = []
    for item in policy.decode(_read(shards[rank::world], policy), image_size):
        batch.append(item)
        if len(batch) == batch_size:
            yield _collate(batch)
            batch = []
    if batch:
        yield _collate(batch)


def _collate(items: list[tuple[torch.Tensor, str]]) -> dict:
    images, keys = zip(*items)
    return {"image": torch.stack(images), "key": list(keys)}
