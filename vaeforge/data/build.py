"""LFW -> WebDataset shards + ``manifest.json``, split by identity, built atomically and idempotently.

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
import os
import random
import shutil
import urllib.parse
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from numbers import Real
from pathlib import Path
from typing import Any, List, Optional

import numpy as np
import webdataset as wds
from omegaconf import MISSING
from tqdm import tqdm

from ..config.fields import at_least, choice
from ..config.schema import ON_ERROR
from ..config.loader import validate_options
from ..errors import ConfigError, DataError
from .download import checksum_mismatch, fetch, file_digest, parse_checksum
from .images import crop_resize, decode_image
from .lfw import (
    LFW_IMAGE_SIZE,
    Labels,
    LfwImage,
    folder_digest,
    read_attributes,
    read_emotions,
    read_gender,
    read_images,
)

OFFICIAL_URL = "http://vis-www.cs.umass.edu/lfw/lfw-deepfunneled.tgz"
OFFICIAL_CHECKSUM = "md5:68331da3eb755a505a502b5aacb3c201"
MANIFEST = "manifest.json"
FORMAT = 2  # 1: PNG pixels (still read by the loader; prepare rebuilds it); 2: .npy pixels
KNOWN_FORMATS = (1, 2)  # outputs of these formats are ours: replaced when out of date, never refused
DOWNLOAD_DIR = "download"
SPLITS = ("train", "val")
LABEL_FILES = ("attributes", "emotions", "gender_male", "gender_female")


@dataclass
class PrepareConfig:
    """How an LFW source becomes shards; normalised, it is recorded as the manifest's ``config``."""

    source: str = MISSING  # URL, .tgz archive or extracted folder of LFW
    out: str = MISSING  # output folder: shards and manifest.json (replaced only once complete)
    image_size: int = at_least(1, 64)  # side of the square RGB images written
    crop: List[int] = field(default_factory=lambda: [50, 50, 200, 200])  # [left, top, right, bottom] box cut before resizing
    val_fraction: float = 0.05  # share of identities in the val split, in [0, 1)
    attributes: Optional[str] = None  # lfw_attributes.txt: 73 attribute scores per image
    emotions: Optional[str] = None  # lfw_emotions.csv
    gender_male: Optional[str] = None  # lfw_gender_male.txt
    gender_female: Optional[str] = None  # lfw_gender_female.txt
    checksum: Optional[str] = None  # md5:<hex> or sha256:<hex> of the archive (the official URL's is known)
    train_shards: int = at_least(1, 16)  # shard files of the train split
    val_shards: int = at_least(1, 4)  # shard files of the val split
    seed: int = at_least(0, 0)  # seed of the identity split and the shard order
    on_error: str = choice("raise", ON_ERROR)  # an unreadable image, or one not 250x250: raise (naming it) or skip (listed in the summary and manifest)


def prepare(source: str | Path, out: str | Path, **settings: Any) -> dict[str, Any]:
    """Prepare LFW from a URL, a .tgz or a folder into ``out`` with the :class:`PrepareConfig` ``settings``;
    return the manifest.

    ``out`` is replaced only once the new output is complete; an ``out`` already built from the same
    source bytes, label files and settings is left as it is ("up to date").
    """
    given = {name: str(value) if isinstance(value, Path) else value for name, value in settings.items()}
    options = validate_options(PrepareConfig, {"source": str(source), "out": str(out), **given}, "prepare")
    args = asdict(options)
    out = Path(args.pop("out")).absolute()
    config = _config(args)
    _check_replaceable(out)
    path = _local_source(config, out)
    source_info = {
        "path_or_url": config["source"],
        "sha256": folder_digest(path) if path.is_dir() else file_digest(path, "sha256"),
        "labels_sha256": {name: _label_digest(Path(config[name])) for name in LABEL_FILES if config[name]},
    }
    existing = _read_manifest(out)
    if existing is not None and _is_up_to_date(existing, out, config, source_info):
        print(f"{out}: up to date (same source, labels and settings)")
        return existing
    labels = _read_labels(config)
    splits = split_by_identity(read_images(path), config["val_fraction"], config["seed"])
    staging = out.parent / f".{out.name}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        manifest = _build(staging, splits, labels, config, source_info)
    except BaseException:
        shutil.rmtree(staging)
        raise
    _install(staging, out)
    return manifest


