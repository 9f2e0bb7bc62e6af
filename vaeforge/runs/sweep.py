"""A hyper-parameter grid: ``key=[v1,v2],key2=[...]`` -> its points (the cartesian product), each with a run
folder name under the sweep's run folder, and ``sweep.json``, the index of what a sweep submitted.

A point's folder is named after its values (``lr=1e-3,beta=0.02``: each swept key by its shortest distinct
dotted suffix, each value with what is not a letter, digit, ``.``, ``+`` or ``-`` replaced by ``_``), readable in
``ls`` and safe in a shell (no globbing characters, no spaces); when two points would get the same name, or a
name grows too long, every folder is ``point_NNN`` instead. ``sweep.json`` maps folders to overrides either way.
"""
from __future__ import annotations

import itertools
import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..cli.args import parse_overrides
from ..errors import ConfigError

SWEEP_FILE = "sweep.json"
NOT_SWEPT = ("run_dir", "resume")  # set by the sweep itself
MAX_NAME = 100  # characters of a readable folder name (file systems allow 255)
UNSAFE = re.compile(r"[^A-Za-z0-9.+-]+")
OPENERS, CLOSERS, QUOTES = "[{", "]}", "'\""


@dataclass
class Point:
    """One run of a sweep: its folder (under the sweep's run folder) and the training overrides it adds."""

    folder: str
    overrides: dict[str, Any]

    def args(self) -> list[str]:
        """The overrides as ``key=value`` command-line arguments."""
        return [f"{key}={value_text(value)}" for key, value in self.overrides.items()]


def value_text(value: Any) -> str:
    """A value as a command line writes it: plain when it reads back the same, else as JSON (which YAML reads)."""
    text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
    return text if parse_overrides([f"k={text}"])["k"] == value else json.dumps(value)


def split_top_level(spec: str) -> list[str]:
    """``spec`` cut at the commas outside brackets, braces and quotes."""
    parts, depth, quote, start = [], 0, "", 0
    for i, char in enumerate(spec):
        if quote:
            quote = "" if char == quote else quote
        elif char in QUOTES:
            quote = char
        elif char in OPENERS:
            depth += 1
        elif char in CLOSERS:
            depth -= 1
        elif char == "," and depth == 0:
            parts.append(spec[start:i])
            start = i + 1
    return [*parts, spec[start:]]


def parse_grid(spec: str) -> dict[str, list[Any]]:
    """``key=[v1,v2],key2=v`` -> {key: [v1, v2], key2: [v]}: YAML values, a single value a one-point axis (a list
    value of one point is written ``[[8,16,32]]``)."""
    grid: dict[str, list[Any]] = {}
    for part in split_top_level(spec.strip()):
        key, sep, _ = part.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"sweep: '{part}' is not key=[value,...] (a grid: key=[v1,v2],key2=[v3,v4])")
        key = key.strip()
        if key in grid:
            raise ConfigError(f"sweep: key '{key}' is given twice")
        if key in NOT_SWEPT:
            raise ConfigError(f"sweep: '{key}' cannot be swept (the sweep sets it for each point)")
        value = parse_overrides([part.strip()])[key]
        values = value if isinstance(value, list) else [value]
        if not values:
            raise ConfigError(f"sweep: '{key}' has no values")
        grid[key] = values
    return grid


def short_names(keys: list[str]) -> dict[str, str]:
    """Each key's shortest dotted suffix that no other key ends with (``losses.kl.args.beta`` -> ``beta``)."""
    out = {}
    for key in keys:
        parts = key.split(".")
        for n in range(1, len(parts) + 1):
            suffix = ".".join(parts[-n:])
            if not any(other != key and (other == suffix or other.endswith("." + suffix)) for other in keys):
                break
        out[key] = suffix
    return out


def folder_name(overrides: dict[str, Any], names: dict[str, str]) -> str:
    return ",".join(f"{names[k]}={UNSAFE.sub('_', value_text(v)).strip('_') or '_'}" for k, v in overrides.items())


def expand(spec: str) -> list[Point]:
    """The points of a grid, in the order of its keys (the last key varies fastest), with their folders."""
    grid = parse_grid(spec)
    combos = [dict(zip(grid, values)) for values in itertools.product(*grid.values())]
    names = short_names(list(grid))
    folders = [folder_name(c, names) for c in combos]
    if len(set(folders)) < len(folders) or max(map(len, folders)) > MAX_NAME:
        folders = [f"point_{i:03d}" for i in range(len(combos))]
    return [Point(f, c) for f, c in zip(folders, combos)]


def write_index(root: Path, spec: str, points: list[Point], job_ids: list[str], then: str | None) -> Path:
    """``sweep.json`` in the sweep's run folder: the grid, what runs after training, and each point's
    folder, overrides and SLURM job id (``<array>_<i>``: its logs are ``slurm/<array>_<i>_<rank>_log.*``); the
    points of an earlier submit into the same folder are kept."""
    path = root / SWEEP_FILE
    new = {p.folder for p in points}
    kept = [p for p in read_index(root).get("points", []) if p["folder"] not in new]
    entries = [{**asdict(p), "job_id": job_id} for p, job_id in zip(points, job_ids)]
    root.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"grid": spec, "then": then, "points": [*kept, *entries]}, indent=1))
    return path


def read_index(root: Path) -> dict[str, Any]:
    """A folder's ``sweep.json`` ({} when it has none or it is not an index: a run folder is data)."""
    try:
        index = json.loads((root / SWEEP_FILE).read_text())
    except (OSError, ValueError):
        return {}
    points = index.get("points") if isinstance(index, dict) else None
    if not isinstance(points, list) or not all(
            isinstance(p, dict) and isinstance(p.get("folder"), str) and isinstance(p.get("overrides"), dict)
            for p in points):
        return {}
    return index
