"""``python -m vaeforge.prepare dataset=lfw source=<url|.tgz|folder> out=<dir> [key=value ...]``.

Builds WebDataset shards and ``manifest.json`` (see :mod:`vaeforge.data.build`). ``labels=<dir>`` picks up
whichever of the standard LFW label files exist in that folder; an explicit ``attributes=`` etc. wins.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional

from .cli.args import user_errors_exit
from .cli.options import help_text, read_args
from .config.fields import choice
from .config.loader import validate_options
from .data.build import PrepareConfig
from .data.build import prepare as prepare_lfw
from .errors import DataError

DATASETS = {"lfw": prepare_lfw}
LABEL_DIR_FILES = {
    "attributes": "lfw_attributes.txt",
    "emotions": "lfw_emotions.csv",
    "gender_male": "lfw_gender_male.txt",
    "gender_female": "lfw_gender_female.txt",
}
ABOUT = "Build WebDataset shards and manifest.json from LFW: identity-disjoint train/val split, labels joined."
SKIPPED_SHOWN = 20  # skipped images named in the summary; manifest.json lists them all
USAGE = "vaeforge prepare source=<url|.tgz|folder> out=<dir> [labels=<dir>] [key=value ...]"


@dataclass
class PrepareOptions(PrepareConfig):
    """``vaeforge prepare``: the dataset's settings plus a folder of label files."""

    dataset: str = choice("lfw", tuple(DATASETS))  # the dataset being prepared
    labels: Optional[str] = None  # folder holding the standard LFW label files; an explicit attributes= etc. wins


def _label_files(folder: Path) -> dict[str, str]:
    """The standard label files present in ``folder``, as option -> path."""
    if not folder.is_dir():
        raise DataError(f"labels={folder}: no such folder")
    found = {option: str(folder / name) for option, name in LABEL_DIR_FILES.items() if (folder / name).is_file()}
    if not found:
        raise DataError(f"labels={folder}: none of {', '.join(LABEL_DIR_FILES.values())} is in it")
    return found


def _resolve(args: dict[str, Any]) -> dict[str, Any]:
    """Check the options and expand ``labels=<dir>``: the dataset and its preparer's arguments."""
    options = asdict(validate_options(PrepareOptions, args, "prepare"))
    labels = options.pop("labels")
    if labels is not None:
        for option, path in _label_files(Path(labels)).items():
            options[option] = options[option] or path
    return options


def _help(_: dict[str, Any]) -> str:
    return help_text(USAGE, ABOUT, [("options (key=value)", PrepareOptions, "")])


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
    skipped = manifest.get("skipped", [])
    if skipped:
        lines.append(f"  skipped {len(skipped)} image(s) (on_error=skip):")
        lines += [f"    {entry['file']}: {entry['reason']}" for entry in skipped[:SKIPPED_SHOWN]]
        if len(skipped) > SKIPPED_SHOWN:
            lines.append(f"    ... and {len(skipped) - SKIPPED_SHOWN} more (all are listed in manifest.json)")
    lines.append(f"output: {Path(out).absolute()}")
    return "\n".join(lines)


@user_errors_exit
def main(argv: list[str] | None = None) -> None:
    """Parse ``key=value`` arguments, prepare the dataset and print a summary."""
    options = _resolve(read_args(argv, _help))
    manifest = DATASETS[options.pop("dataset")](**options)
    print(_summary(manifest, options["out"]))


if __name__ == "__main__":
    main()
