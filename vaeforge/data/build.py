"""A dataset -> WebDataset shards + ``manifest.json``, split by identity (or by image), built atomically and
idempotently.

A dataset (:mod:`.lfw`, :mod:`.folder`; see :class:`~.dataset.Dataset`) says which files of its source are its
images, their identities and labels and how they are cut; the rest is here and the same for every dataset.
Output (read by the streaming loader): ``train-000000.tar``..., ``val-000000.tar``... with samples
``<key>.npy`` (cropped, resized RGB pixels, uint8 ``[H, W, 3]``) and ``<key>.json`` ({identity, file, labels}),
and ``manifest.json``. Pixels are stored raw, not as PNG: decoding a PNG costs several times as much CPU as
reading an .npy array, and on a CPU the loader shares the cores with training (the price: larger shards).
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import io
import json
import logging
import os
import random
import shutil
import urllib.parse
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from numbers import Real
from pathlib import Path
from typing import Any

import numpy as np
import webdataset as wds
from tqdm import tqdm

from ..config.loader import validate_options
from ..errors import ConfigError, DataError, unknown_choice
from .dataset import Dataset, PrepareConfig, SourceImage, source_digest
from .download import checksum_mismatch, fetch, file_digest, parse_checksum
from .folder import FOLDER
from .images import Crop, crop_box, crop_resize, decode_image
from .labels import BINARY, Labels
from .lfw import LFW

log = logging.getLogger(__name__)

DATASETS = {dataset.name: dataset for dataset in (LFW, FOLDER)}
MANIFEST = "manifest.json"
FORMAT = 2  # 1: PNG pixels (still read by the loader; prepare rebuilds it); 2: .npy pixels
KNOWN_FORMATS = (1, 2)  # outputs of these formats are ours: replaced when out of date, never refused
DOWNLOAD_DIR = "download"
SPLITS = ("train", "val")


def prepare(source: str | Path, out: str | Path, dataset: str = "lfw", **settings: Any) -> dict[str, Any]:
    """Prepare ``dataset`` (a name in :data:`DATASETS`) from a URL, an archive or a folder into ``out`` with the
    ``settings`` of its options dataclass; return the manifest."""
    if dataset not in DATASETS:
        raise unknown_choice("dataset", dataset, DATASETS)
    args = {"source": str(source), "out": str(out), **settings}
    return build(DATASETS[dataset], validate_options(DATASETS[dataset].options, args, "prepare"))


def build(dataset: Dataset, options: PrepareConfig) -> dict[str, Any]:
    """Prepare a dataset with checked options (an instance of its options dataclass); return the manifest.

    ``out`` is replaced only once the new output is complete; an ``out`` already built from the same
    source bytes, label files and settings is left as it is ("up to date").
    """
    args = asdict(options)
    out = Path(args["out"]).absolute()
    config = {**_config(args, dataset), **dataset.settings(args)}
    _check_replaceable(out)
    path = _local_source(config, out)
    source_info = {
        "path_or_url": config["source"],
        "sha256": source_digest(path, dataset.wanted),
        "labels_sha256": {name: _label_digest(Path(config[name])) for name in dataset.label_files if config[name]},
    }
    log.debug(f"{config['source']}: sha256 {source_info['sha256']}")
    existing = _read_manifest(out)
    if existing is not None and _is_up_to_date(existing, out, config, source_info):
        log.info(f"{out}: up to date (same source, labels and settings)")
        return existing
    images, labels = dataset.read(path, config)
    splits = split_images(_unique_keys(images), config["val_fraction"], config["seed"])
    staging = out.parent / f".{out.name}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        manifest = _write(staging, dataset, splits, labels, config, source_info)
    except BaseException:
        shutil.rmtree(staging)
        raise
    _install(staging, out)
    return manifest


def _config(args: dict[str, Any], dataset: Dataset) -> dict[str, Any]:
    """Check what the fields' types cannot (ConfigError) and normalise the options every dataset takes into the
    JSON recorded in the manifest."""
    source = str(args["source"])
    source = source if _is_url(source) else str(Path(source).absolute())
    checksum = args["checksum"] if args["checksum"] is not None else dataset.checksums.get(source)
    if checksum is not None:
        parse_checksum(str(checksum))
    return {
        "source": source,
        "image_size": args["image_size"],
        "val_fraction": _fraction(args["val_fraction"]),
        "checksum": None if checksum is None else str(checksum),
        "train_shards": args["train_shards"],
        "val_shards": args["val_shards"],
        "seed": args["seed"],
        "on_error": args["on_error"],
    }


def _fraction(value: Any) -> float:
    """A validation fraction in [0, 1)."""
    if isinstance(value, bool) or not isinstance(value, Real) or not 0 <= value < 1:
        raise ConfigError(f"val_fraction must be a number in [0, 1), got {value!r}")
    return float(value)


def _is_url(source: str) -> bool:
    """True for http(s) URLs: those are downloaded."""
    return source.startswith(("http://", "https://"))


def _local_source(config: dict[str, Any], out: Path) -> Path:
    """The archive or folder to read: a URL is downloaded into ``out/download/``; a local archive is verified."""
    source, checksum = config["source"], config["checksum"]
    if _is_url(source):
        name = urllib.parse.urlsplit(source).path.rsplit("/", 1)[-1] or "source.tgz"
        return fetch(source, out / DOWNLOAD_DIR / name, checksum)
    path = Path(source)
    if not path.exists():
        raise DataError(f"source {path}: no such file or folder")
    if checksum is not None:
        if path.is_dir():
            raise ConfigError("checksum applies to an archive or URL source, not to a folder")
        problem = checksum_mismatch(path, checksum)
        if problem:
            raise DataError(f"checksum mismatch for {path}: {problem}")
    return path


def _label_digest(path: Path) -> str:
    """sha256 of a label file; a missing one is a DataError naming it."""
    if not path.is_file():
        raise DataError(f"label file {path}: no such file")
    return file_digest(path, "sha256")


def _unique_keys(images: list[SourceImage]) -> list[SourceImage]:
    """The images, each sample key made by one of them (two names that differ only in their image extension
    would make the same key)."""
    seen: dict[str, SourceImage] = {}
    for image in images:
        other = seen.setdefault(image.key, image)
        if other is not image:
            raise DataError(f"{other.where} and {image.where} would be the same sample '{image.key}': rename or "
                            "remove one")
    return images


def split_images(images: list[SourceImage], val_fraction: float, seed: int) -> dict[str, list[SourceImage]]:
    """Deterministic split that keeps each identity on one side (an image without one is its own group, so a
    dataset without identities is split by image); train is shuffled so every shard mixes identities.

    Groups are ordered by a hash of seed and name and taken into val until it holds at least ``val_fraction``
    of the images.
    """
    counts: dict[str, int] = defaultdict(int)
    for image in images:
        counts[image.group] += 1
    order = sorted(counts, key=lambda name: hashlib.sha256(f"{seed}:{name}".encode()).hexdigest())
    val_groups: set[str] = set()
    val_count = 0
    for name in order:
        if val_count >= val_fraction * len(images):
            break
        val_groups.add(name)
        val_count += counts[name]
    train = [image for image in images if image.group not in val_groups]
    random.Random(seed).shuffle(train)
    return {"train": train, "val": [image for image in images if image.group in val_groups]}


def shard_sizes(count: int, shards: int) -> list[int]:
    """Split ``count`` samples into ``min(shards, count)`` shards whose sizes differ by at most one."""
    shards = min(shards, count)
    return [count // shards + (index < count % shards) for index in range(shards)]


def _write(folder: Path, dataset: Dataset, splits: dict[str, list[SourceImage]], labels: Labels,
           config: dict[str, Any], source_info: dict[str, Any]) -> dict[str, Any]:
    """Write every shard and then ``manifest.json`` (last: its presence marks a complete output)."""
    with tqdm(total=sum(map(len, splits.values())), unit="img", desc=f"prepare {dataset.name}") as bar:
        writer = _ShardWriter(folder, dataset, labels, config, bar)
        written = {split: writer.split(split, splits[split]) for split in SPLITS}
    manifest = {
        "format": FORMAT,
        "dataset": dataset.name,
        "image_size": config["image_size"],
        "crop": writer.crop,
        "source_size": list(next(iter(writer.sizes))) if len(writer.sizes) == 1 else None,
        "channels": 3,
        "splits": {split: info for split, (info, _) in written.items()},
        "label_columns": _label_columns(labels, [image for _, images in written.values() for image in images]),
        "source": source_info,
        "config": config,
        "skipped": writer.skipped,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "vaeforge_version": _version(),
    }
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


@dataclass
class _ShardWriter:
    """Writes the splits' shards, counting progress on ``bar``; keeps the images it left out (``skipped``) and the
    sizes of those it wrote (``sizes``: the manifest's ``source_size`` when there is one)."""

    folder: Path
    dataset: Dataset
    labels: Labels
    config: dict[str, Any]
    bar: tqdm
    skipped: list[dict[str, str]] = field(default_factory=list)
    sizes: set[tuple[int, int]] = field(default_factory=set)

    @property
    def crop(self) -> Crop:
        return self.dataset.crop(self.config)

    def split(self, split: str, images: list[SourceImage]) -> tuple[dict[str, Any], list[SourceImage]]:
        """Write one split's shards; return its manifest entry (count, identities, shards with sha256) and the
        images written. A shard left empty by skipped images is not written."""
        shards, kept, start = [], [], 0
        for index, size in enumerate(shard_sizes(len(images), self.config[f"{split}_shards"])):
            name = f"{split}-{index:06d}.tar"
            with open(self.folder / name, "wb") as stream, wds.TarWriter(stream, mtime=0) as tar:
                count = 0
                for image in images[start:start + size]:
                    sample = self._sample_or_skip(image)
                    if sample is not None:
                        tar.write(sample)
                        kept.append(image)
                        count += 1
                    self.bar.update()
            start += size
            if count:
                shards.append({"name": name, "count": count, "sha256": file_digest(self.folder / name, "sha256")})
            else:
                (self.folder / name).unlink()
        if images and not kept:
            raise DataError(f"no image of the {split} split is usable ({len(images)} skipped; see above)")
        identities = sorted({image.identity for image in kept if image.identity is not None})
        return {"count": len(kept), "identities": identities, "shards": shards}, kept

    def _sample_or_skip(self, image: SourceImage) -> dict[str, Any] | None:
        """The image's sample; None (and a ``skipped`` entry) for a bad image when ``on_error=skip``."""
        try:
            return self._sample(image)
        except DataError as exc:
            if self.config["on_error"] != "skip":
                raise DataError(f"{exc}; on_error=skip leaves such images out") from None
            self.skipped.append({"file": image.where, "reason": str(exc).removeprefix(f"{image.where}: ")})
            return None

    def _sample(self, image: SourceImage) -> dict[str, Any]:
        """One WebDataset sample: the cut, resized image as an .npy uint8 array and its metadata."""
        decoded = decode_image(image.read(), image.where)
        self.dataset.check(decoded, image.where)
        box = crop_box(self.crop, decoded.size, image.where)
        pixels = crop_resize(decoded, box, self.config["image_size"])
        self.sizes.add(decoded.size)
        meta = {"identity": image.identity, "file": image.file, "labels": self.labels.values.get(image.file, {})}
        buffer = io.BytesIO()
        np.save(buffer, np.asarray(pixels, dtype=np.uint8), allow_pickle=False)
        return {"__key__": image.key, "npy": buffer.getvalue(), "json": meta}


def _label_columns(labels: Labels, images: list[SourceImage]) -> dict[str, dict[str, Any]]:
    """Per column: kind, how many output images have it and, for binary columns, how many are 1."""
    rows = [labels.values[image.file] for image in images if image.file in labels.values]
    columns = {}
    for column, kind in labels.kinds.items():
        values = [row[column] for row in rows if column in row]
        columns[column] = {"kind": kind, "count": len(values)}
        if kind == BINARY:
            columns[column]["positives"] = int(sum(values))
    return columns


def _version() -> str:
    """The installed vaeforge version."""
    try:
        return importlib.metadata.version("vaeforge")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _read_manifest(out: Path) -> dict[str, Any] | None:
    """The manifest of an earlier prepare into ``out``, or None (none, unreadable, or not one of ours)."""
    try:
        manifest = json.loads((out / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    ours = isinstance(manifest, dict) and manifest.get("format") in KNOWN_FORMATS and "splits" in manifest
    return manifest if ours else None


def _is_up_to_date(manifest: dict[str, Any], out: Path, config: dict[str, Any], source_info: dict[str, Any]) -> bool:
    """Same settings, same source and label bytes, and every shard still present."""
    if manifest.get("format") != FORMAT or manifest.get("config") != config or manifest.get("source") != source_info:
        return False
    return all((out / shard["name"]).is_file() for split in manifest["splits"].values() for shard in split["shards"])


def _check_replaceable(out: Path) -> None:
    """Refuse to replace an ``out`` that is not ours: a file, or a folder with other content than a past output."""
    if out.is_file():
        raise DataError(f"out {out} is a file, expected a folder")
    if out.is_dir() and _read_manifest(out) is None and any(p.name != DOWNLOAD_DIR for p in out.iterdir()):
        raise DataError(f"out {out} exists and is not a prepared dataset (no vaeforge {MANIFEST}); "
                        "refusing to replace it")


def _install(staging: Path, out: Path) -> None:
    """Move the complete output into place, keeping an earlier ``out/download/``."""
    if not out.exists():
        os.replace(staging, out)
        return
    old = out.parent / f".{out.name}.old"
    shutil.rmtree(old, ignore_errors=True)
    os.replace(out, old)
    os.replace(staging, out)
    if (old / DOWNLOAD_DIR).exists():
        os.replace(old / DOWNLOAD_DIR, out / DOWNLOAD_DIR)
    shutil.rmtree(old)