def _config(args: dict[str, Any]) -> dict[str, Any]:
    """Check what the fields' types cannot (ConfigError) and normalise the arguments into the JSON recorded in
    the manifest."""
    source = str(args["source"])
    source = source if _is_url(source) else str(Path(source).absolute())
    checksum = args["checksum"]
    if checksum is None and source == OFFICIAL_URL:
        checksum = OFFICIAL_CHECKSUM
    if checksum is not None:
        parse_checksum(str(checksum))
    return {
        "source": source,
        "image_size": args["image_size"],
        "crop": _crop(args["crop"]),
        "val_fraction": _fraction(args["val_fraction"]),
        **{name: None if args[name] is None else str(Path(args[name]).absolute()) for name in LABEL_FILES},
        "checksum": None if checksum is None else str(checksum),
        "train_shards": args["train_shards"],
        "val_shards": args["val_shards"],
        "seed": args["seed"],
        "on_error": args["on_error"],
    }


def _crop(crop: Any) -> list[int]:
    """A crop box (left, top, right, bottom) of integers inside the 250x250 LFW images."""
    box = list(crop) if isinstance(crop, (list, tuple)) else None
    if (box is None or len(box) != 4 or any(isinstance(v, bool) or not isinstance(v, int) for v in box)
            or not 0 <= box[0] < box[2] <= LFW_IMAGE_SIZE or not 0 <= box[1] < box[3] <= LFW_IMAGE_SIZE):
        raise ConfigError(f"crop must be [left, top, right, bottom] inside the {LFW_IMAGE_SIZE}x{LFW_IMAGE_SIZE} "
                          f"LFW images with left < right and top < bottom, got {crop!r}")
    return box


def _fraction(value: Any) -> float:
    """A validation fraction in [0, 1)."""
    if isinstance(value, bool) or not isinstance(value, Real) or not 0 <= value < 1:
        raise ConfigError(f"val_fraction must be a number in [0, 1), got {value!r}")
    return float(value)


def _is_url(source: str) -> bool:
    """True for http(s) URLs: those are downloaded."""
    return source.startswith(("http://", "https://"))


def _local_source(config: dict[str, Any], out: Path) -> Path:
    """The .tgz or folder to read: a URL is downloaded into ``out/download/``; a local .tgz is verified."""
    source, checksum = config["source"], config["checksum"]
    if _is_url(source):
        name = urllib.parse.urlsplit(source).path.rsplit("/", 1)[-1] or "lfw.tgz"
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


def _read_labels(config: dict[str, Any]) -> Labels:
    """Merge the configured label files into one label table."""
    labels = Labels()
    for name, reader in (("attributes", read_attributes), ("emotions", read_emotions)):
        if config[name]:
            labels = labels.merge(reader(Path(config[name])))
    if config["gender_male"] or config["gender_female"]:
        paths = [Path(config[name]) if config[name] else None for name in ("gender_male", "gender_female")]
        labels = labels.merge(read_gender(*paths))
    return labels


def split_by_identity(images: list[LfwImage], val_fraction: float, seed: int) -> dict[str, list[LfwImage]]:
    """Deterministic identity-disjoint split; train is shuffled so every shard mixes identities.

    Identities are ordered by a hash of seed and name and taken into val until it holds at least
    ``val_fraction`` of the images.
    """
    counts: dict[str, int] = defaultdict(int)
    for image in images:
        counts[image.identity] += 1
    order = sorted(counts, key=lambda name: hashlib.sha256(f"{seed}:{name}".encode()).hexdigest())
    val_ids: set[str] = set()
    val_count = 0
    for name in order:
        if val_count >= val_fraction * len(images):
            break
        val_ids.add(name)
        val_count += counts[name]
    train = [image for image in images if image.identity not in val_ids]
    random.Random(seed).shuffle(train)
    return {"train": train, "val": [image for image in images if image.identity in val_ids]}


