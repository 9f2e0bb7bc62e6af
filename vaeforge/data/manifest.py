"""Reading the ``manifest.json`` that ``vaeforge prepare`` writes next to the shards, from wherever ``data.shards``
says the dataset is (a folder, a URL, a shard pattern, a ``pipe:`` command: see ``sources``)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import DataError
from .sources import Source, is_local, parse, read_bytes

MANIFEST = "manifest.json"


def manifest_location(shards: str | Path, manifest: str | None = None) -> str:
    """Where the manifest of ``data.shards`` is read from: ``manifest`` when given, else beside the shards."""
    return manifest or parse(str(shards)).where(MANIFEST)


def read_manifest(shards: str | Path, manifest: str | None = None) -> dict[str, Any]:
    """The manifest of the dataset ``shards`` names (read from ``manifest`` when given); for a shard pattern,
    narrowed to the shards it selects."""
    source, where = parse(str(shards)), manifest_location(shards, manifest)
    if is_local(where) and not Path(where).is_file():
        raise DataError(f"no {MANIFEST} at '{where}': prepare the data first (python -m vaeforge.prepare "
                        "dataset=lfw source=... out=<folder>), or point data.shards (or data.manifest) at it")
    try:
        data = json.loads(read_bytes(where))
    except OSError as exc:
        raise DataError(f"cannot read the manifest {where}: {exc}") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"{where} is not valid JSON ({exc})") from None
    return _select(data, source, where) if source.names else data


def _select(manifest: dict[str, Any], source: Source, where: str) -> dict[str, Any]:
    """The manifest with each split narrowed to the shards the pattern selects (its count with them); a split the
    pattern selects none of stays whole."""
    listed = [s["name"] for split in manifest["splits"].values() for s in split["shards"]]
    unknown = sorted(set(source.names) - set(listed))
    if unknown:
        raise DataError(f"shard(s) {', '.join(unknown)} of data.shards are not in {where} "
                        f"(it lists {', '.join(listed)})")
    splits = {}
    for name, split in manifest["splits"].items():
        chosen = [s for s in split["shards"] if s["name"] in source.names]
        splits[name] = {**split, "shards": chosen, "count": sum(s["count"] for s in chosen)} if chosen else split
    return {**manifest, "splits": splits}


def shard_paths(shards: str | Path, manifest: dict[str, Any], split: str) -> list[str]:
    """Where a split's shards are (paths, URLs or ``pipe:`` commands); local ones are checked to exist."""
    if split not in manifest["splits"]:
        raise DataError(f"split '{split}' not in the manifest of {shards} (has {sorted(manifest['splits'])})")
    source = parse(str(shards))
    paths = [source.where(s["name"]) for s in manifest["splits"][split]["shards"]]
    missing = [p for p in paths if is_local(p) and not Path(p).is_file()]
    if missing:
        raise DataError(f"missing shard file(s): {', '.join(missing)}")
    return paths
