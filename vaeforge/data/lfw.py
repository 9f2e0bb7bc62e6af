"""LFW: images in the official layout (the .tgz, a .zip or an extracted folder) and its label files.

Images are ``lfw-deepfunneled/<Person_Name>/<Person_Name>_<NNNN>.jpg``, 250x250; every label reader maps an
image file name (``Person_Name_0001.jpg``) to ``{column: value}``.
"""
from __future__ import annotations

import csv
import logging
import math
import re
from dataclasses import dataclass, field
from operator import itemgetter
from pathlib import Path
from typing import Any, List, Optional

from PIL import Image

from ..errors import DataError
from .dataset import Dataset, PrepareConfig, SourceFile, SourceImage, sample_key, source_files
from .images import check_box
from .labels import BINARY, REAL, Labels, bad_line, read_lines

log = logging.getLogger(__name__)

OFFICIAL_URL = "http://vis-www.cs.umass.edu/lfw/lfw-deepfunneled.tgz"
OFFICIAL_CHECKSUM = "md5:68331da3eb755a505a502b5aacb3c201"
LFW_IMAGE_SIZE = 250
GENDER_COLUMN = "gender_male"
LABEL_FILES = {  # option -> the standard file name that labels=<folder> looks for
    "attributes": "lfw_attributes.txt",
    "emotions": "lfw_emotions.csv",
    "gender_male": "lfw_gender_male.txt",
    "gender_female": "lfw_gender_female.txt",
}
_FILE_NAME = re.compile(r"(?P<identity>.+)_(?P<number>\d{4})\.jpg")


@dataclass
class LfwConfig(PrepareConfig):
    """LFW in its official layout, <Name>/<Name>_NNNN.jpg (the .tgz, a .zip or an extracted folder): split by
    identity, its label files joined."""

    crop: List[int] = field(default_factory=lambda: [50, 50, 200, 200])  # [left, top, right, bottom] box cut from the 250x250 images before resizing
    labels: Optional[str] = None  # folder holding the standard LFW label files; an explicit attributes= etc. wins
    attributes: Optional[str] = None  # lfw_attributes.txt: 73 attribute scores per image
    emotions: Optional[str] = None  # lfw_emotions.csv
    gender_male: Optional[str] = None  # lfw_gender_male.txt
    gender_female: Optional[str] = None  # lfw_gender_female.txt


def _settings(args: dict[str, Any]) -> dict[str, Any]:
    """The crop box checked and the label files as absolute paths (``labels=<folder>`` expanded)."""
    found = _label_files(Path(args["labels"])) if args["labels"] is not None else {}
    paths = {option: args[option] or found.get(option) for option in LABEL_FILES}
    return {"crop": check_box(args["crop"], "crop", (LFW_IMAGE_SIZE, LFW_IMAGE_SIZE)),
            **{option: None if path is None else str(Path(path).absolute()) for option, path in paths.items()}}


def _label_files(folder: Path) -> dict[str, str]:
    """The standard label files present in ``folder``, as option -> path."""
    if not folder.is_dir():
        raise DataError(f"labels={folder}: no such folder")
    found = {option: str(folder / name) for option, name in LABEL_FILES.items() if (folder / name).is_file()}
    if not found:
        raise DataError(f"labels={folder}: none of {', '.join(LABEL_FILES.values())} is in it")
    return found


def is_lfw_image(name: str) -> bool:
    """True for ``.../<Name>/<Name>_NNNN.jpg``: the file is named after the folder it is in."""
    *_, folder, file = ["", *name.split("/")]
    match = _FILE_NAME.fullmatch(file)
    return match is not None and match["identity"] == folder


def _image(file: SourceFile) -> SourceImage:
    """An LFW image: its person is in its file name, which keys its labels."""
    name = file.name.rsplit("/", 1)[-1]
    return SourceImage(sample_key(name), name.rsplit("_", 1)[0], name, file.where, file.read)


def read_lfw(source: Path, settings: dict[str, Any]) -> tuple[list[SourceImage], Labels]:
    """The LFW images of a source and the label files the settings name; DataError if there are no images."""
    files = source_files(source, is_lfw_image)
    if not files:
        raise DataError(f"{source}: no LFW images (<Name>/<Name>_NNNN.jpg) found")
    return [_image(file) for file in files], _read_labels(settings)


def check_lfw_image(img: Image.Image, where: str) -> None:
    """LFW images are 250x250: the crop box is for that size."""
    if img.size != (LFW_IMAGE_SIZE, LFW_IMAGE_SIZE):
        raise DataError(f"{where}: image is {img.width}x{img.height}, LFW images are "
                        f"{LFW_IMAGE_SIZE}x{LFW_IMAGE_SIZE} (the crop box is for that size)")


def _read_labels(settings: dict[str, Any]) -> Labels:
    """Merge the configured label files into one label table."""
    labels = Labels()
    for name, reader in (("attributes", read_attributes), ("emotions", read_emotions)):
        if settings[name]:
            labels = labels.merge(reader(Path(settings[name])))
    if settings["gender_male"] or settings["gender_female"]:
        paths = [Path(settings[name]) if settings[name] else None for name in ("gender_male", "gender_female")]
        labels = labels.merge(read_gender(*paths))
    return labels


