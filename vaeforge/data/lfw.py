"""LFW sources: images in the official layout (a .tgz or an extracted folder) and the label files.

Images are ``lfw-deepfunneled/<Person_Name>/<Person_Name>_<NNNN>.jpg``; every label reader maps an image
file name (``Person_Name_0001.jpg``) to ``{column: value}``.
"""
from __future__ import annotations

import csv
import hashlib
import itertools
import math
import re
import sys
import tarfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import DataError

ARCHIVE_ROOT = "lfw-deepfunneled"
LFW_IMAGE_SIZE = 250
GENDER_COLUMN = "gender_male"
_FILE_NAME = re.compile(r"(?P<identity>.+)_(?P<number>\d{4})\.jpg")


@dataclass(frozen=True)
class LfwImage:
    """One source image: the person, the file name, where it came from (for errors) and its JPEG bytes."""

    identity: str
    file: str
    where: str
    data: bytes

    @property
    def key(self) -> str:
        """The sample key: the file name without ``.jpg``, with ``%`` and ``.`` percent-encoded (a tar reader
        takes the first dot of a member name as the start of its extension, so a key must have none)."""
        return self.file[: -len(".jpg")].replace("%", "%25").replace(".", "%2E")


def _is_lfw_image(folder: str, name: str) -> bool:
    """True for ``<Name>/<Name>_NNNN.jpg``: the file is named after the folder it is in."""
    match = _FILE_NAME.fullmatch(name)
    return match is not None and match["identity"] == folder


def read_images(source: Path) -> list[LfwImage]:
    """All LFW images of a .tgz or folder source, sorted by file name; DataError if none or duplicated."""
    if not source.exists():
        raise DataError(f"{source}: no such archive or folder")
    images = _read_folder(source) if source.is_dir() else _read_archive(source)
    if not images:
        raise DataError(f"{source}: no LFW images (<Name>/<Name>_NNNN.jpg) found")
    images.sort(key=lambda image: image.file)
    for first, second in itertools.pairwise(images):
        if first.file == second.file:
            raise DataError(f"{source}: image {first.file} appears twice ({first.where}, {second.where})")
    return images


def _read_archive(archive: Path) -> list[LfwImage]:
    """Stream a gzipped tar once; a truncated or non-gzip archive is a DataError naming it."""
    images = []
    try:
        with tarfile.open(archive, "r|gz") as tar:
            for member in tar:
                *_, folder, name = ["", *member.name.split("/")]
                if member.isfile() and _is_lfw_image(folder, name):
                    data = tar.extractfile(member).read()  # type: ignore[union-attr]
                    images.append(LfwImage(folder, name, f"{archive}:{member.name}", data))
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{archive}: not a complete .tgz archive ({exc})") from None
    return images


def _folder_files(folder: Path) -> Iterator[Path]:
    """The LFW image files under a folder holding ``lfw-deepfunneled/`` or ``<Name>/`` folders, sorted."""
    root = folder / ARCHIVE_ROOT if (folder / ARCHIVE_ROOT).is_dir() else folder
    return (path for path in sorted(root.glob("*/*.jpg")) if _is_lfw_image(path.parent.name, path.name))


def _read_bytes(path: Path) -> bytes:
    """A file's bytes; an unreadable file is a DataError naming it."""
    try:
        return path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None


def _read_folder(folder: Path) -> list[LfwImage]:
    """Read every LFW image file of an extracted folder."""
    return [LfwImage(path.parent.name, path.name, str(path), _read_bytes(path)) for path in _folder_files(folder)]


def folder_digest(folder: Path) -> str:
    """sha256 over the relative names and bytes of a folder's LFW images: changes when any image does."""
    digest = hashlib.sha256()
    for path in _folder_files(folder):
        digest.update(f"{path.parent.name}/{path.name}\0{path.stat().st_size}\0".encode())
        digest.update(_read_bytes(path))
    return digest.hexdigest()


@dataclass
class Labels:
    """Per-image labels (image file name -> column -> value) and each column's kind (``real``/``binary``)."""

    kinds: dict[str, str] = field(default_factory=dict)
    values: dict[str, dict[str, float]] = field(default_factory=dict)

    def merge(self, other: Labels) -> Labels:
        """The union of two label sets; a column defined by both is a DataError."""
        clash = sorted(self.kinds.keys() & other.kinds.keys())
        if clash:
            raise DataError(f"label column(s) {', '.join(clash)} defined by two label files")
        values = {file: dict(row) for file, row in self.values.items()}
        for file, row in other.values.items():
            values.setdefault(file, {}).update(row)
        return Labels({**self.kinds, **other.kinds}, values)


def _read_lines(path: Path) -> list[str]:
    """A text file's lines without line ends; missing or non-UTF-8 files are DataErrors naming them."""
    try:
        return _read_bytes(path).decode("utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not a UTF-8 text file ({exc.reason} at byte {exc.start})") from None


