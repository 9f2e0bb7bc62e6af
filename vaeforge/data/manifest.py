"""Reading the ``manifest.json`` that ``vaeforge prepare`` writes next to the shards."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import DataError

MANIFEST = "manifest.json"


def read_manifest(shards_dir: str | Path) -> dict[str, Any]:
    """The manifest of a prepared dataset folder; a clear error when there is none."""
    path = Path(shards_dir) / MANIFEST
    if not path.is_file():
        raise DataError(
            f"no {MANIFEST} in '{shards_dir}': prepare the data first "
            f"(python -m vaeforge.prepare dataset=lfw source=... out={shards_dir})"
        )
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(f"{path} is not valid JSON ({exc})") from None


def shard_paths(shards_dir: str | Path, manifest: dict[str, Any], split: str) -> list[str]:
    """Paths of a split's shards, checked to exist."""
    if split not in manifest["splits"]:
        raise DataError(f"split '{split}' not in {Path(shards_dir) / MANIFEST} (has {sorted(manifest['splits'])})")
    paths = [Path(shards_dir) / s["name"] for s in manifest["splits"][split]["shards"]]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise DataError(f"missing shard file(s): {', '.join(missing)}")
    return [str(p) for p in paths]
