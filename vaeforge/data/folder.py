"""Any image folder (CelebA, FFHQ, your own photos): the images anywhere under a folder or in a .zip or .tgz, of
any size, cut by one crop mode, with labels and identities from a CSV.

An image is named by its path in the source (``img_00001.png``, ``2019/beach.jpg``; in an archive, relative to
the innermost folder holding every image); that name is its ``file`` in the labels CSV and its sample's metadata.
Hidden files and folders (and macOS's ``__MACOSX``) are not images.
"""
from __future__ import annotations

import csv
import logging
import math
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, List, Optional

from ..config.fields import choice
from ..errors import ConfigError, DataError, did_you_mean
from .dataset import Dataset, PrepareConfig, SourceImage, sample_key, source_files
from .images import CROP_MODES, IMAGE_SUFFIXES, Crop, check_box
from .labels import BINARY, REAL, Labels, bad_line, read_lines

log = logging.getLogger(__name__)

SHOWN = 3  # names shown in an error about many images


@dataclass
class FolderConfig(PrepareConfig):
    """Any images (.jpg, .jpeg, .png, .bmp, .webp) anywhere under a folder or in a .zip or .tgz, of any size:
    split by identity when the labels CSV names them, else at random by image (seeded); labels from the CSV."""

    crop: str = choice("center", CROP_MODES)  # center: the largest centred square; none: the whole image, stretched to a square; box: the box= below
    box: Optional[List[int]] = None  # with crop=box: [left, top, right, bottom] in source pixels; an image that does not hold it is a bad image
    labels: Optional[str] = None  # CSV with a header: a file_column, number columns (0/1 or -1/1: binary, else real), maybe an identity_column
    file_column: str = "file"  # the labels CSV's column of image names: paths in the source folder (in an archive, below the folder all its images are in)
    identity_column: Optional[str] = None  # the labels CSV's column of identities: an identity-disjoint split (every image needs one)


def _settings(args: dict[str, Any]) -> dict[str, Any]:
    """The crop mode with its box checked (a box needs crop=box and crop=box a box), the labels CSV's path."""
    if (args["crop"] == "box") != (args["box"] is not None):
        raise ConfigError("crop=box needs box=[left,top,right,bottom]" if args["box"] is None
                          else f"box= is only used with crop=box (crop is {args['crop']})")
    if args["identity_column"] is not None and args["labels"] is None:
        raise ConfigError("identity_column= names a column of the labels CSV: give labels=<csv> too")
    return {"crop": args["crop"], "box": None if args["box"] is None else check_box(args["box"], "box"),
            "labels": None if args["labels"] is None else str(Path(args["labels"]).absolute()),
            "file_column": args["file_column"], "identity_column": args["identity_column"]}


def _crop(settings: dict[str, Any]) -> Crop:
    """The crop recorded in the manifest: the box for crop=box, else the mode."""
    return settings["box"] if settings["crop"] == "box" else settings["crop"]


def is_image(name: str) -> bool:
    """An image file by its name, outside hidden folders and ``__MACOSX``."""
    path = PurePosixPath(name)
    hidden = any(part.startswith(".") or part == "__MACOSX" for part in path.parts)
    return path.suffix.lower() in IMAGE_SUFFIXES and not hidden


def read_folder(source: Path, settings: dict[str, Any]) -> tuple[list[SourceImage], Labels]:
    """The images of a source, with their labels and identities from the labels CSV when there is one."""
    files = source_files(source, is_image)
    if not files:
        raise DataError(f"{source}: no images ({', '.join(IMAGE_SUFFIXES)}) found")
    labels, identities = Labels(), {}
    if settings["labels"] is not None:
        csv_path = Path(settings["labels"])
        labels, identities = read_labels_csv(csv_path, settings["file_column"], settings["identity_column"])
        _check_names(csv_path, labels, [file.name for file in files])
    images = [SourceImage(sample_key(file.name), identities.get(file.name), file.name, file.where, file.read)
              for file in files]
    if settings["identity_column"] is not None:
        _check_identities(images, settings["identity_column"])
    return images, labels