def _bad_line(path: Path, lineno: int, problem: str) -> DataError:
    """The error for a malformed label file line."""
    return DataError(f"{path}, line {lineno}: {problem}")


def _check_image_name(path: Path, lineno: int, name: str) -> str:
    """Return ``name`` if it is an LFW image file name (``Person_Name_0001.jpg``)."""
    if not _FILE_NAME.fullmatch(name):
        raise _bad_line(path, lineno, f"'{name}' is not an LFW image name like Person_Name_0001.jpg")
    return name


def _add_row(labels: Labels, path: Path, lineno: int, file: str, row: dict[str, float]) -> None:
    """Add one image's labels; an image labelled twice by the same file is a DataError."""
    if file in labels.values:
        raise _bad_line(path, lineno, f"second row for {file}")
    labels.values[file] = row


def read_attributes(path: Path) -> Labels:
    """Kumar et al. ``lfw_attributes.txt``: real-valued columns named by the ``#<TAB>person<TAB>imagenum`` header."""
    labels, columns = Labels(), None
    for lineno, line in enumerate(_read_lines(path), start=1):
        fields = line.split("\t")
        if fields[:3] == ["#", "person", "imagenum"]:
            columns = [name.strip() for name in fields[3:]]
            labels.kinds = dict.fromkeys(columns, "real")
        elif line.startswith("#") or not line.strip():
            continue
        elif columns is None:
            raise _bad_line(path, lineno, "data before the '#<TAB>person<TAB>imagenum<TAB>...' header")
        else:
            file, values = _parse_attribute_row(path, lineno, fields, len(columns))
            _add_row(labels, path, lineno, file, dict(zip(columns, values, strict=True)))
    if columns is None:
        raise DataError(f"{path}: no '#<TAB>person<TAB>imagenum<TAB>...' header line (not an lfw_attributes.txt)")
    return labels


def _parse_attribute_row(path: Path, lineno: int, fields: list[str], ncolumns: int) -> tuple[str, list[float]]:
    """``Person Name<TAB>imagenum<TAB>score...`` -> (``Person_Name_0001.jpg``, finite scores)."""
    if len(fields) != ncolumns + 2:
        raise _bad_line(path, lineno, f"expected {ncolumns + 2} tab-separated fields, found {len(fields)}")
    try:
        number, values = int(fields[1]), [float(value) for value in fields[2:]]
    except ValueError as exc:
        raise _bad_line(path, lineno, f"not a number ({exc})") from None
    if not all(map(math.isfinite, values)):
        raise _bad_line(path, lineno, "non-finite attribute score")
    name = fields[0].strip().replace(" ", "_")
    return _check_image_name(path, lineno, f"{name}_{number:04d}.jpg"), values


def read_emotions(path: Path) -> Labels:
    """``image,emotion`` CSV -> one binary column per emotion value (1 for the image's emotion, 0 otherwise)."""
    lines = _read_lines(path)
    rows = list(enumerate(csv.reader(lines), start=1))
    if not rows or [cell.strip() for cell in rows[0][1]] != ["image", "emotion"]:
        raise DataError(f"{path}, line 1: expected the header 'image,emotion'")
    emotions: dict[str, str] = {}
    for lineno, cells in rows[1:]:
        if not cells:
            continue
        if len(cells) != 2 or not cells[1].strip():
            raise _bad_line(path, lineno, f"expected 'image,emotion', found '{lines[lineno - 1]}'")
        file = _check_image_name(path, lineno, cells[0].strip())
        if file in emotions:
            raise _bad_line(path, lineno, f"second row for {file}")
        emotions[file] = cells[1].strip()
    columns = sorted(set(emotions.values()))
    values = {file: {column: int(column == emotion) for column in columns} for file, emotion in emotions.items()}
    return Labels(dict.fromkeys(columns, "binary"), values)


def _read_name_list(path: Path) -> list[str]:
    """A list of image file names, one a line (blank lines skipped)."""
    lines = enumerate(_read_lines(path), start=1)
    return [_check_image_name(path, lineno, line.strip()) for lineno, line in lines if line.strip()]


def read_gender(male: Path | None, female: Path | None) -> Labels:
    """Gender lists -> binary column ``gender_male`` (1: in the male list, 0: in the female list).

    An image in both lists (the real lists have two) gets no gender label rather than a guessed one.
    """
    lists = {value: set(_read_name_list(path) if path is not None else []) for value, path in ((1, male), (0, female))}
    both = lists[1] & lists[0]
    if both:
        print(f"vaeforge: warning: {len(both)} image(s) in both gender lists ({male}, {female}) left without a "
              f"gender label: {', '.join(sorted(both))}", file=sys.stderr)
    values = {file: {GENDER_COLUMN: value} for value, files in lists.items() for file in sorted(files - both)}
    return Labels({GENDER_COLUMN: "binary"}, values)
