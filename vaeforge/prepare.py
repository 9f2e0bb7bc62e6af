"""``python -m vaeforge.prepare [dataset=lfw|folder] source=<url|archive|folder> out=<dir> [key=value ...]``.

Builds WebDataset shards and ``manifest.json`` (see :mod:`vaeforge.data.build`) from LFW or from any image folder;
each dataset has its own options (``vaeforge prepare dataset=folder --help``).
"""
from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass, make_dataclass
from pathlib import Path
from typing import Any

from .cli.logs import entry_point
from .cli.options import help_text, read_args
from .config.fields import choice
from .config.loader import validate_options
from .data.build import DATASETS, build

log = logging.getLogger("vaeforge.prepare")  # by name: under vaeforge's also when run as __main__ (python -m)

DEFAULT = "lfw"
SKIPPED_SHOWN = 20  # skipped images named in the summary; manifest.json lists them all


@dataclass
class DatasetChoice:
    """The option that picks a dataset, and with it the other options."""

    dataset: str = choice(DEFAULT, tuple(DATASETS))  # lfw: LFW's layout and label files; folder: any images, a labels CSV


# Per dataset: its options dataclass with `dataset=` added (what the command line checks, --help and docs show).
OPTIONS = {name: make_dataclass(f"{name.capitalize()}Options", [], bases=(dataset.options, DatasetChoice))
           for name, dataset in DATASETS.items()}


def _dataset(args: dict[str, Any]) -> str:
    """The dataset named by ``dataset=`` (lfw when none is), checked."""
    return validate_options(DatasetChoice, {"dataset": args.get("dataset", DEFAULT)}, "prepare").dataset


def _help(args: dict[str, Any]) -> str:
    """The options of the dataset named (``dataset=folder --help``), LFW's by default."""
    name = _dataset(args)
    usage = f"vaeforge prepare dataset={name} source=<url|archive|folder> out=<dir> [key=value ...]"
    about = f"Build WebDataset shards and manifest.json.\n\ndataset={name}: {inspect.getdoc(DATASETS[name].options)}"
    note = f"datasets: {', '.join(DATASETS)} (the options of each: vaeforge prepare dataset=NAME --help)"
    return help_text(usage, about, [(f"options of dataset={name} (key=value)", OPTIONS[name], "")], note)


def _summary(manifest: dict[str, Any], out: str) -> str:
    """Counts per split, identities, shards and label columns, then the output folder."""
    lines = [f"prepared {manifest['dataset']}: {manifest['image_size']}x{manifest['image_size']} RGB, "
             f"crop {manifest['crop']}"]
    for split, info in manifest["splits"].items():
        identities = f" {len(info['identities']):6,d} identities" if info["identities"] else ""
        lines.append(f"  {split:5s} {info['count']:7,d} images{identities} {len(info['shards']):3d} shards")
    for kind in ("real", "binary"):
        names = [name for name, column in manifest["label_columns"].items() if column["kind"] == kind]
        if names:
            lines.append(f"  {len(names)} {kind} label columns: {', '.join(names)}")
    skipped = manifest.get("skipped", [])
    if skipped:
        lines.append(f"  skipped {len(skipped)} image(s) (on_error=skip):")
        lines += [f"    {entry['file']}: {entry['reason']}" for entry in skipped[:SKIPPED_SHOWN]]
        if len(skipped) > SKIPPED_SHOWN:
            lines.append(f"    ... and {len(skipped) - SKIPPED_SHOWN} more (all are listed in manifest.json)")
    lines.append(f"output: {Path(out).absolute()}")
    return "\n".join(lines)


@entry_point
def main(argv: list[str]) -> None:
    """Parse ``key=value`` arguments, prepare the dataset and print a summary."""
    args = read_args(argv, _help)
    name = _dataset(args)
    options = validate_options(OPTIONS[name], args, "prepare")
    log.info(_summary(build(DATASETS[name], options), options.out))


if __name__ == "__main__":
    main()