def _check_names(path: Path, labels: Labels, names: list[str]) -> None:
    """A CSV that names none of the images is a DataError showing how the images are named."""
    if labels.values and not labels.values.keys() & set(names):
        raise DataError(f"{path}: none of its {len(labels.values)} rows names an image of the source (its first: "
                        f"'{next(iter(labels.values))}'; the source's images are named like "
                        f"{', '.join(repr(name) for name in names[:SHOWN])})")


def _check_identities(images: list[SourceImage], column: str) -> None:
    """With an identity column, every image needs an identity: a split cannot guess one."""
    missing = [image.file for image in images if image.identity is None]
    if missing:
        raise DataError(f"{len(missing)} image(s) have no row in the labels CSV, so no {column}: "
                        f"{', '.join(missing[:SHOWN])}{', ...' if len(missing) > SHOWN else ''} (give every image a "
                        f"row, or leave identity_column out for a split by image)")


def read_labels_csv(path: Path, file_column: str, identity_column: str | None) -> tuple[Labels, dict[str, str]]:
    """A labels CSV -> (its number columns as labels keyed by file, file -> identity).

    A column of numbers (an empty cell: that image has no value in it) is a label column: binary when it holds
    only 0 and 1, or only -1 and 1 (CelebA's convention, stored as 0/1), else real. A column holding anything
    else (names, notes) is no label column; a warning names its first cell that is not a number.
    """
    header, rows = _read_rows(path, file_column, identity_column)
    labels = Labels(values={file: {} for file in rows})
    for column in header:
        if column not in (file_column, identity_column):
            _add_column(labels, path, column, rows)
    identities = {file: cells[identity_column] for file, (_, cells) in rows.items()} if identity_column else {}
    return labels, identities


def _read_rows(path: Path, file_column: str, identity_column: str | None
               ) -> tuple[list[str], dict[str, tuple[int, dict[str, str]]]]:
    """The header and file -> (line number, cells by column) of a CSV; each row names one image, once."""
    reader = csv.reader(read_lines(path))
    header = [name.strip() for name in next(reader, [])]
    _check_header(path, header, file_column, identity_column)
    rows: dict[str, tuple[int, dict[str, str]]] = {}
    for cells in reader:
        if not any(cell.strip() for cell in cells):
            continue
        if len(cells) != len(header):
            raise bad_line(path, reader.line_num, f"expected {len(header)} comma-separated fields, found {len(cells)}")
        row = dict(zip(header, (cell.strip() for cell in cells)))
        for column in (file_column, identity_column):
            if column is not None and not row[column]:
                raise bad_line(path, reader.line_num, f"column '{column}' is empty")
        file = row[file_column].removeprefix("./")
        if file in rows:
            raise bad_line(path, reader.line_num, f"second row for {file} (the first is line {rows[file][0]})")
        rows[file] = reader.line_num, row
    return header, rows


def _check_header(path: Path, header: list[str], file_column: str, identity_column: str | None) -> None:
    """The header holds the file (and identity) column and names each column once."""
    for option, column in (("file_column", file_column), ("identity_column", identity_column)):
        if column is not None and column not in header:
            raise DataError(f"{path}, line 1: no column '{column}' ({option}=) in the header "
                            f"({did_you_mean(column, header)})")
    repeated = sorted({name for name in header if header.count(name) > 1})
    if repeated:
        raise DataError(f"{path}, line 1: column(s) {', '.join(repeated)} named twice")


def _add_column(labels: Labels, path: Path, column: str, rows: dict[str, tuple[int, dict[str, str]]]) -> None:
    """Add a column of numbers to the labels with its kind; warn about and leave out a column that is not one."""
    values = {}
    for file, (lineno, cells) in rows.items():
        if cells[column]:
            value = _finite(cells[column])
            if value is None:
                log.warning(f"{path}, line {lineno}: column '{column}' holds '{cells[column]}', not a number: "
                            "it is no label column")
                return
            values[file] = value
    binary = set(values.values()) <= {0, 1} or set(values.values()) <= {-1, 1}
    labels.kinds[column] = BINARY if binary else REAL
    for file, value in values.items():
        labels.values[file][column] = int(value > 0) if binary else value


def _finite(cell: str) -> float | None:
    """The finite number a cell holds, or None."""
    try:
        value = float(cell)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


FOLDER = Dataset("folder", FolderConfig, _settings, is_image, read_folder, _crop, ("labels",))