def _check_image_name(path: Path, lineno: int, name: str) -> str:
    """Return ``name`` if it is an LFW image file name (``Person_Name_0001.jpg``)."""
    if not _FILE_NAME.fullmatch(name):
        raise bad_line(path, lineno, f"'{name}' is not an LFW image name like Person_Name_0001.jpg")
    return name


def _add_row(labels: Labels, path: Path, lineno: int, file: str, row: dict[str, float]) -> None:
    """Add one image's labels; an image labelled twice by the same file is a DataError."""
    if file in labels.values:
        raise bad_line(path, lineno, f"second row for {file}")
    labels.values[file] = row


def read_attributes(path: Path) -> Labels:
    """Kumar et al. ``lfw_attributes.txt``: real-valued columns named by the ``#<TAB>person<TAB>imagenum`` header."""
    labels, columns = Labels(), None
    for lineno, line in enumerate(read_lines(path), start=1):
        fields = line.split("\t")
        if fields[:3] == ["#", "person", "imagenum"]:
            columns = [name.strip() for name in fields[3:]]
            labels.kinds = dict.fromkeys(columns, REAL)
        elif line.startswith("#") or not line.strip():
            continue
        elif columns is None:
            raise bad_line(path, lineno, "data before the '#<TAB>person<TAB>imagenum<TAB>...' header")
        else:
            file, values = _parse_attribute_row(path, lineno, fields, len(columns))
            _add_row(labels, path, lineno, file, dict(zip(columns, values, strict=True)))
    if columns is None:
        raise DataError(f"{path}: no '#<TAB>person<TAB>imagenum<TAB>...' header line (not an lfw_attributes.txt)")
    return labels


def _parse_attribute_row(path: Path, lineno: int, fields: list[str], ncolumns: int) -> tuple[str, list[float]]:
    """``Person Name<TAB>imagenum<TAB>score...`` -> (``Person_Name_0001.jpg``, finite scores)."""
    if len(fields) != ncolumns + 2:
        raise bad_line(path, lineno, f"expected {ncolumns + 2} tab-separated fields, found {len(fields)}")
    try:
        number, values = int(fields[1]), [float(value) for value in fields[2:]]
    except ValueError as exc:
        raise bad_line(path, lineno, f"not a number ({exc})") from None
    if not all(map(math.isfinite, values)):
        raise bad_line(path, lineno, "non-finite attribute score")
    name = fields[0].strip().replace(" ", "_")
    return _check_image_name(path, lineno, f"{name}_{number:04d}.jpg"), values


def read_emotions(path: Path) -> Labels:
    """``image,emotion`` CSV -> one binary column per emotion value (1 for the image's emotion, 0 otherwise)."""
    lines = read_lines(path)
    rows = list(enumerate(csv.reader(lines), start=1))
    if not rows or [cell.strip() for cell in rows[0][1]] != ["image", "emotion"]:
        raise DataError(f"{path}, line 1: expected the header 'image,emotion'")
    emotions: dict[str, str] = {}
    for lineno, cells in rows[1:]:
        if not cells:
            continue
        if len(cells) != 2 or not cells[1].strip():
            raise bad_line(path, lineno, f"expected 'image,emotion', found '{lines[lineno - 1]}'")
        file = _check_image_name(path, lineno, cells[0].strip())
        if file in emotions:
            raise bad_line(path, lineno, f"second row for {file}")
        emotions[file] = cells[1].strip()
    columns = sorted(set(emotions.values()))
    values = {file: {column: int(column == emotion) for column in columns} for file, emotion in emotions.items()}
    return Labels(dict.fromkeys(columns, BINARY), values)


def _read_name_list(path: Path) -> list[str]:
    """A list of image file names, one a line (blank lines skipped)."""
    lines = enumerate(read_lines(path), start=1)
    return [_check_image_name(path, lineno, line.strip()) for lineno, line in lines if line.strip()]


def read_gender(male: Path | None, female: Path | None) -> Labels:
    """Gender lists -> binary column ``gender_male`` (1: in the male list, 0: in the female list).

    An image in both lists (the real lists have two) gets no gender label rather than a guessed one.
    """
    lists = {value: set(_read_name_list(path) if path is not None else []) for value, path in ((1, male), (0, female))}
    both = lists[1] & lists[0]
    if both:
        log.warning(f"{len(both)} image(s) in both gender lists ({male}, {female}) left without a gender label: "
                    f"{', '.join(sorted(both))}")
    values = {file: {GENDER_COLUMN: value} for value, files in lists.items() for file in sorted(files - both)}
    return Labels({GENDER_COLUMN: BINARY}, values)


LFW = Dataset("lfw", LfwConfig, _settings, is_lfw_image, read_lfw, itemgetter("crop"), tuple(LABEL_FILES),
              check_lfw_image, {OFFICIAL_URL: OFFICIAL_CHECKSUM})
