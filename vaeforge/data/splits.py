"""A prepared dataset's splits read back in file order, with each image's labels: what tasks, fitted priors and
attribute directions are computed from (the training engine streams shuffled batches instead)."""
from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .manifest import shard_paths
from .stream import ErrorPolicy, decode_sample
from .tarstream import shard_samples

VAL = "val"
TRAIN = "train"


@dataclass
class Sample:
    """One image of a dataset split: its file name, pixels ``[3, H, W]`` in [0, 1] and labels (may be empty)."""

    name: str
    image: torch.Tensor
    labels: dict[str, float] = field(default_factory=dict)


def read_split(shards: list[str], column: str | None = None) -> Iterator[Sample]:
    """The samples of a split's shards in file order, with the labels of each sample's JSON metadata; with
    ``column``, only those labelled in it (the others are not decoded)."""
    for raw in shard_samples(shards, ErrorPolicy("raise")):
        labels = json.loads(raw["json"]).get("labels", {}) if "json" in raw else {}
        if column is None or column in labels:
            image, key = decode_sample(raw)
            yield Sample(f"{key}.png", image.float() / 255.0, labels)


def iter_split(shards: str | Path, manifest: dict[str, Any], name: str, limit: int = 0, column: str | None = None
               ) -> Iterator[Sample]:
    """The first ``limit`` (0: all) samples of split ``name`` of ``manifest``'s dataset, at ``shards`` (a
    ``data.shards`` value)."""
    samples = read_split(shard_paths(shards, manifest, name), column)
    return itertools.islice(samples, limit or None)


def chunks(items: Iterator[Sample], size: int) -> Iterator[list[Sample]]:
    """Consecutive lists of ``size`` samples (the last may be shorter)."""
    iterator = iter(items)
    while group := list(itertools.islice(iterator, size)):
        yield group
