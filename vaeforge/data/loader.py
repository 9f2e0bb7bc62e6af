"""Streaming WebDataset loader for multi-process training.

Every rank gets disjoint shards and exactly the same number of batches per epoch (ranks that ran out would
deadlock DDP), and the sample order is a pure function of (seed, epoch, rank, worker): resuming mid-epoch
replays the epoch's stream and skips the batches already trained on.
"""
from __future__ import annotations

import io
import random
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
import webdataset as wds
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ..errors import DataError


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


def decode_sample(sample: dict) -> tuple[torch.Tensor, str]:
    """PNG bytes -> uint8 tensor ``[C, H, W]``; a broken image names its shard and key."""
    try:
        with Image.open(io.BytesIO(sample["png"])) as img:
            array = np.asarray(img.convert("RGB"))
    except Exception as exc:
        raise DataError(f"shard {sample.get('__url__')}: sample '{sample.get('__key__')}' is unreadable ({exc})")
    return torch.from_numpy(array.copy()).permute(2, 0, 1), sample["__key__"]


def _raise_with_shard(exc: Exception) -> bool:
    raise DataError(f"reading shards: {exc}") from exc


class ShardStream(IterableDataset):
    """Batches ``{"image": uint8 [B, C, H, W], "key": [str]}`` for one rank and epoch; see the module doc."""

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

    def _samples(self, shards: list[str], rng: random.Random) -> Iterator[dict]:
        """The worker's shards in a new random order on each pass, forever (the quota decides when to stop)."""
        while True:
            order = list(shards)
            rng.shuffle(order)
            yield from wds.tarfile_to_samples(handler=_raise_with_shard)(iter([{"url": u} for u in order]))

    def __iter__(self) -> Iterator[dict]:
        s = self.spec
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        quota = s.batches // workers + (1 if worker < s.batches % workers else 0)
        rng = random.Random(f"{s.seed}/{s.epoch}/{s.rank}/{worker}")
        stream = wds.shuffle(s.shuffle_buffer, initial=s.shuffle_buffer, rng=rng)(
            self._samples(self._my_shards(worker, workers), rng)
        )
        for _ in range(quota):
            yield _collate([decode_sample(next(stream)) for _ in range(s.batch_size)])


def train_loader(spec: StreamSpec, num_workers: int) -> DataLoader:
    """A DataLoader over one rank's epoch; batches come out in a fixed order (round-robin over workers).

    It gets its own generator: drawing worker seeds from the global RNG would make a resumed run's random
    stream differ from an uninterrupted one.
    """
    generator = torch.Generator().manual_seed(hash((spec.seed, spec.epoch, spec.rank)) & 0x7FFFFFFF)
    return DataLoader(
        ShardStream(spec), batch_size=None, num_workers=num_workers, persistent_workers=False,
        prefetch_factor=4 if num_workers else None, generator=generator,
    )


def eval_batches(shards: list[str], batch_size: int, rank: int, world: int) -> Iterator[dict]:
    """The split's samples in file order, this rank's shards only (for validation and tasks)."""
    mine = shards[rank::world]
    samples = wds.tarfile_to_samples(handler=_raise_with_shard)(iter([{"url": u} for u in mine]))
    batch: list[tuple[torch.Tensor, str]] = []
    for sample in samples:
        batch.append(decode_sample(sample))
        if len(batch) == batch_size:
            yield _collate(batch)
            batch = []
    if batch:
        yield _collate(batch)


def _collate(items: list[tuple[torch.Tensor, str]]) -> dict:
    images, keys = zip(*items)
    return {"image": torch.stack(images), "key": list(keys)}
