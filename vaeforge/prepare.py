"""``python -m vaeforge.prepare dataset=lfw source=<url|.tgz|folder> out=<dir> [key=value ...]``.

Builds WebDataset shards and ``manifest.json`` (see :mod:`vaeforge.data.build`). ``labels=<dir>`` picks up
whichever of the standard LFW label files exist in that folder; an explicit ``attributes=`` etc. wins.
"""
from __future__ import annotations

import inspect
import sys
from pathlib import Path
from typing import Any

from .cli.args import parse_overrides, take, user_errors_exit
from .data.build import prepare as prepare_lfw
from .errors import ConfigError, DataError, did_you_mean

DATASETS = {"lfw": prepare_lfw}
LABEL_DIR_FILES = {
    "attributes": "lfw_attributes.txt",
    "emotions": "lfw_emotions.csv",
    "gender_male": "lfw_gender_male.txt",
    "gender_female": "lfw_gender_female.txt",
}
PATH_OPTIONS = ("source", "out", "labels", *LABEL_DIR_FILES)


def _options(dataset: str) -> dict[str, Any]:
    """Every option of ``dataset`` with its default: the preparer's own arguments, plus dataset and labels."""
    if dataset not in DATASETS:
        raise ConfigError(f"unknown dataset '{dataset}' ({did_you_mean(str(dataset), DATASETS)})")
    parameters = inspect.signature(DATASETS[dataset]).parameters
    return {"dataset": dataset, **{name: p.default for name, p in parameters.items()}, "labels": None}


def _label_files(folder: Path) -> dict[str, str]:
    """The standard label files present in ``folder``, as option -> path."""
    if not folder.is_dir():
        raise DataError(f"labels={folder}: no such folder")
    found = {option: str(folder / name) for option, name in LABEL_DIR_FILES.items() if (folder / name).is_file()}
    if not found:
        raise DataError(f"labels={folder}: none of {', '.join(LABEL_DIR_FILES.values())} is in it")
    return found


def _resolve(args: dict[str, Any]) -> dict[str, Any]:
    """Check the options, fill in defaults and expand ``labels=<dir>``: the dataset and its preparer's arguments."""
    options = take(args, _options(args.get("dataset", "lfw")), "prepare")
    for name in PATH_OPTIONS:  # YAML may read a path as a number or a date
        if options[name] is not None and options[name] is not inspect.Parameter.empty:
            options[name] = str(options[name])
    missing = [name for name, value in options.items() if value is inspect.Parameter.empty]
    if missing:
        raise ConfigError(f"missing required option(s): {', '.join(f'{name}=...' for name in missing)}")
    if options["labels"] is not None:
        for option, path in _label_files(Path(options["labels"])).items():
            options[option] = options[option] or path
    del options["labels"]
    return options


def _summary(manifest: dict[str, Any], out: str) -> str:
    """Counts per split, identities, shards and label columns, then the output folder."""
    lines = [f"prepared {manifest['dataset']}: {manifest['image_size']}x{manifest['image_size']} RGB, "
             f"crop {manifest['crop']}"]
    for split, info in manifest["splits"].items():
        lines.append(f"  {split:5s} {info['count']:7,d} images {len(info['identities']):6,d} identities "
                     f"{len(info['shards']):3d} shards")
    for kind in ("real", "binary"):
        names = [name for name, column in manifest["label_columns"].items() if column["kind"] == kind]
        if names:
            lines.append(f"  {len(names)} {kind} label columns: {', '.join(names)}")
    lines.append(f"output: {Path(out).absolute()}")
    return "\n".join(lines)


@user_errors_exit
def main(argv: list[str] | None = None) -> None:
    """Parse ``key=value`` arguments, prepare the dataset and print a summary."""
    args = parse_overrides(sys.argv[1:] if argv is None else argv)
    options = _resolve(args)
    manifest = DATASETS[options.pop("dataset")](**options)
    print(_summary(manifest, options["out"]))


if __name__ == "__main__":
    main()