def shard_sizes(count: int, shards: int) -> list[int]:
    """Split ``count`` samples into ``min(shards, count)`` shards whose sizes differ by at most one."""
    shards = min(shards, count)
    return [count // shards + (index < count % shards) for index in range(shards)]


def _build(folder: Path, splits: dict[str, list[LfwImage]], labels: Labels, config: dict[str, Any],
           source_info: dict[str, Any]) -> dict[str, Any]:
    """Write every shard and then ``manifest.json`` (last: its presence marks a complete output)."""
    total, skipped = sum(map(len, splits.values())), []
    with tqdm(total=total, unit="img", desc="prepare lfw") as bar:
        written = {split: _write_split(folder, split, splits[split], labels, config, bar, skipped)
                   for split in SPLITS}
    split_info = {split: info for split, (info, _) in written.items()}
    manifest = {
        "format": FORMAT,
        "dataset": "lfw",
        "image_size": config["image_size"],
        "crop": config["crop"],
        "channels": 3,
        "splits": split_info,
        "label_columns": _label_columns(labels, [image for _, images in written.values() for image in images]),
        "source": source_info,
        "config": config,
        "skipped": skipped,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "vaeforge_version": _version(),
    }
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def _write_split(folder: Path, split: str, images: list[LfwImage], labels: Labels, config: dict[str, Any],
                 bar: tqdm, skipped: list[dict[str, str]]) -> tuple[dict[str, Any], list[LfwImage]]:
    """Write one split's shards; return its manifest entry (count, identities, shards with sha256) and the images
    written. With ``on_error=skip`` a bad image is left out and appended to ``skipped``; a shard left empty is not
    written."""
    shards, kept, start = [], [], 0
    for index, size in enumerate(shard_sizes(len(images), config[f"{split}_shards"])):
        name = f"{split}-{index:06d}.tar"
        with open(folder / name, "wb") as stream, wds.TarWriter(stream, mtime=0) as writer:
            count = 0
            for image in images[start:start + size]:
                sample = _sample_or_skip(image, labels, config, skipped)
                if sample is not None:
                    writer.write(sample)
                    kept.append(image)
                    count += 1
                bar.update()
        start += size
        if count:
            shards.append({"name": name, "count": count, "sha256": file_digest(folder / name, "sha256")})
        else:
            (folder / name).unlink()
    if images and not kept:
        raise DataError(f"no image of the {split} split is usable ({len(images)} skipped; see above)")
    info = {"count": len(kept), "identities": sorted({image.identity for image in kept}), "shards": shards}
    return info, kept


def _sample_or_skip(image: LfwImage, labels: Labels, config: dict[str, Any],
                    skipped: list[dict[str, str]]) -> dict[str, Any] | None:
    """The image's sample; None (and a ``skipped`` entry) for a bad image when ``on_error=skip``."""
    try:
        return _sample(image, labels, config)
    except DataError as exc:
        if config["on_error"] != "skip":
            raise DataError(f"{exc}; on_error=skip leaves such images out") from None
        skipped.append({"file": image.where, "reason": str(exc).removeprefix(f"{image.where}: ")})
        return None


def _sample(image: LfwImage, labels: Labels, config: dict[str, Any]) -> dict[str, Any]:
    """One WebDataset sample: the cropped, resized image as an .npy uint8 array and its metadata."""
    decoded = decode_image(image.data, image.where)
    if decoded.size != (LFW_IMAGE_SIZE, LFW_IMAGE_SIZE):
        raise DataError(f"{image.where}: image is {decoded.width}x{decoded.height}, LFW images are "
                        f"{LFW_IMAGE_SIZE}x{LFW_IMAGE_SIZE} (the crop box is for that size)")
    pixels = crop_resize(decoded, tuple(config["crop"]), config["image_size"])
    meta = {"identity": image.identity, "file": image.file, "labels": labels.values.get(image.file, {})}
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(pixels, dtype=np.uint8), allow_pickle=False)
    return {"__key__": image.key, "npy": buffer.getvalue(), "json": meta}


def _label_columns(labels: Labels, images: list[LfwImage]) -> dict[str, dict[str, Any]]:
    """Per column: kind, how many output images have it and, for binary columns, how many are 1."""
    rows = [labels.values[image.file] for image in images if image.file in labels.values]
    columns = {}
    for column, kind in labels.kinds.items():
        values = [row[column] for row in rows if column in row]
        columns[column] = {"kind": kind, "count": len(values)}
        if kind == "binary":
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
